"""Supervised fine-tuning data: load demonstrations and check every row before a model is loaded."""

from datasets import Dataset

from .configs import ScriptArguments
from .data.loading import check_rows, load_train_eval, non_empty, require_columns
from .errors import DataError

# Formats SFTTrainer understands: prompt/completion (loss on the completion only), chat messages, or plain text.
SFT_COLUMN_OPTIONS = (("prompt", "completion"), ("messages",), ("text",))


def validate_sft_dataset(dataset: Dataset, what: str) -> Dataset:
    """Raise `DataError` on a missing column, an empty prompt or response, or a malformed message list."""
    if len(dataset) == 0:
        raise DataError(f"The {what} is empty.")
    columns = require_columns(dataset, SFT_COLUMN_OPTIONS, what)
    for column in columns:
        check_rows(dataset, column, non_empty, what)
    return dataset


def load_sft_datasets(script_args: ScriptArguments) -> tuple[Dataset, Dataset | None]:
    return load_train_eval(script_args, validate_sft_dataset, "SFT")
