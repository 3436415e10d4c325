"""Benchmark: PPO episodes per minute of `make ppo`, before and after, side by side, with where the time goes.

    python bench/ppo_throughput.py                      # the embedded default, after `make sft` and `make rm`
    python bench/ppo_throughput.py --updates 2 --variants fp32-8 bf16-8 default
    python bench/ppo_throughput.py --variants default --updates 1 --profile 25   # torch.profiler's top operators
    python bench/ppo_throughput.py --variants default --updates 1 --flops        # FLOPs per phase against peak

Each variant runs `recipes/ppo.py` (`main`, exactly what `make ppo` runs) on the PPO-ptx config with a few overrides,
in its own process, on the same SFT and RM adapters, for one warm-up update plus `--updates` timed ones, without the
held-out scoring. Variants:

- `fp32-8`: `make ppo` as it was until 2026-11-25, in fp32: 8 episodes per update (2 micro-batches of 4), one PPO
  epoch, all 8 generated in one batch, 8 pretraining sequences per episode in the ptx pass, with the code as it was
  before 2026-12-02 (below);
- `bf16-8`: the same with the frozen base in bf16 (forced, whatever `dtype: auto` would pick here);
- `default`: the config as it ships (its own dtype and update shape), with today's code;
- `default-fp32`: the same with the frozen base forced to fp32, so that on a machine where `dtype: auto` picks bf16
  the two show what bf16 buys at the shipped shape;
- `default-before`: `default` with the code as it was before 2026-12-02: tokens drawn by torch's `multinomial`
  (not `fast_cpu_sampling`) and the ptx loss's logits in fp32 (not `lm_logits_in_model_dtype`);
- `default-full-logits`: `default` with the output layer run over the prompt positions too in the reference, rollout
  and training forwards, as before 2026-12-05 (`instructrl.ppo.response_logits_only` off).
- `default-lora-fp32`: `default` with `lora_bf16_compute: false`: PEFT's fp32 arithmetic in the LoRA adapters of
  the bf16 base, as before 2026-12-06 (the default runs it in bf16, the weights, logits and scalar heads fp32).

A variant name followed by `+KEY=VALUE[,KEY=VALUE...]` runs that variant with further config overrides, so that any
setting is measured beside the shipped one, e.g. `--variants default default+ptx_micro_batch_size=64`.

`--plain` runs the plain-PPO config (`config_ppo.yaml`, no ptx) instead of PPO-ptx.

Printed per variant: episodes per update, seconds per update, episodes per minute, and the split of an update into
generation (sampling the responses), rollout scoring (reference, value and reward forwards), PPO training
(forward/backward/optimizer of policy and value) and the ptx forward/backward. `--flops` adds, per phase, the
matrix-product FLOPs of an update, the GFLOP/s achieved, this machine's matmul peak in the variant's dtype measured
in the same run, and the episodes per minute an update of that many FLOPs would reach at that peak: the ceiling no
scheduling can pass.
"""

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {  # plain PPO or not
    False: ROOT / "recipes/smollm2-135m/ppo/config_ppo_ptx.yaml",
    True: ROOT / "recipes/smollm2-135m/ppo/config_ppo.yaml",
}
OLD_SHAPE = [
    "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2", "--num_mini_batches", "1",
    "--num_ppo_epochs", "1", "--local_rollout_forward_batch_size", "8", "--lora_bf16_compute", "false",
    "--ptx_ratio", "8",  # InstructGPT's 8 pretraining sequences per episode, whatever the config now ships
]  # fmt: skip
VARIANTS = {
    "fp32-8": ["--dtype", "float32", *OLD_SHAPE],
    "bf16-8": ["--dtype", "bfloat16", *OLD_SHAPE],
    "default": [],
    "default-fp32": ["--dtype", "float32"],
    "default-generate": ["--dtype", "bfloat16", "--rollout_logprobs", "generate"],  # TRL's rollout log-probs in bf16
    "default-before": ["--lora_bf16_compute", "false"],
    "default-full-logits": [],
    "default-lora-fp32": ["--lora_bf16_compute", "false"],  # PEFT's fp32 adapter arithmetic (before 2026-12-06)
}
BEFORE = {"fp32-8", "bf16-8", "default-before"}  # run with the sampler and ptx logits of before 2026-12-02
FULL_LOGITS = BEFORE | {"default-full-logits"}  # the output layer over the prompts too (before 2026-12-05)


