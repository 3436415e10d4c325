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
from collections.abc import Callable
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


def add_rm_args(parser: argparse.ArgumentParser) -> None:
    """The options of the RM-step benchmarks: where the rankings and the SFT adapter are, and the batches' shape."""
    outputs = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--rankings", default=str(outputs / "comparisons" / "rankings"))
    parser.add_argument("--sft", default=str(outputs / "sft"))
    parser.add_argument("--batch_size", type=int, default=4, help="rankings per step (the RM config's)")
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6, help="timed steps of each, after one warm-up step of each")
    parser.add_argument("--seed", type=int, default=0)


def rm_model_and_batches(args: argparse.Namespace) -> tuple[torch.nn.Module, list[dict]]:
    """The RM stage's model in training mode and `args.steps + 1` of its batches (the first one for warming up)."""
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
    return model, batches


def alternate(
    model: torch.nn.Module, batches: list[dict], variants: dict[str, Callable[[dict], torch.Tensor]]
) -> tuple[dict[str, list[tuple[float, float]]], float]:
    """One ranking-loss forward and backward per variant on every batch, the variants' order alternating batch by
    batch; the first batch warms them up. Returns each variant's (forward, backward) seconds per timed batch and the
    largest difference between any variant's rewards and the first's."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    difference = 0.0
    for index, batch in enumerate(batches):
        rewards = {}
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        for name in names:
            model.zero_grad(set_to_none=True)
            start = time.perf_counter()
            rewards[name] = variants[name](batch)
            loss, _, _ = ranking_loss(rewards[name].float(), batch["scores"], batch["group_sizes"])
            middle = time.perf_counter()
            loss.backward()
            if index > 0:
                times[name].append((middle - start, time.perf_counter() - middle))
        first = rewards[next(iter(variants))].detach().float()
        difference = max(difference, *((r.detach().float() - first).abs().max().item() for r in rewards.values()))
        if index > 0:
            row = ", ".join(f"{name} {sum(times[name][-1]):.2f} s" for name in variants)
            print(f"step {index}: {row}", flush=True)
    return times, difference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rm_args(parser)
    args = parser.parse_args()
    model, batches = rm_model_and_batches(args)

    variants = {
        "whole": lambda batch: sequence_rewards(model, batch, False),
        "shared": lambda batch: sequence_rewards(model, batch, True),
    }
    times, difference = alternate(model, batches, variants)
    step_times = {name: [forward + backward for forward, backward in runs] for name, runs in times.items()}

    timed = batches[1:]
    whole_tokens = sum(b["input_ids"].numel() for b in timed)
    shared_tokens = sum(b["prefix_ids"].numel() + b["suffix_ids"].numel() for b in timed)
    whole, shared = statistics.mean(step_times["whole"]), statistics.mean(step_times["shared"])
    print(f"model {args.model} ({next(model.parameters()).dtype}), {len(timed)} steps of {args.batch_size} rankings")
    print(f"whole sequences:  {whole:.2f} s/step (min {min(step_times['whole']):.2f}), {whole_tokens} tokens")
    print(f"shared prompts:   {shared:.2f} s/step (min {min(step_times['shared']):.2f}), {shared_tokens} tokens")
    print(f"ratio whole/shared: time {whole / shared:.2f}x, tokens {whole_tokens / shared_tokens:.2f}x")
    print(f"largest reward difference between the two: {difference:.2e}")


if __name__ == "__main__":
    main()
