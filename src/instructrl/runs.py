"""What every recipe does before and after training: paths, logging backends, output ownership, stage markers.

A stage's output directory holds `.instructrl-running` while the stage writes to it and `.instructrl-complete` once it
finished (`start_stage` / `finish_stage`). `make pipeline` skips complete stages and restarts interrupted ones (see
`instructrl.pipeline`), and every recipe refuses to write into a directory that belongs to something else
(`check_output_dir`): another stage's results, files instructrl did not write, or a stage another process is running.
"""

import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import transformers
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME
from transformers import TrainingArguments

from .adapters import has_adapter
from .configs import expand_path
from .errors import ConfigError, MissingStageError, OutputDirError

logger = logging.getLogger("instructrl")

RUNNING = ".instructrl-running"
COMPLETE = ".instructrl-complete"
# Set by `--overwrite` (see `instructrl.cli`): write into a directory that holds something else.
OVERWRITE_ENV = "INSTRUCTRL_OVERWRITE"
# Set by `make pipeline` for the stage it launches: the digest of the settings it runs with, kept in the running marker
# so that a rerun can tell whether an interrupted stage's checkpoints were made with the same settings.
SETTINGS_ENV = "INSTRUCTRL_STAGE_SETTINGS"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def prepare_run(training_args: TrainingArguments, stage: str) -> Path:
    """Expand the output path, check that `stage` may write there, keep wandb offline unless configured, set up logs.

    Returns the output directory (not created here: nothing is written before the inputs have been validated).
    """
    training_args.output_dir = expand_path(training_args.output_dir)
    output_dir = Path(training_args.output_dir)
    check_output_dir(output_dir, stage)
    # wandb uploads only when the user asked for it (WANDB_MODE or an API key in the environment).
    if "WANDB_MODE" not in os.environ and "WANDB_API_KEY" not in os.environ:
        os.environ["WANDB_MODE"] = "offline"
    prepare_logging()
    return output_dir