def split_variant(spec: str) -> tuple[str, list[str]]:
    """`NAME` or `NAME+KEY=VALUE[,KEY=VALUE...]` -> (NAME, its extra command-line overrides)."""
    name, _, extra = spec.partition("+")
    if name not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown variant {name!r}; choose one of {', '.join(VARIANTS)}")
    overrides = []
    for item in filter(None, extra.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{item!r} in {spec!r} is not KEY=VALUE")
        overrides += [f"--{key}", value]
    return name, overrides


def variant_spec(spec: str) -> str:
    split_variant(spec)
    return spec


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """Run in a child process: patch timers around TRL's rollout functions, then run the PPO recipe's `main`."""
    import importlib.util

    import torch
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from torch.utils.flop_counter import FlopCounterMode
    from trl import ModelConfig

    from instructrl import ppo as ppo_module
    from instructrl.configs import PPOScriptArguments, parse_args
    from instructrl.memory import Shape
    from instructrl.modeling import compute_dtype
    from instructrl.ppo import InstructPPOConfig, InstructPPOTrainer

    # With --count-flops, torch's FlopCounterMode counts the matrix-product FLOPs (forward and backward) of each
    # phase; it slows the run, so the times that go with those counts come from a separate, uncounted run.
    counter = FlopCounterMode(display=False) if args.count_flops else None
    spent: dict[str, float] = defaultdict(float)
    counted: dict[str, float] = defaultdict(float)
    marks: list[float] = []

    def flops_now() -> float:
        return float(counter.get_total_flops()) if counter is not None else 0.0

    def timed(fn, phase_of):
        def wrapper(*a, **k):
            start, flops = time.perf_counter(), flops_now()
            try:
                return fn(*a, **k)
            finally:
                phase = phase_of()
                spent[phase] += time.perf_counter() - start
                counted[phase] += flops_now() - flops

        return wrapper

    # Module-level functions are looked up at call time by TRL's loop. `forward` runs under no_grad in the rollout
    # (reference log-probs) and with gradients in training; the training share is what remains of the update.
    trl_ppo.batch_generation = timed(trl_ppo.batch_generation, lambda: "generation")
    trl_ppo.get_reward = timed(trl_ppo.get_reward, lambda: "rollout scoring")
    original_forward = trl_ppo.forward
    timed_forward = timed(original_forward, lambda: "rollout scoring")
    trl_ppo.forward = lambda *a, **k: original_forward(*a, **k) if torch.is_grad_enabled() else timed_forward(*a, **k)
    InstructPPOTrainer.ptx_backward = timed(InstructPPOTrainer.ptx_backward, lambda: "ptx")
    original_log = InstructPPOTrainer.log

    def log(self, logs, start_time=None):
        if "objective/scores" in logs:
            marks.append(time.perf_counter())
            phases.append(dict(spent))
            flop_phases.append({**counted, "total": flops_now()})
        return original_log(self, logs, start_time)

    phases: list[dict] = []
    flop_phases: list[dict] = []
    InstructPPOTrainer.log = log
    name, extra = split_variant(variant)
    if name in BEFORE:
        ppo_module.fast_cpu_sampling = ppo_module.lm_logits_in_model_dtype = contextlib.nullcontext
    if name in FULL_LOGITS:
        ppo_module.response_logits_only = contextlib.nullcontext
    spec = importlib.util.spec_from_file_location("ppo_recipe", ROOT / "recipes/ppo.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    workdir = Path(tempfile.mkdtemp(prefix=f"instructrl-bench-{name}-"))
    argv = ["--config", str(CONFIGS[args.plain]), *VARIANTS[name], *extra, "--output_dir", str(workdir / "ppo")]
    script_args, training_args, model_args = parse_args((PPOScriptArguments, InstructPPOConfig, ModelConfig), argv)
    # TRL 1.12's update: per_device_train_batch_size x gradient_accumulation_steps episodes (mini-batches split them).
    episodes = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    training_args.total_episodes = episodes * (args.updates + 1)
    training_args.score_heldout = False
    training_args.save_strategy = "no"
    training_args.report_to = []
    training_args.sft_model_path, training_args.reward_model_path = args.sft, args.rm
    start = time.perf_counter()
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            trainer = recipe.main(script_args, training_args, model_args)
        table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile)
        print(table, file=sys.stderr, flush=True)
    elif counter is not None:
        with counter:
            trainer = recipe.main(script_args, training_args, model_args)
    else:
        trainer = recipe.main(script_args, training_args, model_args)
    timed_updates = len(marks) - 1
    seconds = (marks[-1] - marks[0]) / timed_updates
    split = per_update(phases, timed_updates)
    split["ppo training"] = seconds - sum(split.values())
    flops = per_update(flop_phases, timed_updates)
    flops["ppo training"] = flops.pop("total") - sum(flops.values())
    return {
        "variant": variant,
        "dtype": str(compute_dtype(trainer.shared.shared)).removeprefix("torch."),
        "episodes_per_update": episodes,
        "sec_per_update": seconds,
        "episodes_per_min": 60 * episodes / seconds,
        "split": split,
        "flops": flops if counter is not None else None,
        "matmul_shapes": matmul_shapes(Shape.from_config(trainer.shared.shared.config)),
        "wall_s": time.perf_counter() - start,
    }


def per_update(snapshots: list[dict], updates: int) -> dict[str, float]:
    """Per-update amounts of each key between the first snapshot (after the warm-up) and the last."""
    first, last = snapshots[0], snapshots[-1]
    return {k: (last.get(k, 0.0) - first.get(k, 0.0)) / updates for k in last}


def matmul_shapes(shape) -> list[tuple[int, int]]:
    """(in, out) of the model's block linears (`instructrl.memory.Shape`) and an eighth of its output layer."""
    return [*shape.linear_shapes(), (shape.hidden, shape.vocab // 8)]


def matmul_peak(shapes: list[tuple[int, int]], dtype: str = "float32", rows: int = 3072) -> float:
    """Best GFLOP/s of this machine in `dtype` over the model's own (in, out) linear shapes (default threads)."""
    import torch

    best = 0.0
    for k, n in set(map(tuple, shapes)):
        a, b = torch.randn(rows, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
        for _ in range(3):
            a @ b
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 2 * rows * k * n * 10 / (time.perf_counter() - start) / 1e9)
    return best


def print_flops(rows: list[dict], phases: list[str]) -> None:
    """Achieved matrix-product GFLOP/s per phase against the machine's peak, and the episodes/min that peak allows."""
    import torch

    peaks = {row["dtype"]: matmul_peak(row["matmul_shapes"], row["dtype"]) for row in rows}
    print(
        f"\nmatrix products (FLOPs counted by torch's FlopCounterMode in a second run of each variant, seconds from "
        f"the first; the CPU attention kernel, a few % here, is not counted); this machine's matmul peak on the "
        f"model's shapes, {torch.get_num_threads()} threads: "
        + ", ".join(f"{dtype} {peak:.0f} GFLOP/s" for dtype, peak in peaks.items())
        + " (a variant is set against the peak of its base's dtype; what it trains stays fp32)"
    )
    header = "  ".join(f"{p + ' TFLOP':>{len(p) + 6}}" for p in phases)
    print(f"{'variant':<22} {header}  total  GFLOP/s  of peak")
    for row in rows:
        flops, peak = row["flops"], peaks[row["dtype"]]
        total = sum(flops.values())
        cells = "  ".join(f"{flops.get(p, 0.0) / 1e12:>{len(p) + 6}.2f}" for p in phases)
        rate = total / row["sec_per_update"] / 1e9
        print(f"{row['variant']:<22} {cells}  {total / 1e12:5.2f}  {rate:7.0f}  {rate / peak:7.2f}")
        for p in phases:
            if row["split"].get(p):
                print(f"  {p}: {flops.get(p, 0.0) / row['split'][p] / 1e9:.0f} GFLOP/s")
        ceiling = 60 * row["episodes_per_update"] * peak * 1e9 / total
        print(
            f"  at the peak, these FLOPs would allow at most {ceiling:.1f} episodes/min "
            f"({ceiling / row['episodes_per_min']:.1f}x the measured {row['episodes_per_min']:.1f})"
        )


def run_child(name: str, cmd: list[str]) -> tuple[dict, str]:
    """One variant in its own process: the result it prints as `RESULT <json>`, and its stderr."""
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT ")), out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    outputs = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
    parser.add_argument("--sft", default=str(outputs / "sft"))
    parser.add_argument("--rm", default=str(outputs / "rm"))
    parser.add_argument("--updates", type=int, default=2, help="timed updates (one more runs first as warm-up)")
    parser.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), type=variant_spec, help="NAME or NAME+KEY=VALUE[,KEY=VALUE]"
    )
    parser.add_argument("--plain", action="store_true", help="plain PPO (config_ppo.yaml) instead of PPO-ptx")
    parser.add_argument("--profile", type=int, default=0, help="print the N operators with the most self CPU time")
    parser.add_argument(
        "--flops", action="store_true", help="also count each phase's FLOPs (a second run per variant) against peak"
    )
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--count-flops", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args)), flush=True)
        return
    rows = []
    for name in args.variants:
        cmd = [sys.executable, __file__, "--variant", name, "--sft", args.sft, "--rm", args.rm]
        cmd += ["--updates", str(args.updates)] + (["--plain"] if args.plain else [])
        row, stderr = run_child(name, cmd + ["--profile", str(args.profile)])
        if args.profile:
            table = stderr[stderr.find("-" * 20) :]
            print(f"profile of {name} (warm-up and timed updates):\n{table}")
        if args.flops:
            row["flops"] = run_child(name, cmd + ["--count-flops"])[0]["flops"]
        rows.append(row)
    phases = ["generation", "rollout scoring", "ppo training", "ptx"]
    print(f"config: {CONFIGS[args.plain].name}")
    width = max(22, *(len(row["variant"]) for row in rows))
    print(f"{'variant':<{width}} {'dtype':<9} {'ep/update':>9} {'s/update':>9} {'ep/min':>7}  " + "  ".join(phases))
    for row in rows:
        split = "  ".join(f"{row['split'].get(p, 0.0):>{len(p)}.1f}" for p in phases)
        print(
            f"{row['variant']:<{width}} {row['dtype']:<9} {row['episodes_per_update']:>9} "
            f"{row['sec_per_update']:>9.1f} {row['episodes_per_min']:>7.1f}  {split}"
        )
    first = rows[0]
    for row in rows[1:]:
        ratio = row["episodes_per_min"] / first["episodes_per_min"]
        print(f"episodes/min {row['variant']} / {first['variant']}: {ratio:.2f}")
    if args.flops:
        print_flops(rows, phases)


if __name__ == "__main__":
    main()
