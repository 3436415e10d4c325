"""What every recipe does before and after training: paths, logging backends, saving and reporting outputs."""

import json
import logging
import os
import time
from pathlib import Path

import transformers
from transformers import TrainingArguments

from .configs import expand_path

logger = logging.getLogger("instructrl")

# Stage markers: a stage's output directory holds RUNNING while the stage writes to it and COMPLETE once it finished.
# `make pipeline` skips complete stages and restarts interrupted ones (see `instructrl.pipeline`).
RUNNING = ".instructrl-running"
COMPLETE = ".instructrl-complete"


def prepare_run(training_args: TrainingArguments) -> Path:
    """Expand the output path, keep wandb offline unless the user configured it, and set up logging.

    Returns the output directory (not created here: nothing is written before the inputs have been validated).
    """
    training_args.output_dir = expand_path(training_args.output_dir)
    # wandb uploads only when the user asked for it (WANDB_MODE or an API key in the environment).
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    prepare_logging()
    return Path(training_args.output_dir)


def prepare_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def announce(stage: str, output_dir: Path, extra: dict | None = None) -> None:
    """Tell the user where a stage's outputs went."""
    lines = [f"[instructrl] {stage} finished. Outputs: {output_dir}"]
    for key, value in (extra or {}).items():
        lines.append(f"[instructrl]   {key}: {value}")
    print("\n".join(lines), flush=True)


def start_stage(output_dir: Path, stage: str) -> None:
    """Mark `output_dir` as being written by `stage` (called once the inputs are validated, before training)."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / COMPLETE).unlink(missing_ok=True)  # what is about to be overwritten is no longer a finished run
    write_json(output_dir / RUNNING, {"stage": stage, "started": time.time(), "pid": os.getpid()})


def finish_stage(output_dir: Path, stage: str) -> None:
    """Mark `output_dir` as a finished `stage`: everything it should hold has been written."""
    output_dir = Path(output_dir)
    write_json(output_dir / COMPLETE, {"stage": stage, "finished": time.time()})
    (output_dir / RUNNING).unlink(missing_ok=True)