def prepare_logging() -> None:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    transformers.utils.logging.set_verbosity_warning()


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` whole, then rename it into place: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, payload: dict) -> None:
    """Write JSON atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def announce(stage: str, output_dir: Path, extra: dict | None = None) -> None:
    """Tell the user where a stage's outputs went."""
    lines = [f"[instructrl] {stage} finished. Outputs: {output_dir}"]
    for key, value in (extra or {}).items():
        lines.append(f"[instructrl]   {key}: {value}")
    print("\n".join(lines), flush=True)


# -- markers ----------------------------------------------------------------------------------------------------------
def read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def pid_alive(pid: int | None, host: str | None = None) -> bool:
    """Whether another process `pid` (on `host`, this machine if unset) is running; a foreign host counts as alive."""
    if host is not None and host != socket.gethostname():
        return True  # cannot be checked from here: assume it is still writing
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_state(output_dir: Path) -> tuple[str, float | None]:
    """`(state, finished_time)`: state is `complete`, `running`, `interrupted`, `missing` or `foreign`."""
    complete = read_marker(output_dir / COMPLETE)
    if complete is not None:
        return "complete", float(complete.get("finished", 0.0))
    running = read_marker(output_dir / RUNNING)
    if running is not None or (output_dir / RUNNING).exists():
        running = running or {}
        return ("running" if pid_alive(running.get("pid"), running.get("host")) else "interrupted"), None
    if not output_dir.exists() or not any(output_dir.iterdir()):
        return "missing", None
    return "foreign", None


def overwrite_requested() -> bool:
    """Whether the user passed `--overwrite` (or set `INSTRUCTRL_OVERWRITE=1`)."""
    return os.environ.get(OVERWRITE_ENV, "").lower() in ("1", "true", "yes")


def check_output_dir(output_dir: Path, stage: str, overwrite: bool | None = None) -> None:
    """Refuse to write `stage`'s outputs where they would destroy or interleave with something else.

    Allowed: a missing or empty directory, and one that holds this same stage (finished, or interrupted and being
    resumed). Refused unless `overwrite` (default: the `--overwrite` flag): another stage's finished or interrupted
    outputs, and a non-empty directory no instructrl stage marked. Always refused: a directory a live process is
    writing (its running marker's pid is alive), so two terminals cannot interleave their writes.

    Raises:
        OutputDirError: naming what is in the directory and how to proceed.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"`output_dir` '{output_dir}' is a file, not a directory. Choose another `output_dir`.")
    overwrite = overwrite_requested() if overwrite is None else overwrite
    state, _ = stage_state(output_dir)
    if state == "missing":
        return
    how = f"Choose another `output_dir`, or pass `--overwrite` to write the {stage} stage there anyway."
    if state == "running":
        marker = read_marker(output_dir / RUNNING) or {}
        raise OutputDirError(
            f"'{output_dir}' is being written by the {marker.get('stage', 'unknown')} stage in process "
            f"{marker.get('pid')} on {marker.get('host', 'this machine')}. Wait for it to finish or stop it; if no "
            f"such process exists, delete '{output_dir / RUNNING}'."
        )
    if state == "foreign":
        if overwrite:
            return
        names = sorted(p.name for p in output_dir.iterdir())
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise OutputDirError(f"'{output_dir}' is not empty and no instructrl stage wrote it (it holds {shown}). {how}")
    marker = read_marker(output_dir / (COMPLETE if state == "complete" else RUNNING)) or {}
    owner = marker.get("stage")
    if owner == stage or overwrite:
        return
    what = "finished" if state == "complete" else "interrupted"
    raise OutputDirError(
        f"'{output_dir}' holds the {what} outputs of the {owner} stage, which would be overwritten. {how}"
    )


def _is_main_process() -> bool:
    # Under torchrun/accelerate every rank runs the recipe; one of them owns the markers.
    return int(os.environ.get("RANK", "0")) == 0


def start_stage(output_dir: Path, stage: str) -> None:
    """Mark `output_dir` as being written by `stage` (called once the inputs are validated, before training).

    Checks ownership again (`check_output_dir`): another process may have claimed the directory since the recipe began.
    """
    output_dir = Path(output_dir)
    if not _is_main_process():
        return
    check_output_dir(output_dir, stage)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / COMPLETE).unlink(missing_ok=True)  # what is about to be overwritten is no longer a finished run
    marker = {"stage": stage, "started": time.time(), "pid": os.getpid(), "host": socket.gethostname()}
    if os.environ.get(SETTINGS_ENV):
        marker["settings"] = os.environ[SETTINGS_ENV]
    write_json(output_dir / RUNNING, marker)


def finish_stage(output_dir: Path, stage: str) -> None:
    """Mark `output_dir` as a finished `stage`: everything it should hold has been written."""
    output_dir = Path(output_dir)
    if not _is_main_process():
        return
    write_json(output_dir / COMPLETE, {"stage": stage, "finished": time.time()})
    (output_dir / RUNNING).unlink(missing_ok=True)


def require_adapter(path: str | None, stage: str, make_target: str | None) -> Path | None:
    """Check that an earlier stage's adapter exists; `None` means "use the base model".

    `make_target` is the command that writes it (`make sft`); `None` when no default target does.
    """
    if path is None:
        return None
    adapter = Path(path).expanduser()
    how = f"Run `{make_target}` first" if make_target else "Train it first"
    again = f"Run `{make_target}` again" if make_target else "Train it again"
    if not (adapter / CONFIG_NAME).is_file():
        raise MissingStageError(
            f"No {stage} adapter at '{adapter}' (no {CONFIG_NAME}). {how}, or point the setting at a directory "
            "written by that stage."
        )
    if not has_adapter(adapter):
        if (adapter / WEIGHTS_NAME).is_file():
            raise MissingStageError(
                f"The {stage} adapter at '{adapter}' is saved only as the pickle {WEIGHTS_NAME}, which instructrl "
                "does not load (safetensors only). Save it again with "
                f"`save_pretrained(..., safe_serialization=True)`, which writes {SAFETENSORS_WEIGHTS_NAME}."
            )
        raise MissingStageError(
            f"The {stage} adapter at '{adapter}' has {CONFIG_NAME} but no {SAFETENSORS_WEIGHTS_NAME} (a save that "
            f"did not finish?). {again}, or point the setting at a complete adapter directory."
        )
    return adapter


# -- checkpoints ------------------------------------------------------------------------------------------------------
def checkpoint_complete(path: Path) -> bool:
    """A checkpoint is complete once its `trainer_state.json` (the Trainer writes it last) parses and names its step.

    A save killed halfway leaves a directory without it (or with a truncated one), which must not be resumed from.
    """
    match = CHECKPOINT.match(path.name)
    state = read_marker(path / "trainer_state.json")
    return bool(match and state is not None and state.get("global_step") == int(match.group(1)))


def latest_complete_checkpoint(output_dir: Path) -> Path | None:
    """The complete `checkpoint-N` directory with the largest N under `output_dir`, or `None`."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    candidates = [p for p in output_dir.iterdir() if p.is_dir() and CHECKPOINT.match(p.name)]
    for path in sorted(candidates, key=lambda p: int(CHECKPOINT.match(p.name).group(1)), reverse=True):
        if checkpoint_complete(path):
            return path
        logger.warning("Skipping '%s': an incomplete checkpoint (its save was interrupted).", path)
    return None


def resolve_resume(value: str | bool | None, output_dir: Path) -> str | None:
    """Turn `resume_from_checkpoint` into a complete checkpoint directory, or `None` to start fresh.

    `true` means the newest complete checkpoint in `output_dir` (none yet: start fresh). A run directory means its
    newest complete checkpoint; a checkpoint directory must be complete.

    Raises:
        ConfigError: the path does not exist, or holds no complete checkpoint.
    """
    if value is None or value is False or str(value).lower() in ("", "false", "none"):
        return None
    if value is True or str(value).lower() == "true":
        found = latest_complete_checkpoint(output_dir)
        if found is None:
            logger.info("No complete checkpoint in '%s': training starts from the beginning.", output_dir)
        return None if found is None else str(found)
    path = Path(expand_path(str(value)))
    if not path.is_dir():
        raise ConfigError(f"`resume_from_checkpoint` '{value}' is not a directory. Point it at a checkpoint-N folder.")
    if CHECKPOINT.match(path.name):
        if not checkpoint_complete(path):
            raise ConfigError(
                f"Checkpoint '{path}' is incomplete (its save was interrupted: no valid trainer_state.json). Resume "
                f"from an earlier one, or pass the run directory '{path.parent}' to pick the newest complete one."
            )
        return str(path)
    found = latest_complete_checkpoint(path)
    if found is None:
        raise ConfigError(f"`resume_from_checkpoint` '{value}' holds no complete checkpoint-N folder.")
    return str(found)
