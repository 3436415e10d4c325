"""The one entry wrapper of every recipe: the project's errors become one line on stderr and a non-zero exit.

    if __name__ == "__main__":
        run_recipe(main, (ScriptArguments, SFTConfig, ModelConfig))

Two switches work with every recipe, on the command line or in the environment:

- `--debug` (`INSTRUCTRL_DEBUG=1`): show the traceback of an error too;
- `--overwrite` (`INSTRUCTRL_OVERWRITE=1`): write into an output directory that holds another stage's results or
  files instructrl did not write (see `instructrl.runs.check_output_dir`).

Errors that are not the user's (a bug, an out-of-memory) keep their traceback: they are for a bug report.
"""

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .configs import parse_args
from .errors import InstructRLError
from .runs import OVERWRITE_ENV

DEBUG_ENV = "INSTRUCTRL_DEBUG"
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _pop_flag(argv: list[str], flag: str) -> bool:
    found = flag in argv
    while flag in argv:
        argv.remove(flag)
    return found


def one_line(err: BaseException) -> str:
    """The error's message on one line (YAML and datasets messages can span several)."""
    return " ".join(str(err).split())


def run_entry(entry: Callable[[list[str]], Any], argv: Sequence[str] | None = None, prog: str = "instructrl") -> Any:
    """Call `entry(argv)` with `--debug`/`--overwrite` taken out; turn `InstructRLError` into one line and exit 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _pop_flag(argv, "--debug") or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    if _pop_flag(argv, "--overwrite"):
        os.environ[OVERWRITE_ENV] = "1"
    try:
        return entry(argv)
    except InstructRLError as err:
        if debug:
            raise
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        if debug:
            raise
        print(
            f"{prog}: interrupted; the stage stays marked as interrupted and starts over when run again.",
            file=sys.stderr,
            flush=True,
        )
        sys.exit(EXIT_INTERRUPTED)


def run_recipe(main: Callable[..., Any], dataclass_types: tuple[type, ...], argv: Sequence[str] | None = None) -> Any:
    """Parse `--config x.yaml` plus overrides into `dataclass_types` and call `main` with them, through `run_entry`."""
    return run_entry(lambda args: main(*parse_args(dataclass_types, args)), argv)
