"""The gold reward beside the proxy: a labeler scores every PPO rollout that the reward model scores.

Gao et al. (2022) study reward over-optimization by scoring the policy's samples with both the proxy (the learned
reward model) and a "gold" reward, and plotting both against sqrt(KL to the initial policy): the proxy keeps rising
while the gold reward peaks and falls. The simulated labeler is this project's gold reward, so PPO can draw the same
picture at no extra model cost (the labeler is a pure function of prompt and response text).

TRL's PPO loop offers no hook between scoring and logging. What it does call is the reward model's backbone, with
each rollout chunk's prompt (left-padded) followed by the truncated response, so `GoldScorer.tap` wraps that backbone
and records its `input_ids`; the trainer scores the recorded rollouts with the labeler when it logs the update.
Prompts are recovered by their token ids (the prompts PPO trains on are known), not by parsing the chat template.
"""

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from .data.loading import message_text
from .data.rows import encode_prompt
from .labeler import Labeler


class RecordingBackbone(nn.Module):
    """A reward model's backbone that hands every batch of `input_ids` it scores to `record` first."""

    def __init__(self, backbone: nn.Module, scorer: "GoldScorer"):
        super().__init__()
        self.backbone = backbone
        self.scorer = scorer

    def forward(self, input_ids: torch.Tensor, **kwargs):
        self.scorer.record(input_ids)
        return self.backbone(input_ids=input_ids, **kwargs)


class GoldScorer:
    """Scores the rollouts the reward model saw with a labeler.

    Args:
        labeler (`Labeler`):
            The gold reward (e.g. `SimulatedLabeler`).
        tokenizer (`PreTrainedTokenizerBase`):
            The policy's tokenizer (prompts are encoded as PPO encodes them).
        prompts (`Sequence`):
            Every prompt PPO may sample (text or chat messages); a rollout whose prompt is not among them is skipped.
    """

    def __init__(self, labeler: Labeler, tokenizer: PreTrainedTokenizerBase, prompts: Sequence):
        self.labeler = labeler
        self.tokenizer = tokenizer
        self.prompt_by_ids = {tuple(encode_prompt(tokenizer, p)): message_text(p) for p in prompts}
        self.lengths = sorted({len(ids) for ids in self.prompt_by_ids}, reverse=True)
        self.recording = True
        self._pending: list[torch.Tensor] = []

    def tap(self, reward_model: nn.Module) -> nn.Module:
        """Wrap `reward_model`'s backbone (TRL's `base_model_prefix` attribute) so its inputs are recorded."""
        prefix = reward_model.base_model_prefix
        setattr(reward_model, prefix, RecordingBackbone(getattr(reward_model, prefix), self))
        return reward_model

    def record(self, input_ids: torch.Tensor) -> None:
        if self.recording:
            self._pending.append(input_ids.detach().cpu())

    def split(self, row: list[int]) -> tuple[str, list[int]] | None:
        """(prompt text, response ids) of one `prompt + response` row as PPO scores it, or `None` if unknown.

        The prompt is left-padded (TRL's `get_reward` writes 0 over pads) and the response ends at the first pad.
        """
        pads = {0, self.tokenizer.pad_token_id}
        start = 0
        while start < len(row) and row[start] in pads:
            start += 1
        for length in self.lengths:
            prompt = self.prompt_by_ids.get(tuple(row[start : start + length]))
            if prompt is not None:
                response = row[start + length :]
                end = next((i for i, t in enumerate(response) if t in pads), len(response))
                return prompt, response[:end]
        return None

    def pop_scores(self) -> list[float]:
        """Labeler scores of every rollout recorded since the last call (special tokens dropped, as in collection)."""
        rows = [row for batch in self._pending for row in batch.tolist()]
        self._pending.clear()
        scores = []
        for row in rows:
            found = self.split(row)
            if found is not None:
                prompt, response = found
                text = self.tokenizer.decode(response, skip_special_tokens=True).strip()
                scores.append(float(self.labeler.score(prompt, text)))
        return scores
