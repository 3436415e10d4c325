"""The whole InstructGPT recipe in one command: SFT, comparisons, RM, PPO-ptx, plain PPO, evaluation and report.

    make pipeline                                  # the embedded default, end to end
    make pipeline FORCE=rm                         # redo the reward model and everything after it
    make pipeline MODEL=Qwen/Qwen2.5-0.5B-Instruct # the same recipe on another model, in its own output root
    make pipeline SEED=7                           # every stage with seed 7, beside the default run (<root>-seed7)
    make pipeline JOBS=1                           # one stage at a time (default: auto, see --jobs)
    python recipes/pipeline.py --config recipes/smollm2-135m/pipeline.yaml [--force STAGE ...] [--seed N] [--dry-run]

Re-running skips finished stages; an interrupted stage starts over from an empty output directory; a stage whose
inputs were redone runs again. Each stage prints where its outputs go. See `instructrl.pipeline`.
"""

import argparse
from pathlib import Path

from instructrl.cli import run_entry
from instructrl.pipeline import default_launcher, load_pipeline, run_pipeline

REPO = Path(__file__).resolve().parents[1]


def jobs_argument(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"'{value}' is neither 'auto' nor a whole number >= 1")
    return jobs


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Pipeline YAML (a `stages:` list).")
    parser.add_argument("--force", nargs="*", default=[], help="Stages to redo (with what follows them), or 'all'.")
    parser.add_argument("--dry-run", action="store_true", help="Print what would run and stop.")
    parser.add_argument("--model", default=None, help="Run the recipe on this model (Hub id or local directory).")
    parser.add_argument(
        "--output-root", default=None, help="Where the stages write (default with --model: outputs/<model slug>)."
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="Every stage's seed; the outputs go to <output root>-seed<N> (a second, complete run beside the first).",
    )
    parser.add_argument(
        "--jobs",
        type=jobs_argument,
        default="auto",
        help="Stages to run side by side once their `after:` stages are done, each with cores/jobs threads; 'auto' "
        "(the default): as many as can run together on a CPU-only machine with the cores and memory for them, 1 "
        "with a GPU.",
    )
    parser.add_argument("--accelerate-config", default=str(REPO / "recipes/accelerate_configs/single_gpu.yaml"))
    parser.add_argument("--log-file", default=None, help="Where to write stage timings (JSON).")
    args = parser.parse_args(argv)
    stages = load_pipeline(args.config, root=REPO, model=args.model, output_root=args.output_root, seed=args.seed)
    log_file = Path(args.log_file).expanduser() if args.log_file else stages[0].output_dir.parent / "pipeline.json"
    records = run_pipeline(
        stages,
        force=[f for item in args.force for f in item.split(",") if f],
        dry_run=args.dry_run,
        launcher=default_launcher(Path(args.accelerate_config)),
        log_file=log_file,
        jobs=args.jobs,
    )
    ran = [r for r in records if "seconds" in r]
    if ran:
        wall = max(r["ended"] for r in ran) - min(r["started"] for r in ran)
        print(
            f"[pipeline] done: {wall / 60:.1f} min for {len(ran)} stage(s) "
            f"({sum(r['seconds'] for r in ran) / 60:.1f} min of stage time); timings in {log_file}"
        )
    return records


if __name__ == "__main__":
    run_entry(main)
