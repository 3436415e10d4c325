"""Benchmark: PPO episodes per minute of `make ppo`, before and after, side by side, with where the time goes.

    python bench/ppo_throughput.py                      # the embedded default, after `make sft` and `make rm`
    python bench/ppo_throughput.py --updates 2 --variants fp32-8 bf16-8 default
    python bench/ppo_throughput.py --variants default --updates 1 --profile 25   # torch.profiler's top operators

Each variant runs `recipes/ppo.py` (`main`, exactly what `make ppo` runs) on the PPO-ptx config with a few overrides,
in its own process, on the same SFT and RM adapters, for one warm-up update plus `--updates` timed ones, without the
held-out scoring. Variants:

- `fp32-8`: the shape `make ppo` had until 2026-11-25 in fp32: 8 episodes per update (2 micro-batches of 4), one PPO
  epoch, all 8 generated in one batch;
- `bf16-8`: the same shape with the frozen base in bf16 (forced, whatever `dtype: auto` would pick here);
- `default`: the config as it ships (its own dtype and update shape).

`--plain` runs the plain-PPO config (`config_ppo.yaml`, no ptx) instead of PPO-ptx.

Printed per variant: episodes per update, seconds per update, episodes per minute, and the split of an update into
generation (sampling the responses), rollout scoring (reference, value and reward forwards), PPO training
(forward/backward/optimizer of policy and value) and the ptx forward/backward.
"""

import argparse
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
    "--num_ppo_epochs", "1", "--local_rollout_forward_batch_size", "8",
]  # fmt: skip
VARIANTS = {
    "fp32-8": ["--dtype", "float32", *OLD_SHAPE],
    "bf16-8": ["--dtype", "bfloat16", *OLD_SHAPE],
    "default": [],
}


def run_variant(name: str, args: argparse.Namespace) -> dict:
    """Run in a child process: patch timers around TRL's rollout functions, then run the PPO recipe's `main`."""
    import importlib.util

    import torch
    import trl.experimental.ppo.ppo_trainer as trl_ppo
    from trl import ModelConfig

    from instructrl.configs import PPOScriptArguments, parse_args
    from instructrl.ppo import InstructPPOConfig, InstructPPOTrainer

    spent: dict[str, float] = defaultdict(float)
    marks: list[float] = []

    def timed(fn, phase_of):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[phase_of()] += time.perf_counter() - start

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
        return original_log(self, logs, start_time)

    phases: list[dict] = []
    InstructPPOTrainer.log = log
    spec = importlib.util.spec_from_file_location("ppo_recipe", ROOT / "recipes/ppo.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    workdir = Path(tempfile.mkdtemp(prefix=f"instructrl-bench-{name}-"))
    argv = ["--config", str(CONFIGS[args.plain]), *VARIANTS[name], "--output_dir", str(workdir / "ppo")]
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
    else:
        trainer = recipe.main(script_args, training_args, model_args)
    timed_updates = len(marks) - 1
    seconds = (marks[-1] - marks[0]) / timed_updates
    split = {k: (phases[-1].get(k, 0.0) - phases[0].get(k, 0.0)) / timed_updates for k in phases[-1]}
    split["ppo training"] = seconds - sum(split.values())
    return {
        "variant": name,
        "dtype": str(next(trainer.shared.shared.parameters()).dtype).removeprefix("torch."),
        "episodes_per_update": episodes,
        "sec_per_update": seconds,
        "episodes_per_min": 60 * episodes / seconds,
        "split": split,
        "wall_s": time.perf_counter() - start,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    outputs = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
    parser.add_argument("--sft", default=str(outputs / "sft"))
    parser.add_argument("--rm", default=str(outputs / "rm"))
    parser.add_argument("--updates", type=int, default=2, help="timed updates (one more runs first as warm-up)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--plain", action="store_true", help="plain PPO (config_ppo.yaml) instead of PPO-ptx")
    parser.add_argument("--profile", type=int, default=0, help="print the N operators with the most self CPU time")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args)), flush=True)
        return
    rows = []
    for name in args.variants:
        cmd = [sys.executable, __file__, "--variant", name, "--sft", args.sft, "--rm", args.rm]
        cmd += ["--updates", str(args.updates), "--profile", str(args.profile)] + (["--plain"] if args.plain else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"variant {name} failed:\n{out.stderr[-3000:]}")
        rows.append(json.loads(lines[-1][len("RESULT ") :]))
        if args.profile:
            table = out.stderr[out.stderr.find("-" * 20) :]
            print(f"profile of {name} (warm-up and timed updates):\n{table}")
    phases = ["generation", "rollout scoring", "ppo training", "ptx"]
    print(f"config: {CONFIGS[args.plain].name}")
    print(f"{'variant':<9} {'dtype':<9} {'ep/update':>9} {'s/update':>9} {'ep/min':>7}  " + "  ".join(phases))
    for row in rows:
        split = "  ".join(f"{row['split'].get(p, 0.0):>{len(p)}.1f}" for p in phases)
        print(
            f"{row['variant']:<9} {row['dtype']:<9} {row['episodes_per_update']:>9} {row['sec_per_update']:>9.1f} "
            f"{row['episodes_per_min']:>7.1f}  {split}"
        )
    first = rows[0]
    for row in rows[1:]:
        ratio = row["episodes_per_min"] / first["episodes_per_min"]
        print(f"episodes/min {row['variant']} / {first['variant']}: {ratio:.2f}")


if __name__ == "__main__":
    main()
