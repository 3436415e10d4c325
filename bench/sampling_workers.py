"""Benchmark: the collection's sampling in one process with every CPU thread, against one-thread worker processes.

    python bench/sampling_workers.py                              # 64 comparison prompts x 4, 64 tokens, batches of 16
    python bench/sampling_workers.py --sft ~/.cache/instructrl/outputs/smollm2-135m/sft --rounds 2

The embedded default model (with `--sft`, the SFT adapter merged as `make collect` samples it) samples the first
`--prompts` comparison prompts, `--samples` responses each, through `instructrl.generation.sample_responses_with_ends`
as the collection calls it (batches of `--batch_size` prompts, each batch seeded on its own), alternately in this
process with all its threads (`workers=1`) and in `--workers` forked one-thread processes, after a warm-up. It prints
each round's seconds, the mean ratio, and how many responses differ between the two (the same seeds: only float
rounding, which depends on the thread count, can make a draw differ).
"""

import argparse
import time

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import torch
from trl import ModelConfig

from instructrl.data.loading import load_data
from instructrl.generation import load_policy, sample_responses_with_ends, sampling_workers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sft", default=None, help="an SFT adapter folder (`make sft`'s output); none: the base")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--workers", default="auto")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    model, tokenizer = load_policy(ModelConfig(model_name_or_path=args.model, dtype=args.dtype), args.sft)
    workers = sampling_workers(args.workers, model)
    prompts = load_data("builtin:prompts", "comparison")["prompt"][: args.prompts]
    settings = dict(num_samples=args.samples, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=0)
    sample_responses_with_ends(model, tokenizer, prompts[:2], **{**settings, "max_new_tokens": 4})  # warm-up
    threads = torch.get_num_threads()
    names = {"one": f"1 process x {threads} threads", "workers": f"{workers} processes x 1 thread"}
    print(
        f"{len(prompts)} prompts x {args.samples} samples, up to {args.max_new_tokens} tokens, {args.batch_size}/batch"
    )
    times: dict[str, list[float]] = {"one": [], "workers": []}
    for rnd in range(args.rounds):
        outputs = {}
        for name, count in (("one", 1), ("workers", workers)):
            start = time.perf_counter()
            outputs[name] = sample_responses_with_ends(
                model, tokenizer, prompts, **{**settings, "seed": rnd}, workers=count
            )
            times[name].append(time.perf_counter() - start)
        pairs = [
            (a, b)
            for (one, _), (other, _) in zip(outputs["one"], outputs["workers"], strict=True)
            for a, b in zip(one, other, strict=True)
        ]
        differ = sum(a != b for a, b in pairs)
        print(
            f"round {rnd}: {names['one']} {times['one'][-1]:.1f} s, {names['workers']} {times['workers'][-1]:.1f} s; "
            f"{differ} of {len(pairs)} responses differ"
        )
    one_s, workers_s = (sum(times[k]) / len(times[k]) for k in ("one", "workers"))
    print(
        f"mean: {names['one']} {one_s:.1f} s, {names['workers']} {workers_s:.1f} s; speed-up {one_s / workers_s:.2f}x"
    )


if __name__ == "__main__":
    main()
