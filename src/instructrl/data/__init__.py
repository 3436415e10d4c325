"""Default data shipped with the package; see `default/README.md` for what each file holds and how it was made."""

from pathlib import Path

DEFAULT_DATA_DIR = Path(__file__).resolve().parent / "default"

DEFAULT_DATA_FILES = {
    "sft_train": "sft_train.jsonl",
    "sft_eval": "sft_eval.jsonl",
    "comparison_prompts": "comparison_prompts.jsonl",
    "ppo_prompts": "ppo_prompts.jsonl",
    "eval_prompts": "eval_prompts.jsonl",
    "validation_prompts": "validation_prompts.jsonl",
    "ptx_train": "ptx_train.jsonl",
    "ptx_eval": "ptx_eval.jsonl",
}


def default_data_file(name: str) -> Path:
    """Path of a shipped default data file.

    Args:
        name (`str`):
            Short name of the file, one of the keys of `DEFAULT_DATA_FILES` (e.g. `"sft_train"`, `"ppo_prompts"`).

    Raises:
        `ValueError`: if `name` is not a known short name.
    """
    if name not in DEFAULT_DATA_FILES:
        raise ValueError(f"Unknown default data file {name!r}; valid names are {sorted(DEFAULT_DATA_FILES)}.")
    return DEFAULT_DATA_DIR / DEFAULT_DATA_FILES[name]
