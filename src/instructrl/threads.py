"""CPU threads handed to a running stage: `make pipeline JOBS=2` gives a stage the cores its sibling no longer needs.

Two stages side by side (PPO-ptx and plain PPO) start with half the cores each. When one finishes, the pipeline
writes the other's new share into the file named by `INSTRUCTRL_THREADS_FILE`, and the stage's trainer picks it up at
its next step (`torch.set_num_threads` in the training loop's thread: OpenMP's thread count belongs to the thread that
sets it). Without that, the stage left alone would run its remaining updates on one core of two.

Outside the pipeline the variable is unset and nothing here does anything.
"""

import os
from pathlib import Path

from transformers import TrainerCallback

from .runs import write_text_atomic

THREADS_FILE_ENV = "INSTRUCTRL_THREADS_FILE"


def write_share(path: Path, threads: int) -> None:
    """Tell a stage to use `threads` CPU threads from its next step (atomically: never half-read)."""
    write_text_atomic(path, str(threads))


def read_share(path: Path) -> int | None:
    """The thread count written for this stage, or None when there is none (or it is not a positive number)."""
    try:
        threads = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return threads if threads > 0 else None


class ThreadShare(TrainerCallback):
    """Set torch's CPU thread count to the pipeline's share for this stage after every training step."""

    def __init__(self, path: str | os.PathLike | None = None):
        path = path if path is not None else os.environ.get(THREADS_FILE_ENV)
        self.path = Path(path) if path else None

    def apply(self) -> int | None:
        """Apply the current share if it differs from torch's thread count; return the count set, else None."""
        import torch

        threads = read_share(self.path) if self.path is not None else None
        if threads is None or threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        print(f"[instructrl] CPU threads now {threads} (cores handed over by the pipeline)", flush=True)
        return threads

    def on_step_end(self, args, state, control, **kwargs):
        self.apply()
