"""Benchmark: reward-model training steps with each prompt run once for its K responses, against once per response.

    python bench/rm_shared_prompt.py        # after `make collect` and `make sft`: their rankings and adapter
    python bench/rm_shared_prompt.py --rankings DIR/rankings --sft DIR --steps 6

The RM stage's model as `make rm` builds it (the base as a sequence classifier, a LoRA adapter started from the SFT
adapter, the score head) and its batches (`per_device_train_batch_size` rankings drawn at random from the training
rankings, `RankingCollator`), one forward and backward of the ranking loss per step, with and without
`share_prompt`, alternated step by step in one process on the same batches. Printed: seconds per step of each, the
ratio, the tokens each runs, and the largest reward difference between the two on those batches.
"""

import argparse
import random
import statistics
import time
from pathlib import Path

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import torch
from peft import get_peft_model
from transformers import AutoTokenizer
from trl import ModelConfig

from instructrl.data.loading import load_data
from instructrl.data.rows import tokenize_comparisons
from instructrl.modeling import load_base_model
from instructrl.reward import (
    RankingCollator,
    load_init_adapter,
    ranking_loss,
    reward_peft_config,
    sequence_rewards,
)


def main() -> None:
    outputs = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rankings", default=str(outputs / "comparisons" / "rankings"))
    parser.add_argument("--sft", default=str(outputs / "sft"))
    parser.add_argument("--batch_size", type=int, default=4, help="rankings per step (the RM config's)")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each, after one warm-up step of each")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.sft)
    model_args = ModelConfig(model_name_or_path=args.model, dtype=args.dtype, use_peft=True, lora_dropout=0.0)
    base = load_base_model(model_args, tokenizer, task="reward")
    model = get_peft_model(base, reward_peft_config(model_args, args.sft))
    load_init_adapter(model, args.sft)
    model.train()
    rankings = tokenize_comparisons(load_data(args.rankings, "train"), tokenizer, args.max_length)
    order = list(range(len(rankings)))
    random.Random(args.seed).shuffle(order)
    collate = RankingCollator(tokenizer.pad_token_id)
    batches = [
        collate([rankings[j] for j in order[i * args.batch_size : (i + 1) * args.batch_size]])
        for i in range(args.steps + 1)
    ]

    def step(batch: dict, share: bool) -> tuple[float, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        rewards = sequence_rewards(model, batch, share)
        loss, _, _ = ranking_loss(rewards, batch["scores"], batch["group_sizes"])
        loss.backward()
        return time.perf_counter() - start, rewards.detach().float()

    times: dict[bool, list[float]] = {False: [], True: []}
    difference = 0.0
    for index, batch in enumerate(batches):
        rewards = {}
        for share in (False, True) if index % 2 == 0 else (True, False):
            seconds, rewards[share] = step(batch, share)
            if index > 0:  # the first batch warms both paths up
                times[share].append(seconds)
        difference = max(difference, (rewards[True] - rewards[False]).abs().max().item())
        if index > 0:
            print(f"step {index}: whole {times[False][-1]:.2f} s, shared {times[True][-1]:.2f} s", flush=True)

    timed = batches[1:]
    whole_tokens = sum(b["input_ids"].numel() for b in timed)
    shared_tokens = sum(b["prefix_ids"].numel() + b["suffix_ids"].numel() for b in timed)
    whole, shared = statistics.mean(times[False]), statistics.mean(times[True])
    print(f"model {args.model} ({next(model.parameters()).dtype}), {len(timed)} steps of {args.batch_size} rankings")
    print(f"whole sequences:  {whole:.2f} s/step (min {min(times[False]):.2f}), {whole_tokens} tokens")
    print(f"shared prompts:   {shared:.2f} s/step (min {min(times[True]):.2f}), {shared_tokens} tokens")
    print(f"ratio whole/shared: time {whole / shared:.2f}x, tokens {whole_tokens / shared_tokens:.2f}x")
    print(f"largest reward difference between the two: {difference:.2e}")


if __name__ == "__main__":
    main()
