"""Benchmark: PPO's policy-side passes with the output layer over the responses only, against over whole sequences.

    python bench/response_logits.py        # after `make sft` and `make rm`: their adapters, the default PPO shape
    python bench/response_logits.py --sft DIR --rm DIR --rounds 3

The two passes that `instructrl.ppo.response_logits_only` changes, timed alternately in one process on the shared
base (policy, reference, reward and value adapters, as `make ppo` builds it): the reference's forward over an
update's 32 rollouts (no gradient), and one PPO micro-batch's policy + value forward and backward (8 rollouts, TRL's
`forward` and log-probabilities). The rollouts are the first PPO prompts with responses sampled once by the policy
(`response_length` tokens at most). Printed: seconds per pass with and without `logits_from`, the ratio, and the
share of output-layer rows skipped. The value and reward forwards, sampling and the ptx term are not affected.
"""

import argparse
import time
from pathlib import Path

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import torch
from transformers import AutoTokenizer
from trl import ModelConfig
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper, forward
from trl.trainer.utils import selective_log_softmax

from instructrl.batching import pad_left
from instructrl.data.loading import load_data
from instructrl.data.rows import encode_prompt
from instructrl.generation import fast_cpu_sampling
from instructrl.modeling import load_base_model
from instructrl.shared_base import SharedBase, logits_from


def main() -> None:
    outputs = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sft", default=str(outputs / "sft"))
    parser.add_argument("--rm", default=str(outputs / "rm"))
    parser.add_argument("--rollouts", type=int, default=32, help="episodes per update (the reference's forward)")
    parser.add_argument("--micro_batch", type=int, default=8, help="episodes per PPO micro-batch")
    parser.add_argument("--response_length", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.sft)
    base = load_base_model(ModelConfig(model_name_or_path=args.model, dtype=args.dtype), tokenizer)
    shared = SharedBase(base, Path(args.rm), Path(args.sft))
    pad = tokenizer.pad_token_id
    prompts = load_data("builtin:prompts", "ppo")["prompt"][: args.rollouts]
    queries, mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], pad)
    context = queries.shape[1]
    torch.manual_seed(0)
    with torch.no_grad(), fast_cpu_sampling():
        query_responses = shared.policy().generate(
            input_ids=queries,
            attention_mask=mask,
            max_new_tokens=args.response_length,
            do_sample=True,
            temperature=0.7,
            top_k=0,
            top_p=1.0,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=pad,
        )
    width = query_responses.shape[1]
    batch = query_responses[: args.micro_batch]
    wrapper = PolicyAndValueWrapper(shared.policy(), shared.value_model())
    params = [p for p in shared.shared.parameters() if p.requires_grad] + list(shared.value_head.parameters())

    def reference_forward():
        with torch.no_grad():
            forward(shared.reference(), query_responses, pad)

    def train_step():
        output, values = forward(wrapper, batch, pad)
        logits = output.logits[:, context - 1 : -1] / 0.7
        logprobs = selective_log_softmax(logits, batch[:, context:])
        (-logprobs.mean() + values[:, context - 1 : -1].square().mean()).backward()
        for p in params:
            p.grad = None

    passes = {"reference forward": reference_forward, "policy+value forward/backward": train_step}
    times = {(name, skip): [] for name in passes for skip in (False, True)}
    for run in passes.values():
        run()  # warm-up
    for _ in range(args.rounds):
        for name, run in passes.items():
            for skip in (False, True):
                start = time.perf_counter()
                if skip:
                    with logits_from(context - 1):
                        run()
                else:
                    run()
                times[name, skip].append(time.perf_counter() - start)
    print(
        f"{args.rollouts} rollouts: prompts padded to {context} tokens, {width - context} response tokens; output "
        f"layer rows skipped: {(context - 1) / width:.0%}; dtype {base.dtype}, {torch.get_num_threads()} threads"
    )
    for name in passes:
        full, skipped = (sum(times[name, s]) / args.rounds for s in (False, True))
        rounds = ", ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(times[name, False], times[name, True], strict=True))
        print(f"{name}: whole {full:.2f} s, responses only {skipped:.2f} s, {full / skipped:.2f}x (rounds: {rounds})")


if __name__ == "__main__":
    main()
