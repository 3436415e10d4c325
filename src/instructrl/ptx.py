"""PPO-ptx: the pretraining-mix loss InstructGPT adds to PPO (gamma * E_pretrain[log pi_RL(x)]).

`ptx_loss` is the pure loss term; `PretrainingStream` serves tokenized pretraining sequences forever, in seeded
shuffled passes. The trainer wiring (which micro-batch, chunking, gradient accumulation) lives in `instructrl.ppo`.
"""

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from .batching import pad_right
from .errors import DataError


def ptx_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_tokens: int | None = None
) -> torch.Tensor:
    """The pretraining LM loss: next-token negative log-likelihood of `input_ids`, averaged over real tokens.

    PPO-ptx adds gamma (`ptx_coef`) times this to the PPO loss; the trainer applies gamma, so this value is also
    what it logs as `ptx/lm_loss`.

    Args:
        logits (`torch.Tensor`): `[B, T, V]` policy logits for `input_ids`.
        input_ids (`torch.Tensor`): `[B, T]` pretraining tokens.
        attention_mask (`torch.Tensor`): `[B, T]`, 1 for real tokens.
        num_tokens (`int`, *optional*): divide by this many predicted tokens instead of this chunk's own count, so
            that chunks of one pretraining batch add up to the loss of the whole batch.
    """
    targets = input_ids[:, 1:]
    mask = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()
    nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
    nll = nll.view_as(targets) * mask
    denominator = num_tokens if num_tokens is not None else max(int(mask.sum()), 1)
    return nll.sum() / denominator


def predicted_tokens(attention_mask: torch.Tensor) -> int:
    """Number of positions `ptx_loss` supervises in a batch."""
    return int((attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()).sum())


class PretrainingStream:
    """Endless source of pretraining batches: tokenized, truncated to `max_length`, reshuffled every pass."""

    def __init__(
        self, dataset: Dataset, tokenizer: PreTrainedTokenizerBase, text_field: str, max_length: int, seed: int = 0
    ):
        if text_field not in dataset.column_names:
            raise DataError(
                f"The PPO-ptx pretraining data has columns {dataset.column_names} but no '{text_field}' column. Set "
                "`ptx_text_field` to the column holding the text."
            )
        texts = [t for t in dataset[text_field] if isinstance(t, str) and t.strip()]
        if not texts:
            raise DataError(f"The PPO-ptx pretraining data has no non-empty '{text_field}' values.")
        encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]
        self.sequences = [ids for ids in encoded if len(ids) >= 2]
        self.pad_token_id = tokenizer.pad_token_id
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Start a fresh shuffled pass drawn with `seed` (each process of a distributed run uses its own)."""
        self.generator = torch.Generator().manual_seed(seed)
        self._order: Iterator[int] = iter(())

    def _next_index(self) -> int:
        try:
            return next(self._order)
        except StopIteration:
            self._order = iter(torch.randperm(len(self.sequences), generator=self.generator).tolist())
            return next(self._order)

    def skip(self, count: int) -> None:
        """Pass over the next `count` sequences, as if they had been drawn (resuming an interrupted run)."""
        for _ in range(count):
            self._next_index()

    def next_batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`size` sequences, right-padded: `(input_ids, attention_mask)`."""
        return pad_right([self.sequences[self._next_index()] for _ in range(size)], self.pad_token_id)
