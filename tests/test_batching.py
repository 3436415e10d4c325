"""Padding token sequences into batches: right for scoring, left for prompts that generation continues."""

import torch

from instructrl.batching import pad_left, pad_right


def test_pad_right_keeps_each_sequence_at_the_start():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_pad_left_ends_every_sequence_in_the_last_column():
    ids, mask = pad_left([[5, 6, 7], [8], [9, 10]], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]
    assert ids.dtype == mask.dtype == torch.long
