"""What every recipe does before and after training: paths, logging backends, saving and reporting outputs."""

import json
import logging
import os
from pathlib import Path

import transformers
from transformers import TrainingArguments

from .configs import expand_path

logger = logging.getLogger("instructrl")


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
