"""Supervised fine-tuning data: load demonstrations and check every row before a model is loaded."""

from datasets import Dataset

from .configs import ScriptArguments
from .data.loading import check_rows, load_data, non_empty, require_columns
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


def take(dataset: Dataset, limit: int | None) -> Dataset:
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def load_train_eval(script_args: ScriptArguments, validate, what: str) -> tuple[Dataset, Dataset | None]:
    """Load and validate the training split and, if there is one, the evaluation split."""
    train = take(load_data(script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_config),
                 script_args.max_train_samples)
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


def load_sft_datasets(script_args: ScriptArguments) -> tuple[Dataset, Dataset | None]:
    return load_train_eval(script_args, validate_sft_dataset, "SFT")
