"""Load datasets from built-in names, local files or the Hub, and validate their rows before any model loads."""

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import datasets
from datasets import Dataset

from ..errors import DataError
from . import default_data_file

# Built-in data sets: name -> split -> file short name (see `instructrl.data.default_data_file`).
BUILTIN_DATASETS: dict[str, dict[str, str]] = {
    "builtin:demonstrations": {"train": "sft_train", "test": "sft_eval"},
    "builtin:prompts": {
        "comparison": "comparison_prompts",
        "ppo": "ppo_prompts",
        "eval": "eval_prompts",
        "validation": "validation_prompts",
    },
    "builtin:pretraining": {"train": "ptx_train", "test": "ptx_eval"},
}
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
PRECHECK_BYTES = 256 * 2**20


def load_data(name_or_path: str | None, split: str = "train", config: str | None = None) -> Dataset:
    """Load one split of a built-in data set, a local json/jsonl/parquet/csv file, a local directory or a Hub data set.

    A single local file holds one split, `train`, whatever `split` says; pass another file for evaluation.

    Raises:
        DataError: the name is empty, the path does not exist, the format is unknown, or the split is missing.
    """
    if not name_or_path:
        raise DataError(
            f"No dataset given. Set `dataset_name` to a built-in name ({', '.join(BUILTIN_DATASETS)}), a local "
            "json/jsonl/parquet/csv file or directory, or a Hugging Face Hub data set id."
        )
    if name_or_path.startswith("builtin:"):
        splits = BUILTIN_DATASETS.get(name_or_path)
        if splits is None:
            raise DataError(f"Unknown built-in dataset '{name_or_path}'. Known: {', '.join(BUILTIN_DATASETS)}.")
        if split not in splits:
            raise DataError(f"Built-in dataset '{name_or_path}' has no split '{split}'. Splits: {', '.join(splits)}.")
        return _load_local_file(default_data_file(splits[split]))
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return _load_local_file(path)
    if path.is_dir():
        try:
            splits = datasets.load_dataset(str(path), config)
        except Exception as err:  # no data files, mixed formats, a malformed file inside
            raise DataError(
                f"Could not read the data set in directory '{path}': {err}. It needs split files such as "
                "train.jsonl (and test.jsonl), one JSON object per line."
            ) from err
        return _select_split(splits, split, name_or_path)
    if name_or_path.startswith((".", "/", "~")) or path.suffix in LOCAL_FORMATS or name_or_path.count("/") != 1:
        raise DataError(
            f"Dataset '{name_or_path}' is not a file or directory on this machine, nor a Hub id of the form "
            "'org/name'. Fix the path."
        )
    return _select_split(datasets.load_dataset(name_or_path, config), split, name_or_path)


def _load_local_file(path: Path) -> Dataset:
    builder = LOCAL_FORMATS.get(path.suffix)
    if builder is None:
        raise DataError(f"Cannot read '{path}': use one of {', '.join(LOCAL_FORMATS)} files.")
    # Checked first, so that a malformed line is named by its number (datasets names neither line nor cause) and
    # nothing but the one error is printed; very large files are left to datasets' own parser.
    if _blank(path):
        raise DataError(f"'{path}' is empty: it holds no rows. Point the setting at the data file.")
    if builder == "json" and path.stat().st_size <= PRECHECK_BYTES:
        problem = json_problem(path)
        if problem is not None:
            raise DataError(f"'{path}' {problem}. Fix the file (.jsonl files hold one JSON object per line).")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets raises several types for a malformed file
        raise DataError(f"Could not parse '{path}' as {builder}: {err}. Fix the malformed row(s).") from err


def _blank(path: Path) -> bool:
    """Whether the file holds nothing but whitespace (read until the first other byte)."""
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def json_problem(path: Path) -> str | None:
    """Where and how a JSON or JSON-lines file is malformed (`"line 3, column 7: Expecting value"`), else `None`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return f"byte {err.start}: not UTF-8 text (is it a binary file?)"
    if text.lstrip().startswith("["):  # one JSON array of rows
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            return f"line {err.lineno}, column {err.colno}: {err.msg}"
        bad = [i for i, row in enumerate(rows) if not isinstance(row, dict)] if isinstance(rows, list) else [0]
        return f"element {bad[0]}: not a JSON object" if bad else None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            return f"line {number}, column {err.colno}: {err.msg}"
        if not isinstance(row, dict):
            return f"line {number}: a JSON {type(row).__name__}, not an object"
    return None


def _select_split(dataset_dict, split: str, name: str) -> Dataset:
    if split not in dataset_dict:
        raise DataError(f"Dataset '{name}' has no split '{split}'. Splits: {', '.join(dataset_dict)}.")
    return dataset_dict[split]


def require_columns(dataset: Dataset, options: Iterable[Iterable[str]], what: str) -> tuple[str, ...]:
    """Return the first group of columns that the dataset has in full, or raise naming what is missing.

    Args:
        options (`Iterable[Iterable[str]]`):
            Acceptable column groups, e.g. `[("prompt", "completion"), ("messages",)]`.
        what (`str`):
            The dataset's role, used in the error message (e.g. "SFT training data").
    """
    options = [tuple(group) for group in options]
    for group in options:
        if all(column in dataset.column_names for column in group):
            return group
    wanted = " or ".join("(" + ", ".join(group) + ")" for group in options)
    raise DataError(
        f"The {what} has columns {dataset.column_names} but needs {wanted}. Rename the columns or convert the file."
    )


def message_text(value) -> str:
    """The text of a plain string or of a conversational value (a list of {'role', 'content'} messages)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(m.get("content") or "") for m in value if isinstance(m, dict))
    return ""


def check_rows(dataset: Dataset, column: str, check: Callable[[object], str | None], what: str) -> None:
    """Apply `check` to every value of `column`; raise on the first value for which it returns a problem."""
    for index, value in enumerate(dataset[column]):
        problem = check(value)
        if problem is not None:
            raise DataError(f"Row {index} of the {what}, column '{column}': {problem}. Fix or drop that row.")


def non_empty(value) -> str | None:
    if not isinstance(value, str | list):
        return f"expected text or a list of {{'role': ..., 'content': ...}} messages, got {type(value).__name__}"
    if isinstance(value, list) and not all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return "conversational values must be lists of {'role': ..., 'content': ...} messages"
    if not message_text(value).strip():
        return "the text is empty"
    return None


def take(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def load_train_eval(
    script_args, validate: Callable[[Dataset, str], Dataset], what: str
) -> tuple[Dataset, Dataset | None]:
    """Load and validate the training split and, if there is one, the evaluation split."""
    train = take(
        load_data(script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config),
        script_args.max_train_samples,
    )
    validate(train, f"{what} training data ('{script_args.dataset_name}')")
    eval_name = script_args.eval_dataset_name or script_args.dataset_name
    try:
        eval_dataset = load_data(eval_name, script_args.dataset_test_split, script_args.dataset_config)
    except DataError:
        if script_args.eval_dataset_name:  # the user asked for this one explicitly
            raise
        return train, None
    eval_dataset = take(eval_dataset, script_args.max_eval_samples)
    validate(eval_dataset, f"{what} evaluation data ('{eval_name}')")
    return train, eval_dataset
