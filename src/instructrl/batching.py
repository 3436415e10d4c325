"""Padding token sequences into a batch (right: scoring, PPO-ptx, evaluation; left: prompts before generation)."""

from collections.abc import Sequence

import torch


def _pad(sequences: Sequence[Sequence[int]], pad_token_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        columns = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, columns] = torch.tensor(list(seq), dtype=torch.long)
        attention_mask[row, columns] = 1
    return input_ids, attention_mask


def pad_right(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences as one right-padded batch: `(input_ids, attention_mask)`."""
    return _pad(sequences, pad_token_id, left=False)


def pad_left(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token sequences as one left-padded batch, `(input_ids, attention_mask)`: every row ends in the last column,
    where generation (or a response) starts."""
    return _pad(sequences, pad_token_id, left=True)
