"""What PPO's reward is made of besides the reward model's score: the treatment of rollouts cut off at
`response_length` and a correction for the reward model's preference for length.

A small reward model learns "shorter wins" (or "longer wins") from its comparisons without conditioning it on the
instruction (docs/measurements.md, "PPO shortens every answer"), and PPO follows that preference on every prompt. The
length correction measures the preference on the SFT policy's own samples before training, within each prompt so that
instructions asking for long or short answers do not enter it, and takes it back out of every rollout's score:
`score - slope x (tokens - reference_tokens)`. So a rollout gains reward for what it says, not for how many tokens
it spends saying it. It needs no labeler: only the reward model and the SFT policy, as a user has them. The idea of
regressing length out of a preference score follows length-controlled evaluation (Dubois et al. 2024) and the
length analysis of RLHF by Singhal et al. (2023); the code is this project's.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from unittest import mock

import torch
from trl.experimental.ppo import ppo_trainer as trl_ppo

TRUNCATED_REWARDS = ("score", "neutral")
LENGTH_CORRECTIONS = ("none", "sft")

Shaping = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def response_lengths(responses: torch.Tensor, stop_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each response's length in tokens, its stop token included (the full width when it has none), and whether it
    has the stop token (ended) or was cut off at `response_length`."""
    is_stop = responses == stop_token_id
    ended = is_stop.any(dim=-1)
    first = torch.where(ended, is_stop.int().argmax(dim=-1) + 1, responses.shape[-1])
    return first, ended


def neutralize_truncated(scores: torch.Tensor, responses: torch.Tensor, stop_token_id: int) -> torch.Tensor:
    """`scores` with every response that lacks `stop_token_id` (cut off at `response_length`) given the mean score of
    the responses that have it. Unchanged when all or none of them ended; `scores` itself is not modified."""
    _, ended = response_lengths(responses, stop_token_id)
    if ended.all() or not ended.any():
        return scores
    neutral = scores.clone()
    neutral[~ended] = scores[ended].mean()
    return neutral


def within_group_slope(scores: torch.Tensor, lengths: torch.Tensor, groups: torch.Tensor) -> float:
    """Least-squares slope of `scores` on `lengths` within groups (one group per prompt): both are centred on their
    group's mean first, so that a prompt whose answers are long and score low as a whole does not count, only how
    the score moves with length among the answers to the same prompt. 0 when no group has two different lengths."""
    return within_group_fit(scores, lengths, groups)[0]


def within_group_fit(scores: torch.Tensor, lengths: torch.Tensor, groups: torch.Tensor) -> tuple[float, float]:
    """`within_group_slope` and the half-width of its 95% interval (normal approximation, the residual variance
    counted with one degree of freedom per group taken by its mean); the interval is infinite when the residuals
    leave no degree of freedom, and (0, inf) when no group has two different lengths."""
    scores, lengths = scores.double(), lengths.double()
    centred_scores, centred_lengths = scores.clone(), lengths.clone()
    present = groups.unique()
    for group in present:
        rows = groups == group
        centred_scores[rows] -= scores[rows].mean()
        centred_lengths[rows] -= lengths[rows].mean()
    spread = (centred_lengths**2).sum()
    if spread == 0:
        return 0.0, math.inf
    slope = (centred_lengths * centred_scores).sum() / spread
    freedom = len(scores) - len(present) - 1
    if freedom <= 0:
        return float(slope), math.inf
    residual_variance = ((centred_scores - slope * centred_lengths) ** 2).sum() / freedom
    return float(slope), float(1.96 * (residual_variance / spread).sqrt())


@dataclass(frozen=True)
class LengthCorrection:
    """`score - slope x (tokens - reference_tokens)` for rollouts that ended; cut-off ones keep their score (their
    treatment is `truncated_reward`'s and `missing_eos_penalty`'s).

    `slope` is the reward model's score per token within a prompt (`ci95` the half-width of its 95% interval),
    `reference_tokens` the mean length of the finished SFT samples it was fitted on, `samples`/`finished` how many
    samples were drawn and how many ended.
    """

    slope: float
    reference_tokens: float
    samples: int
    finished: int
    ci95: float = math.inf

    @classmethod
    def fit(
        cls, scores: torch.Tensor, responses: torch.Tensor, stop_token_id: int, samples_per_prompt: int
    ) -> "LengthCorrection":
        """Fit on `samples_per_prompt` consecutive rows per prompt (`scores` the reward model's, `responses` the
        sampled token ids). Only responses that ended count: a cut-off one is scored on text the policy had not
        finished, and its score says more about being cut off than about length."""
        lengths, ended = response_lengths(responses, stop_token_id)
        groups = torch.arange(len(scores), device=scores.device) // samples_per_prompt
        if not ended.any():
            return cls(0.0, float(responses.shape[-1]), len(scores), 0)
        slope, ci95 = within_group_fit(scores[ended].float(), lengths[ended], groups[ended])
        return cls(slope, float(lengths[ended].double().mean()), len(scores), int(ended.sum()), ci95)

    def apply(self, scores: torch.Tensor, responses: torch.Tensor, stop_token_id: int) -> torch.Tensor:
        """`scores` corrected for length (a new tensor; `scores` itself is not modified)."""
        lengths, ended = response_lengths(responses, stop_token_id)
        correction = self.slope * (lengths.to(scores.dtype) - self.reference_tokens)
        return torch.where(ended, scores - correction, scores)

    def to_dict(self) -> dict:
        """As written to `ppo_summary.json`: an interval that does not exist is `null`, not JSON's missing Infinity."""
        fields = asdict(self)
        if math.isinf(fields["ci95"]):
            fields["ci95"] = None
        return fields


@contextmanager
def shaped_rewards(reward_model: torch.nn.Module, shape: Shaping) -> Iterator[None]:
    """Within this block every score TRL's PPO loop reads from `reward_model` passes through `shape(scores,
    responses)` (responses: the token ids after the prompt, padded after the stop token). Only calls that score with
    `reward_model` change (not the value model's). Restored on exit."""
    original = trl_ppo.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        logits, scores, lengths = original(model, query_responses, pad_token_id, context_length)
        if model is reward_model:
            scores = shape(scores, query_responses[:, context_length:])
        return logits, scores, lengths

    with mock.patch.object(trl_ppo, "get_reward", get_reward):
        yield
