"""Benchmark: fp32 against bf16 for the stages other than PPO, side by side on this machine.

    python bench/stage_dtype.py                        # after `make sft` and `make rm` (the RM reads their outputs)
    python bench/stage_dtype.py --stages sft sampling --steps 8

For each stage and each dtype of the frozen base (`--dtype float32` / `--dtype bfloat16`, whatever `dtype: auto`
would pick here), in its own process:

- `sft`, `rm`: the stage's recipe with its default config for `--steps` optimizer steps, no checkpoint; the time is
  the trainer's own `train_runtime` (model loading and the RM's held-out scoring left out), per step;
- `sampling`: what the comparison and evaluation stages spend their time on: the SFT policy sampling `--prompts`
  comparison prompts of 64 tokens at most in one batch (`instructrl.generation.sample_responses`), after a warm-up.

PPO has its own benchmark (`bench/ppo_throughput.py`, variants `default` and `default-fp32`).
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ppo_throughput import run_child  # the same child-process protocol (`RESULT <json>` on stdout)

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
RECIPES = {  # recipe, config, overrides that skip what follows training (not timed)
    "sft": ("recipes/sft.py", "recipes/smollm2-135m/sft/config_lora.yaml", []),
    "rm": (
        "recipes/rm.py",
        "recipes/smollm2-135m/rm/config_lora.yaml",
        ["--flip_probe", "", "--normalization_dataset_name", ""],
    ),
}
DTYPES = ("float32", "bfloat16")


def train_seconds_per_step(stage: str, dtype: str, steps: int) -> float:
    """Run the stage's recipe for `steps` optimizer steps in a child process; its `train_runtime` per step."""
    recipe, config, skip = RECIPES[stage]
    with tempfile.TemporaryDirectory(prefix=f"instructrl-bench-{stage}-") as out:
        cmd = [sys.executable, str(ROOT / recipe), "--config", str(ROOT / config), "--dtype", dtype]
        cmd += ["--max_steps", str(steps), "--save_strategy", "no", "--eval_strategy", "no", "--output_dir", out]
        cmd += ["--report_to", "none", "--logging_steps", str(steps), *skip]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"{stage} ({dtype}) failed:\n{done.stderr[-3000:]}")
        metrics = json.loads((Path(out) / "train_results.json").read_text())
    return metrics["train_runtime"] / steps


def sampling_seconds(dtype: str, prompts: int) -> float:
    """Seconds for the SFT policy to sample one response to each of `prompts` comparison prompts, in one batch."""
    import torch
    from trl import ModelConfig

    from instructrl.data.loading import load_data
    from instructrl.generation import load_policy, sample_responses

    model_args = ModelConfig(model_name_or_path="smollm2-135m-instruct", dtype=dtype)
    model, tokenizer = load_policy(model_args, str(OUTPUTS / "sft"))
    rows = list(load_data("builtin:prompts", "comparison")["prompt"][:prompts])
    torch.manual_seed(0)
    sample_responses(model, tokenizer, rows[:4], max_new_tokens=8, batch_size=4)  # warm-up
    start = time.perf_counter()
    sample_responses(model, tokenizer, rows, max_new_tokens=64, temperature=1.0, batch_size=prompts)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", default=["sft", "rm", "sampling"], choices=["sft", "rm", "sampling"])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps timed per training stage")
    parser.add_argument("--prompts", type=int, default=32, help="prompts sampled in one batch")
    parser.add_argument("--sampling-child", choices=DTYPES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sampling_child:
        print("RESULT " + json.dumps(sampling_seconds(args.sampling_child, args.prompts)), flush=True)
        return
    rows = []
    for stage in args.stages:
        seconds = {}
        for dtype in DTYPES:
            if stage == "sampling":
                cmd = [sys.executable, __file__, "--sampling-child", dtype, "--prompts", str(args.prompts)]
                seconds[dtype] = run_child(f"sampling ({dtype})", cmd)[0]
            else:
                seconds[dtype] = train_seconds_per_step(stage, dtype, args.steps)
        unit = f"s for {args.prompts} responses" if stage == "sampling" else "s per step"
        rows.append((stage, seconds, unit))
    print(f"{'stage':<9} {'fp32':>8} {'bf16':>8}  fp32/bf16  unit")
    for stage, seconds, unit in rows:
        ratio = seconds["float32"] / seconds["bfloat16"]
        print(f"{stage:<9} {seconds['float32']:>8.2f} {seconds['bfloat16']:>8.2f}  {ratio:>9.2f}  {unit}")


if __name__ == "__main__":
    main()
