"""Benchmark: sampling throughput of the default model against what this machine's memory and arithmetic allow.

    python bench/generation_ceiling.py                       # the embedded default, after `make sft`
    python bench/generation_ceiling.py --batches 8 32 --new-tokens 48

A decode step reads every weight once whatever the batch, so tokens/s can at most reach
`batch x memory bandwidth / weight bytes`; it also needs 2 x parameters FLOPs per token, so at most
`FLOP/s / (2 x parameters)`. The script measures both limits on this machine (a plain memory copy; a large matrix
product) with the threads sampling uses, then times sampling of the default model (SFT adapter merged, as
`make collect` samples) at each batch size, generating exactly `--new-tokens` per sequence, and prints each against
the lower of the two ceilings.
"""

import argparse
import time
from pathlib import Path

import torch

DEFAULT_SFT = Path("~/.cache/instructrl/outputs/smollm2-135m/sft").expanduser()


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def memory_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Bytes per second of a plain copy (each byte read once and written once)."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch the pages first
    return 2 * src.numel() * 4 / best_of(lambda: dst.copy_(src), repeats)


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n x n fp32 matrix product (the shape class of a batched decode's linears, at its best)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    return 2 * n**3 / best_of(lambda: a @ b, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sft", default=str(DEFAULT_SFT), help="adapter to merge (empty: the base model)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from transformers import GenerationConfig
    from trl import ModelConfig

    from instructrl.data.loading import load_data
    from instructrl.data.rows import encode_prompt
    from instructrl.generation import load_policy

    model, tokenizer = load_policy(ModelConfig(model_name_or_path=args.model, dtype="float32"), args.sft or None)
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth, flops = memory_bandwidth(), matmul_flops()
    print(
        f"threads {torch.get_num_threads()}; memory copy {bandwidth / 1e9:.1f} GB/s; fp32 matmul {flops / 1e9:.0f} "
        f"GFLOP/s; model {params / 1e6:.0f}M parameters, {weight_bytes / 2**20:.0f} MB of weights"
    )
    prompts = load_data("builtin:prompts", "comparison")["prompt"]
    config = GenerationConfig(
        do_sample=True,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    print(f"{'batch':>5} {'tokens/s':>9} {'memory ceiling':>15} {'compute ceiling':>16} {'share of the lower':>19}")
    for batch in args.batches:
        encoded = tokenizer.pad(
            {"input_ids": [encode_prompt(tokenizer, p) for p in prompts[:batch]]}, return_tensors="pt"
        )
        with torch.no_grad():
            model.generate(**encoded, generation_config=config)  # warm-up
            seconds = best_of(lambda e=encoded: model.generate(**e, generation_config=config), args.repeats)
        rate = batch * args.new_tokens / seconds
        memory_ceiling = batch * bandwidth / weight_bytes
        compute_ceiling = flops / (2 * params)
        share = rate / min(memory_ceiling, compute_ceiling)
        print(f"{batch:>5} {rate:>9.0f} {memory_ceiling:>15.0f} {compute_ceiling:>16.0f} {share:>19.2f}")


if __name__ == "__main__":
    main()
