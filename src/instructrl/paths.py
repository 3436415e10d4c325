"""Where instructrl keeps things outside the repository: converted models and stage outputs."""

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root of instructrl's cache (converted models). Override with `INSTRUCTRL_CACHE`."""
    root = os.environ.get("INSTRUCTRL_CACHE") or Path.home() / ".cache" / "instructrl"
    return Path(root).expanduser()
