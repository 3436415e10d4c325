"""The gold reward beside the proxy: labeler scores of PPO rollouts, their logging, trends and the Gao et al. plot."""

import json
import math

import pytest
import torch

from instructrl.data.rows import encode_prompt, encode_response
from instructrl.gold import GoldScorer
from instructrl.labeler import SimulatedLabeler
from instructrl.report import gold_proxy_curves, plot_gold_vs_proxy
from instructrl.stats import linear_trend
from test_ppo import adapters, ppo_config, run  # noqa: F401  (the `adapters` fixture)

PROMPTS = ["Describe tea in fewer than ten words.", [{"role": "user", "content": "Explain rain in two sentences."}]]


class Recorder:
    name = "recorder"

    def __init__(self):
        self.calls = []

    def score(self, prompt: str, response: str) -> float:
        self.calls.append((prompt, response))
        return float(len(response.split()))


def rollout_rows(tokenizer, pairs, pad_as=0) -> torch.Tensor:
    """Left-padded prompts + right-padded responses, as TRL's `get_reward` hands them to the reward backbone."""
    prompts = [encode_prompt(tokenizer, p) for p, _ in pairs]
    responses = [encode_response(tokenizer, r) for _, r in pairs]
    context, length = max(map(len, prompts)), max(map(len, responses)) + 2
    rows = [
        [pad_as] * (context - len(p)) + p + r + [pad_as] * (length - len(r))
        for p, r in zip(prompts, responses, strict=True)
    ]
    return torch.tensor(rows)


def test_gold_scorer_splits_rows_by_prompt_ids_and_scores_the_response(tokenizer):
    labeler = Recorder()
    scorer = GoldScorer(labeler, tokenizer, PROMPTS)
    rows = rollout_rows(tokenizer, [(PROMPTS[1], "Water falls. Clouds drop it."), (PROMPTS[0], "Hot leaf water.")])
    scorer.record(rows[:1])
    scorer.record(rows[1:])
    assert scorer.pop_scores() == [5.0, 3.0]
    assert labeler.calls == [
        ("Explain rain in two sentences.", "Water falls. Clouds drop it."),
        ("Describe tea in fewer than ten words.", "Hot leaf water."),
    ]
    assert scorer.pop_scores() == []  # each update's rollouts are scored once
    unknown = rollout_rows(tokenizer, [("A prompt PPO never saw.", "Anything.")])
    scorer.record(unknown)
    assert scorer.pop_scores() == []
    scorer.recording = False
    scorer.record(rows)
    assert scorer.pop_scores() == []


def test_gold_scores_match_the_labeler_on_the_same_text(tokenizer):
    labeler = SimulatedLabeler()
    scorer = GoldScorer(labeler, tokenizer, PROMPTS)
    response = "Tea is a warm drink made from leaves."
    scorer.record(rollout_rows(tokenizer, [(PROMPTS[0], response)], pad_as=tokenizer.pad_token_id))
    assert scorer.pop_scores() == [pytest.approx(labeler.score(PROMPTS[0], response))]


@pytest.mark.parametrize("gold", [None, "simulated"], ids=["no-labeler", "simulated"])
def test_ppo_logs_the_gold_score_only_with_a_labeler(tmp_path, tiny_model_dir, adapters, gold):  # noqa: F811
    sft, rm = adapters
    overrides = {"total_episodes": 8, "save_strategy": "no", "ptx_coef": 0.0}
    if gold:
        overrides["gold_labeler"] = gold
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, **overrides))
    updates = [log for log in trainer.state.log_history if "objective/scores" in log]
    assert len(updates) == 2
    batch = trainer.args.local_batch_size
    assert [log["rollouts/truncated_share"] for log in updates] == [
        pytest.approx(1 - log["val/num_eos_tokens"] / batch) for log in updates
    ]
    summary = json.loads((tmp_path / "ppo" / "ppo_summary.json").read_text())
    trend = summary["objective/scores"]["slope_per_1000_episodes"]
    assert trend["n"] == 2 and math.isnan(trend["slope"])  # two points: no interval
    if gold is None:
        assert all("gold/labeler_score" not in log for log in trainer.state.log_history)
        assert "gold/labeler_score" not in summary
        return
    for log in updates:
        assert 0.0 <= log["gold/labeler_score"] <= 1.0
    # Held-out scoring happens after training and is not a rollout: it logs no gold score.
    assert all("gold/labeler_score" not in log for log in trainer.state.log_history if "heldout/rm_score" in log)
    assert summary["gold/labeler_score"]["first_quarter_mean"] == updates[0]["gold/labeler_score"]


