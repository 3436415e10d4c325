"""Benchmark: where a reward-model training step spends its time, and what bf16 LoRA arithmetic would save.

    python bench/rm_step.py                      # after `make collect` and `make sft`: their rankings and adapter
    python bench/rm_step.py --rankings DIR/rankings --sft DIR --steps 8 --profile 3

The RM stage's model and batches as `bench/rm_shared_prompt.py` builds them (shared prompts on), two ways, alternated
step by step in one process on the same batches:

- `lora-fp32`: as `make rm` trains today: the frozen base in the stage's dtype, the LoRA weights fp32, so PEFT casts
  each adapted layer's input to fp32 and its low-rank product comes back as a full-width fp32 tensor that is scaled,
  added to the base's output and cast back;
- `lora-autocast`: the same weights (still fp32, still what the optimizer updates) under `torch.autocast` to bf16
  with PEFT's input casting off, so the adapters' products and their backward run in bf16, as mixed precision on a
  GPU does (`instructrl.modeling.lora_bf16_compute`, the RM stage's `lora_bf16_compute: true`);
- `autocast-only`: `torch.autocast` alone, PEFT still casting each adapter's input to fp32 first (what the trainers'
  own `bf16: true` would run);
- `top-N-layers`: as `lora-fp32` with only the top N layers' LoRA weights trainable (`--top_layers`, the RM stage's
  `train_top_layers: N`), so back-propagation stops below them.

Printed: forward and backward seconds per step of each, their ratios to `lora-fp32` and the largest reward
difference from it. With `--profile N`, N more steps of `lora-fp32` under `torch.profiler`: the operators with the
most self time (by input shape) and the share of the step in matrix products, attention, dtype casts, other
element-wise work and the rest.
"""

import argparse
import statistics
from collections import defaultdict

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import torch

from instructrl.modeling import compute_dtype, lora_bf16_compute
from instructrl.reward import ranking_loss, sequence_rewards, train_top_layers
from rm_shared_prompt import add_rm_args, alternate, rm_model_and_batches

CATEGORIES = {  # profiler operator name -> what it is, for the summary; anything else is "other"
    "aten::mm": "matrix products",
    "aten::addmm": "matrix products",
    "aten::bmm": "matrix products",
    "aten::copy_": "dtype casts and copies",
    "aten::_to_copy": "dtype casts and copies",
    "aten::mul": "element-wise",
    "aten::add": "element-wise",
    "aten::add_": "element-wise",
    "aten::sub": "element-wise",
    "aten::div": "element-wise",
    "aten::pow": "element-wise",
    "aten::rsqrt": "element-wise",
    "aten::mean": "element-wise",
    "aten::sum": "element-wise",
    "aten::neg": "element-wise",
    "aten::silu": "element-wise",
    "aten::silu_backward": "element-wise",
    "aten::cat": "element-wise",
    "aten::fill_": "element-wise",
}


def operator_category(name: str) -> str:
    """The summary's category of a profiler operator: attention kernels by name, the rest from `CATEGORIES`."""
    if "scaled_dot_product" in name or "flash_attention" in name:
        return "attention"
    return CATEGORIES.get(name, "other")


def category_shares(self_times: dict[str, float]) -> dict[str, float]:
    """Each category's share of the summed self time of the operators in `self_times` (name -> seconds)."""
    totals: dict[str, float] = defaultdict(float)
    for name, seconds in self_times.items():
        totals[operator_category(name)] += seconds
    whole = sum(totals.values()) or 1.0
    return {category: seconds / whole for category, seconds in sorted(totals.items(), key=lambda kv: -kv[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_rm_args(parser)
    parser.add_argument("--profile", type=int, default=0, help="steps of lora-fp32 to profile afterwards (0: none)")
    parser.add_argument("--top_layers", type=int, default=15, help="trainable layers of the top-N-layers variant")
    args = parser.parse_args()
    model, batches = rm_model_and_batches(args)
    device = next(model.parameters()).device.type

    def autocast_rewards(batch: dict) -> torch.Tensor:
        with lora_bf16_compute(model):  # what `lora_bf16_compute: true` runs in the RM stage
            return sequence_rewards(model, batch, True)

    def trainer_autocast_rewards(batch: dict) -> torch.Tensor:
        with torch.autocast(device, dtype=torch.bfloat16):
            return sequence_rewards(model, batch, True)

    def top_layers_rewards(batch: dict) -> torch.Tensor:
        frozen = train_top_layers(model, args.top_layers)  # the graph is built now: thaw them once it is
        try:
            return sequence_rewards(model, batch, True)
        finally:
            for param in frozen:
                param.requires_grad_(True)

    variants = {
        "lora-fp32": lambda batch: sequence_rewards(model, batch, True),
        "lora-autocast": autocast_rewards,
        "autocast-only": trainer_autocast_rewards,
        f"top-{args.top_layers}-layers": top_layers_rewards,
    }
    times, difference = alternate(model, batches, variants)
    base_dtype = compute_dtype(model)
    print(f"model {args.model} (frozen base {base_dtype}), {len(batches) - 1} steps of {args.batch_size} rankings")
    means = {}
    for name, runs in times.items():
        forward, backward = statistics.mean(r[0] for r in runs), statistics.mean(r[1] for r in runs)
        means[name] = forward + backward
        print(f"{name:14s} forward {forward:.2f} s, backward {backward:.2f} s, step {means[name]:.2f} s")
    for name in list(variants)[1:]:
        print(f"ratio lora-fp32/{name}: {means['lora-fp32'] / means[name]:.2f}x")
    print(f"largest reward difference from lora-fp32: {difference:.2e}")
    if base_dtype != torch.bfloat16:
        print("(the frozen base is not bf16 here: autocast also moves the base's products to bf16)")

    if args.profile > 0:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
            for batch in batches[1 : 1 + args.profile]:
                model.zero_grad(set_to_none=True)
                rewards = sequence_rewards(model, batch, True)
                ranking_loss(rewards.float(), batch["scores"], batch["group_sizes"])[0].backward()
        by_shape = prof.key_averages(group_by_input_shape=True)
        print(by_shape.table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
        self_times = {event.key: event.self_cpu_time_total / 1e6 for event in prof.key_averages()}
        shares = category_shares(self_times)
        print("share of the profiled steps' self time: " + ", ".join(f"{c} {s:.0%}" for c, s in shares.items()))


if __name__ == "__main__":
    main()
