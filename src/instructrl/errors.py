"""Errors a user can cause. Each message names what is wrong and how to fix it."""


class InstructRLError(ValueError):
    """Base class for user-facing errors (bad config, bad data, bad path, mismatched tokenizer)."""


class ConfigError(InstructRLError):
    """A YAML or command-line setting is unknown, missing or out of range."""


class DataError(InstructRLError):
    """A dataset cannot be found, or a row lacks a column or holds an unusable value."""


class ModelLoadError(InstructRLError):
    """A model, adapter or tokenizer path is wrong, or a tokenizer does not match its model."""


class MissingStageError(InstructRLError):
    """A stage needs the output of an earlier stage that has not run yet."""


class OutputDirError(InstructRLError):
    """An output directory belongs to another stage, holds files instructrl did not write, or is being written."""


class DivergenceError(InstructRLError):
    """Training produced a non-finite loss or gradient, or moved further from the reference than allowed."""