def test_ppo_refuses_an_unknown_gold_labeler_before_loading(tmp_path, tiny_model_dir, adapters):  # noqa: F811
    sft, rm = adapters
    with pytest.raises(ValueError, match="Unknown labeler 'typo'"):
        run(ppo_config(tmp_path, tiny_model_dir, sft, rm, gold_labeler="typo"))
    assert not (tmp_path / "ppo").exists()


def test_linear_trend_by_hand():
    exact = linear_trend([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert exact["slope"] == pytest.approx(2.0) and exact["ci95"] == pytest.approx(0.0)
    noisy = linear_trend([0, 1, 2, 3, 4], [0.0, 1.0, 0.0, 1.0, 3.0])
    # slope = Sxy / Sxx = 6 / 10; residual variance = 2.4 / 3; se = sqrt(0.8 / 10)
    assert noisy["slope"] == pytest.approx(0.6)
    assert noisy["ci95"] == pytest.approx(1.96 * math.sqrt(0.08))
    assert math.isnan(linear_trend([1, 1, 1], [0, 1, 2])["slope"])
    with pytest.raises(ValueError, match="paired"):
        linear_trend([1, 2], [1])


def test_gold_proxy_curves_standardize_over_all_runs_and_use_sqrt_kl():
    ppo = [{"objective/kl": k, "objective/scores": s, "gold/labeler_score": g} for k, s, g in
           [(0.0, 0.0, 0.5), (1.0, 1.0, 0.7), (4.0, 2.0, 0.6)]]  # fmt: skip
    mine = [{"objective/kl": 9.0, "objective/scores": 3.0}, {"objective/kl": -0.5, "objective/scores": 2.0}]
    curves = gold_proxy_curves({"ppo": ppo, "mine": mine}, per_bin=1)
    # proxy over both runs: 0, 1, 2, 3, 2 -> mean 1.6, sample std sqrt(1.3)
    std = math.sqrt(1.3)
    assert curves["ppo"]["proxy"] == pytest.approx([(v - 1.6) / std for v in (0, 1, 2)])
    assert curves["ppo"]["sqrt_kl_proxy"] == pytest.approx([0.0, 1.0, 2.0])
    assert curves["mine"]["sqrt_kl_proxy"] == pytest.approx([3.0, 0.0])  # negative KL estimates clip at 0
    assert curves["ppo"]["gold"] == pytest.approx([-1.0, 1.0, 0.0])  # mean 0.6, std 0.1
    assert "gold" not in curves["mine"]  # no labeler: no gold curve
    # The binned curve reads along the KL axis: updates taken in order of KL, not of time.
    assert curves["mine"]["binned_sqrt_kl_proxy"] == pytest.approx([0.0, 3.0])
    assert curves["mine"]["binned_proxy"] == pytest.approx([(2 - 1.6) / std, (3 - 1.6) / std])
    binned = gold_proxy_curves({"ppo": ppo}, per_bin=2)["ppo"]
    assert binned["binned_sqrt_kl_gold"] == pytest.approx([0.5, 2.0])  # (0 + 1) / 2, then the remainder alone
    assert binned["binned_gold"] == pytest.approx([0.0, 0.0])  # (-1 + 1) / 2; 0
    assert binned["gold"] == pytest.approx([-1.0, 1.0, 0.0])  # the per-update points stay as they are
    with pytest.raises(ValueError, match="per_bin"):
        gold_proxy_curves({"ppo": ppo}, per_bin=0)
    assert gold_proxy_curves({"ppo": [{"objective/kl": 1.0}]}) == {}


def test_gold_vs_proxy_plot_is_drawn_with_or_without_gold(tmp_path):
    with_gold = [
        {"objective/kl": k / 4, "objective/scores": k / 10, "gold/labeler_score": 0.5 + k / 100} for k in range(12)
    ]
    without = [{"objective/kl": k / 4, "objective/scores": -k / 10} for k in range(12)]
    path = plot_gold_vs_proxy({"ppo": with_gold, "mine": without}, tmp_path / "gold_vs_proxy.png")
    assert path == tmp_path / "gold_vs_proxy.png" and path.stat().st_size > 1000
    assert plot_gold_vs_proxy({"ppo": [{"objective/kl": 1.0}]}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
