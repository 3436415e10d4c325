"""Reward shaping in PPO: cut-off rollouts and the length correction, on hand-made tensors."""

import math

import pytest
import torch
from trl.experimental.ppo import ppo_trainer as trl_ppo

from instructrl.reward_shaping import (
    LengthCorrection,
    neutralize_truncated,
    response_lengths,
    shaped_rewards,
    within_group_fit,
    within_group_slope,
)


def test_response_lengths_count_through_the_stop_token():
    responses = torch.tensor([[1, 7, 0, 0], [1, 2, 3, 4], [7, 0, 0, 0], [5, 5, 5, 7]])
    lengths, ended = response_lengths(responses, stop_token_id=7)
    assert lengths.tolist() == [2, 4, 1, 4]
    assert ended.tolist() == [True, False, True, True]


def test_neutralize_truncated_gives_cut_off_rollouts_the_finished_ones_mean():
    stop = 7
    responses = torch.tensor([[1, 7, 0], [1, 2, 3], [5, 5, 7], [4, 4, 4]])  # rows 1 and 3 never reach the stop token
    scores = torch.tensor([1.0, -5.0, 3.0, -9.0])
    neutral = neutralize_truncated(scores, responses, stop)
    assert neutral.tolist() == [1.0, 2.0, 3.0, 2.0]
    assert scores.tolist() == [1.0, -5.0, 3.0, -9.0]  # the input is not modified
    ended = torch.tensor([[7, 0, 0], [1, 7, 0]])
    assert neutralize_truncated(scores[:2], ended, stop).tolist() == [1.0, -5.0]  # all ended: unchanged
    assert neutralize_truncated(scores[:2], responses[[1, 3]], stop).tolist() == [1.0, -5.0]  # none ended


def test_shaped_rewards_changes_only_the_reward_models_calls(monkeypatch):
    """TRL's `get_reward` is patched inside the block for the reward model alone (not the value model), restored
    after."""
    calls = []

    def fake_get_reward(model, query_responses, pad_token_id, context_length):
        calls.append(model)
        return None, torch.tensor([4.0, 0.0]), None

    monkeypatch.setattr(trl_ppo, "get_reward", fake_get_reward)
    reward_model, value_model = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    query_responses = torch.tensor([[9, 1, 2], [9, 3, 3]])  # context 1; only the first response ends (stop 2)
    with shaped_rewards(reward_model, lambda scores, responses: neutralize_truncated(scores, responses, 2)):
        assert trl_ppo.get_reward(reward_model, query_responses, 0, 1)[1].tolist() == [4.0, 4.0]
        assert trl_ppo.get_reward(value_model, query_responses, 0, 1)[1].tolist() == [4.0, 0.0]
    assert trl_ppo.get_reward is fake_get_reward and calls == [reward_model, value_model]


def test_within_group_slope_ignores_differences_between_prompts():
    """Prompt 0's answers are long and score low, prompt 1's short and high: pooled, score falls with length; within
    each prompt it rises by 0.1 per token, and that is the slope."""
    lengths = torch.tensor([40, 50, 10, 20])
    scores = torch.tensor([-1.0, 0.0, 2.0, 3.0])
    groups = torch.tensor([0, 0, 1, 1])
    assert within_group_slope(scores, lengths, groups) == pytest.approx(0.1)
    assert within_group_slope(scores, lengths, torch.zeros(4, dtype=torch.long)) < 0  # pooled: the other sign
    same = torch.tensor([30, 30, 10, 10])
    assert within_group_slope(scores, same, groups) == 0.0  # no spread within any prompt


def test_within_group_fit_interval_is_the_dummy_variable_regressions():
    """The slope's 95% half-width equals 1.96 standard errors of the length coefficient in an ordinary least-squares
    regression of score on length plus one intercept per prompt (solved here independently with lstsq)."""
    generator = torch.Generator().manual_seed(0)
    groups = torch.arange(8).repeat_interleave(4)
    lengths = torch.randint(5, 40, (32,), generator=generator)
    scores = -0.03 * lengths + groups * 0.5 + 0.2 * torch.randn(32, generator=generator, dtype=torch.float64)
    slope, half_width = within_group_fit(scores, lengths, groups)

    design = torch.cat((lengths.double()[:, None], torch.nn.functional.one_hot(groups).double()), dim=1)
    coefficients = torch.linalg.lstsq(design, scores[:, None]).solution[:, 0]
    residuals = scores - design @ coefficients
    variance = (residuals**2).sum() / (32 - design.shape[1])
    standard_error = (variance * torch.linalg.inv(design.T @ design)[0, 0]).sqrt()
    assert slope == pytest.approx(coefficients[0].item())
    assert half_width == pytest.approx(1.96 * standard_error.item())
    assert 0 < half_width < 0.03  # 32 samples pin the slope of -0.03 down to its sign

    assert within_group_fit(scores[:2], lengths[:2], groups[:2])[1] == math.inf  # one prompt, two samples: no freedom
    assert within_group_fit(scores[:4], torch.full((4,), 7), groups[:4]) == (0.0, math.inf)


def test_length_correction_fits_on_finished_samples_and_corrects_only_finished_rollouts():
    stop = 9
    # Two prompts x 3 samples; the last sample of prompt 1 is cut off (no stop token) with a very low score.
    responses = torch.tensor(
        [
            [1, 9, 0, 0, 0],  # 2 tokens
            [1, 1, 1, 9, 0],  # 4
            [1, 1, 9, 0, 0],  # 3
            [1, 1, 9, 0, 0],  # 3
            [1, 1, 1, 1, 9],  # 5
            [1, 1, 1, 1, 1],  # cut off at 5
        ]
    )
    scores = torch.tensor([1.0, 0.6, 0.8, 0.0, -0.4, -5.0])
    original = scores.clone()
    correction = LengthCorrection.fit(scores, responses, stop, samples_per_prompt=3)
    assert correction.slope == pytest.approx(-0.2)  # 0.2 lower per token within each prompt
    assert correction.reference_tokens == pytest.approx(17 / 5)
    assert (correction.samples, correction.finished) == (6, 5)
    assert correction.ci95 == pytest.approx(0.0, abs=1e-6)  # the scores lie on the fitted lines exactly

    corrected = correction.apply(scores, responses, stop)
    expected = [s + 0.2 * (n - 17 / 5) for s, n in zip([1.0, 0.6, 0.8, 0.0, -0.4], [2, 4, 3, 3, 5], strict=True)]
    assert corrected[:5].tolist() == pytest.approx(expected)
    assert corrected[5].item() == -5.0  # cut off: its treatment is truncated_reward's
    assert torch.equal(scores, original)  # the input is not modified
    # Within each prompt the corrected scores no longer move with length.
    assert within_group_slope(corrected[:5], torch.tensor([2, 4, 3, 3, 5]), torch.tensor([0, 0, 0, 1, 1])) == (
        pytest.approx(0.0, abs=1e-6)
    )


def test_length_correction_without_a_finished_sample_changes_nothing():
    responses = torch.ones(4, 3, dtype=torch.long)
    correction = LengthCorrection.fit(torch.tensor([1.0, 2.0, 3.0, 4.0]), responses, 9, samples_per_prompt=2)
    assert correction.slope == 0.0 and correction.finished == 0
    assert correction.to_dict()["ci95"] is None  # no interval: JSON null
