"""Benchmark: K samples per prompt with the prompt's prefill computed once, against `generate`'s K-fold prefill.

    python bench/prompt_prefill.py                     # the comparison stage's shape: 16 prompts x 4, 64 tokens
    python bench/prompt_prefill.py --prompts 16 --samples 4 --rounds 3

The embedded default model (an SFT adapter is merged into fp32 weights by `load_policy`, so the base alone costs the
same) samples the first `--prompts` comparison prompts, `--samples` responses each, alternately with plain
`generate(num_return_sequences=K)` and with `instructrl.generation.generate_sharing_prompts`, from the same seed, after
a warm-up; it prints each round's seconds, the mean ratio and whether the two gave the same tokens.
"""

import argparse
import time

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import torch
from trl import ModelConfig

from instructrl.batching import pad_left
from instructrl.data.loading import load_data
from instructrl.data.rows import encode_prompt
from instructrl.generation import fast_cpu_sampling, generate_sharing_prompts, load_policy, warm_up_generation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    model, tokenizer = load_policy(ModelConfig(model_name_or_path=args.model, dtype=args.dtype), None)
    prompts = load_data("builtin:prompts", "comparison")["prompt"][: args.prompts]
    input_ids, attention_mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    warm_up_generation(model, tokenizer)
    settings = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )

    def plain():
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=args.samples, **settings
        )

    def shared():
        return generate_sharing_prompts(model, input_ids, attention_mask, args.samples, **settings)

    print(f"{args.prompts} prompts of {input_ids.shape[1]} tokens (padded) x {args.samples} samples")
    times = {"plain": [], "shared": []}
    outputs = {}
    with torch.no_grad(), fast_cpu_sampling():
        for rnd in range(args.rounds):
            for name, run in (("plain", plain), ("shared", shared)):
                torch.manual_seed(rnd)
                start = time.perf_counter()
                outputs[name] = run()
                times[name].append(time.perf_counter() - start)
            same = torch.equal(outputs["plain"], outputs["shared"])
            print(
                f"round {rnd}: plain {times['plain'][-1]:.1f} s, shared prefill {times['shared'][-1]:.1f} s, "
                f"same tokens: {same}"
            )
    plain_s, shared_s = (sum(times[k]) / len(times[k]) for k in ("plain", "shared"))
    print(f"mean: plain {plain_s:.1f} s, shared {shared_s:.1f} s; speed-up {plain_s / shared_s:.2f}x")


if __name__ == "__main__":
    main()
