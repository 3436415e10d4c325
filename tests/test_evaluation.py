"""Evaluation metrics on hand-made inputs with known answers, and the eval recipe end to end on the tiny model."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from helpers import load_recipe, write_config, write_jsonl
from instructrl import evaluation
from instructrl.configs import EvalConfig, parse_args
from instructrl.data.rows import encode_prompt, encode_response
from instructrl.errors import ConfigError, MissingStageError
from instructrl.evaluation import (
    criterion_changes,
    criterion_means,
    distinct_n,
    heldout_nll,
    mean_response_tokens,
    mean_reward_per_prompt,
    parse_policies,
    perplexity,
    sequence_logprobs,
    win_rates_by_kind,
)
from instructrl.labeler import SimulatedLabeler
from instructrl.report import (
    criteria_rows,
    describe_length_correction,
    goal_rows,
    instruction_rows,
    length_preference_line,
    smooth,
    write_report,
)
from instructrl.stats import mean_ci, prompt_mean_ci, win_rate
from ppo_fixtures import make_adapters

eval_recipe = load_recipe("eval")


class FixedDistribution(nn.Module):
    """A "language model" that predicts the same next-token distribution everywhere."""

    def __init__(self, probs: list[float]):
        super().__init__()
        self.log_probs = nn.Parameter(torch.tensor(probs).log())

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return SimpleNamespace(logits=self.log_probs.expand(*input_ids.shape, -1))


def test_mean_ci_matches_hand_computation():
    stats = mean_ci([1.0, 2.0, 3.0])
    assert stats["mean"] == pytest.approx(2.0)
    assert stats["ci95"] == pytest.approx(1.96 * 1.0 / math.sqrt(3))  # sample sd of 1, 2, 3 is 1
    assert math.isnan(mean_ci([5.0])["ci95"]) and mean_ci([])["n"] == 0


def test_win_rate_counts_ties_as_half():
    result = win_rate([3.0, 1.0, 2.0, 2.0], [1.0, 2.0, 2.0, 0.0])  # win, loss, tie, win
    assert (result["wins"], result["losses"], result["ties"]) == (2, 1, 1)
    assert result["rate"] == pytest.approx(2.5 / 4)
    outcomes = [1.0, 0.0, 0.5, 1.0]
    sd = math.sqrt(sum((o - 0.625) ** 2 for o in outcomes) / 3)
    assert result["ci95"] == pytest.approx(1.96 * sd / 2)
    assert win_rate([0.3, 0.7], [0.3, 0.7])["rate"] == 0.5  # a policy against itself
    with pytest.raises(ValueError, match="paired"):
        win_rate([1.0], [1.0, 2.0])


def test_win_rate_with_several_samples_per_prompt_compares_every_cross_pair():
    # Two prompts, two samples each, stored prompt by prompt.
    result = win_rate([3.0, 1.0, 2.0, 2.0], [2.0, 0.0, 5.0, 1.0], samples_per_prompt=2)
    # Prompt 0: 3>2, 3>0, 1<2, 1>0 -> 3/4. Prompt 1: 2<5, 2>1, 2<5, 2>1 -> 1/2.
    assert result["rate"] == pytest.approx(0.625)
    assert result["ci95"] == pytest.approx(1.96 * math.sqrt(2 * 0.125**2) / math.sqrt(2))  # over the 2 prompts
    assert (result["wins"], result["losses"], result["ties"]) == (5, 3, 0)
    # Read as four prompts of one sample (pairs by position: win, win, loss, win), the same values give 0.75.
    assert win_rate([3.0, 1.0, 2.0, 2.0], [2.0, 0.0, 5.0, 1.0])["rate"] == pytest.approx(0.75)
    # A policy against itself: every prompt at exactly one half, whatever its samples.
    assert win_rate([0.1, 0.9, 0.4, 0.4], [0.1, 0.9, 0.4, 0.4], samples_per_prompt=2)["rate"] == 0.5
    with pytest.raises(ValueError, match="prompts of 3 samples"):
        win_rate([1.0, 2.0], [1.0, 2.0], samples_per_prompt=3)


def test_prompt_mean_ci_takes_the_prompt_as_the_unit():
    values = [1.0, 3.0, 2.0, 2.0, 6.0, 4.0]
    grouped = prompt_mean_ci(values, 2)
    assert grouped == mean_ci([2.0, 2.0, 5.0]) and grouped["n"] == 3
    assert prompt_mean_ci(values, 1) == mean_ci(values)
    # The same mean, a wider interval than the one that counts 6 independent responses.
    assert grouped["mean"] == pytest.approx(mean_ci(values)["mean"]) and grouped["ci95"] > mean_ci(values)["ci95"]


def test_per_prompt_breakdowns_with_several_samples():
    kinds = [["words"], ["lowercase"]]
    by_kind = win_rates_by_kind(kinds, [0.9, 0.1, 0.5, 0.5], [0.5, 0.5, 0.2, 0.8], samples_per_prompt=2)
    assert (by_kind["words"]["prompts"], by_kind["words"]["rate"]) == (1, 0.5)
    lowercase = by_kind["lowercase"]
    assert lowercase["rate"] == 0.5 and (lowercase["wins"], lowercase["losses"]) == (2, 2)
    own = [{"length": 1.0}, {"length": 0.0}, {"length": 0.5, "keywords": 1.0}, {"length": 0.5}]
    ref = [{"length": 0.5}, {"length": 0.5}, {"length": 0.5, "keywords": 0.0}, {"length": 1.0}]
    changes = criterion_changes(own, ref, samples_per_prompt=2)
    assert changes["length"]["n"] == 2 and changes["length"]["mean"] == pytest.approx((0.0 + -0.25) / 2)
    assert changes["keywords"]["n"] == 1 and changes["keywords"]["mean"] == pytest.approx(1.0)
    means = criterion_means(own, samples_per_prompt=2)
    assert means["length"]["n"] == 2 and means["length"]["mean"] == pytest.approx((0.5 + 0.5) / 2)


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)  # (a b), (b a), (a b)
    assert distinct_n(["one two", "three four"], 2) == 1.0
    assert distinct_n(["", "word"], 2) == 0.0


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    model = FixedDistribution([0.2] * 5)
    texts = [[0, 1, 2, 3, 4], [4, 4, 1]]
    nll, tokens = heldout_nll(model, texts, pad_token_id=0, batch_size=1)
    assert tokens == 4 + 2
    assert perplexity(nll, tokens) == pytest.approx(5.0)


def test_logprobs_of_a_known_distribution_skip_prompt_and_padding():
    probs = [0.1, 0.2, 0.3, 0.4]
    model = FixedDistribution(probs)
    # Scored from index 2 and 1; the second sequence is padded to the first's length in the same batch.
    scored = sequence_logprobs(model, [[0, 1, 2, 3], [2, 2]], starts=[2, 1], pad_token_id=0, batch_size=2)
    assert scored[0][1] == 2 and scored[0][0] == pytest.approx(math.log(0.3) + math.log(0.4))
    assert scored[1][1] == 1 and scored[1][0] == pytest.approx(math.log(0.3))
    # Held-out perplexity of a known non-uniform distribution.
    nll, tokens = heldout_nll(model, [[3, 3, 1]], pad_token_id=0)
    assert perplexity(nll, tokens) == pytest.approx(math.exp(-(math.log(0.4) + math.log(0.2)) / 2))


def test_kl_estimate_of_two_known_distributions():
    """The mean log-ratio on a policy's samples converges to KL(policy || reference)."""
    p, q = [0.7, 0.2, 0.1], [0.3, 0.3, 0.4]
    generator = torch.Generator().manual_seed(0)
    samples = torch.multinomial(torch.tensor(p), 4000, replacement=True, generator=generator).view(-1, 1)
    sequences = [[0, int(t)] for t in samples]
    own = sequence_logprobs(FixedDistribution(p), sequences, [1] * len(sequences), 0, batch_size=1000)
    ref = sequence_logprobs(FixedDistribution(q), sequences, [1] * len(sequences), 0, batch_size=1000)
    estimate = mean_ci([a - b for (a, _), (b, _) in zip(own, ref, strict=True)])
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    assert abs(estimate["mean"] - exact) < estimate["ci95"] * 1.5


def test_parse_policies_and_its_errors(tmp_path):
    assert parse_policies(["base", f"sft={tmp_path}"]) == {"base": None, "sft": tmp_path}
    for bad in (["my-policy=x"], ["reward=x"], ["sft=a", "sft=b"], []):
        with pytest.raises(ConfigError):
            parse_policies(bad)


def test_goals_compare_ppo_ptx_with_plain_ppo():
    policies = {
        "ppo": {"perplexity_increase": 2.0},
        "ppo_ptx": {"perplexity_increase": 0.8, "win_rate_labeler": {"rate": 0.65, "ci95": 0.1}},
    }
    rm = {"eval_pairwise_accuracy": 0.76, "eval_ci95_half_width": 0.05, "eval_flip_probe_accuracy": 0.6}
    rows = goal_rows(policies, rm)
    assert [row[0].split()[1] for row in rows] == ["held-out", "instruction-flip", "win", "perplexity"]
    assert [row[3] for row in rows] == ["yes", "no", "yes", "yes"]
    rm["eval_pairwise_accuracy"], rm["eval_flip_probe_accuracy"] = 0.74, 0.71
    assert [row[3] for row in goal_rows(policies, rm)][:2] == ["no", "yes"]
    # A win rate of 0.65 whose interval reaches down to 0.5 is not a win.
    policies["ppo_ptx"]["win_rate_labeler"]["ci95"] = 0.15
    assert goal_rows(policies, None)[0][3] == "no"
    policies["ppo_ptx"]["perplexity_increase"] = 1.2
    assert goal_rows(policies, None)[-1][3] == "no"
    # The iterated pipeline's second round is checked too, under its own name, after the first.
    policies["ppo_ptx_r2"] = {"perplexity_increase": 0.5, "win_rate_labeler": {"rate": 0.64, "ci95": 0.06}}
    rows = goal_rows(policies, None)
    assert [(row[0], row[3]) for row in rows[2:]] == [
        ("PPO-ptx (round 2) win rate vs SFT (labeler)", "yes"),
        ("PPO-ptx (round 2) perplexity increase <= half of PPO's", "yes"),
    ]
    assert smooth([1.0, 3.0, 5.0], 2) == [1.0, 2.0, 4.0]


def test_length_preference_line_names_the_shortcut_and_its_direction(tmp_path):
    assert length_preference_line(None) is None
    assert length_preference_line({"eval_pairwise_accuracy": 0.7}) is None  # an RM stage from before the measure
    rm = {"eval_rm_prefers_shorter": 0.74, "eval_labels_prefer_shorter": 0.57, "eval_length_pairs": 229}
    line = length_preference_line(rm)
    assert "229 held-out pairs" in line and "0.74" in line and "0.57" in line
    assert "prefers the shorter answer 0.17 more often" in line
    rm["eval_rm_prefers_shorter"] = 0.45
    assert "prefers the longer answer 0.12 more often" in length_preference_line(rm)
    rm["eval_rm_prefers_shorter"] = 0.60
    assert "no length shortcut" in length_preference_line(rm)
    assert "finished" not in length_preference_line(rm)  # rankings that do not record which responses ended
    finished = {
        "eval_finished_pairs": 149,
        "eval_finished_pairwise_accuracy": 0.557,
        "eval_finished_length_pairs": 146,
    }
    finished |= {"eval_finished_rm_prefers_shorter": 0.84, "eval_finished_labels_prefer_shorter": 0.47}
    assert length_preference_line(rm | finished).endswith(
        "Among the 149 held-out pairs of two finished responses (none cut off at the sampling limit; PPO's reward "
        "orders such pairs), it orders 0.557 right and prefers the shorter in 0.84 where its labels do in 0.47."
    )
    # In the report, right after the goals, read from the RM stage's eval_results.json.
    (tmp_path / "eval_results.json").write_text(json.dumps(rm | {"eval_pairwise_accuracy": 0.6}))
    metrics = {"num_prompts": 0, "reference": "sft", "policies": {"sft": {}}}
    report = write_report(tmp_path, metrics, [], tmp_path / "eval_results.json").read_text()
    assert report.index("## Goals of the default run") < report.index(length_preference_line(rm))
    # The RM's held-out accuracy by deciding criterion beside the collection's shares (a criterion in one only).
    (tmp_path / "summary.json").write_text(json.dumps({"pairs_decided_by": {"length": 0.4, "format": 0.1}}))
    by_criterion = {"length": {"pairs": 79, "pairwise_accuracy": 0.468, "ci95_half_width": 0.11}}
    by_criterion["ends_cleanly"] = {"pairs": 51, "pairwise_accuracy": 0.941, "ci95_half_width": 0.065}
    (tmp_path / "by_criterion.json").write_text(json.dumps(by_criterion))
    report = write_report(
        tmp_path,
        metrics,
        [],
        tmp_path / "eval_results.json",
        tmp_path / "summary.json",
        tmp_path / "by_criterion.json",
    ).read_text()
    assert "| length | 0.400 | 79 | 0.468 ± 0.110 |" in report and "| format | 0.100 |  |  |" in report
    assert "| ends_cleanly |  | 51 | 0.941 ± 0.065 |" in report


def test_win_rates_by_kind_of_instruction():
    kinds = [["words"], ["words", "lowercase"], ["none"], ["lowercase"]]
    scores, baseline = [0.9, 0.2, 0.5, 0.7], [0.1, 0.8, 0.5, 0.3]
    by_kind = win_rates_by_kind(kinds, scores, baseline)
    assert list(by_kind) == ["words", "lowercase", "none"]
    assert (by_kind["words"]["prompts"], by_kind["words"]["rate"]) == (2, 0.5)
    assert (by_kind["lowercase"]["wins"], by_kind["lowercase"]["losses"]) == (1, 1)
    assert by_kind["none"]["rate"] == 0.5 and by_kind["none"]["ties"] == 1
    policies = {"sft": {}, "ppo": {"win_rate_labeler_by_instruction": by_kind}}
    rows = instruction_rows(policies)
    assert rows[0] == ["instruction", "prompts", "ppo"]
    assert [r[:2] for r in rows[1:]] == [["words", "2"], ["lowercase", "2"], ["none", "1"]]
    assert rows[1][2].startswith("0.50 ±")
    assert instruction_rows({"sft": {}}) == []


def test_length_correction_line_reads_fits_with_and_without_an_interval():
    fit = {"slope": 0.0017, "reference_tokens": 28.5, "samples": 256, "finished": 223}  # written before the interval
    assert describe_length_correction(fit).startswith("length correction +0.0017 reward per token within a prompt")
    assert "±" not in describe_length_correction({**fit, "ci95": None})  # no interval: JSON null
    assert describe_length_correction({**fit, "ci95": 0.0112}).startswith("length correction +0.0017 ± 0.0112 reward")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir, tokenizer):
    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("eval-adapters"), tokenizer)


def eval_config(tmp_path, model_dir, sft, rm, **overrides):
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": [{"role": "user", "content": f"Describe topic {i} in about ten words."}]} for i in range(5)],
    )
    texts = write_jsonl(tmp_path / "text.jsonl", [{"text": f"Plain text number {i} about rivers."} for i in range(4)])
    (tmp_path / "ppo_run").mkdir(exist_ok=True)
    history = [{"episode": 4 * i, "objective/scores": 0.1 * i, "objective/kl": 0.01 * i} for i in range(1, 5)]
    (tmp_path / "ppo_run" / "log_history.json").write_text(json.dumps(history))
    stat = {"mean": 0.5, "ci95": 0.25}
    heldout = {
        "prompts": 7,
        "reference": stat,
        "policy": stat,
        "change": stat,
        "win_rate": {"rate": 0.75, "ci95": 0.1},
    }
    sampled = {**heldout, "win_rate": {"rate": 0.25, "ci95": 0.1}}  # as written before response lengths were
    heldout["response_tokens"] = {"reference": 30.0, "policy": 21.54}
    summary = {"heldout_rm_score": heldout, "heldout_rm_score_sampled": sampled}
    fit = {"slope": -0.0327, "reference_tokens": 29.62, "samples": 256, "finished": 227, "ci95": 0.0064}
    summary["length_correction"] = fit  # `length_correction: sft`
    (tmp_path / "ppo_run" / "ppo_summary.json").write_text(json.dumps(summary))
    values = dict(
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "eval"),
        # "same" is the SFT adapter again: identical samples, so ties everywhere and zero KL.
        policies=["base", f"sft={sft}", f"same={sft}"],
        reference="sft",
        reward_model_path=str(rm),
        prompts_dataset=str(prompts),
        prompts_split="train",
        ptx_dataset_name=str(texts),
        ptx_dataset_split="train",
        max_new_tokens=6,
        batch_size=4,
        ppo_runs=[f"ppo={tmp_path / 'ppo_run'}"],
    )
    values.update(overrides)
    return write_config(tmp_path / "eval.yaml", **values)


def run_eval(config):
    return eval_recipe.main(*parse_args((EvalConfig, eval_recipe.ModelConfig), ["--config", str(config)]))


def test_criterion_changes_are_paired_per_prompt_and_only_where_both_apply():
    own = [{"length": 0.9, "on_topic": 1.0}, {"length": 0.5, "keywords": 1.0}, {"on_topic": 0.5}]
    ref = [{"length": 0.7, "on_topic": 0.5}, {"length": 0.9, "keywords": 0.0}, {"on_topic": 0.5, "style": 1.0}]
    changes = criterion_changes(own, ref)
    assert list(changes) == ["length", "on_topic", "keywords"]
    assert changes["length"]["mean"] == pytest.approx((0.2 - 0.4) / 2) and changes["length"]["n"] == 2
    assert changes["on_topic"]["mean"] == pytest.approx(0.25) and changes["on_topic"]["n"] == 2
    assert changes["keywords"]["mean"] == pytest.approx(1.0) and changes["keywords"]["n"] == 1
    assert "style" not in changes  # the policy's answer was not scored on it
    assert criterion_means(ref)["on_topic"]["mean"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="paired"):
        criterion_changes(own, ref[:2])
    # From the labeler itself: a word-count instruction, a response that misses it badly against one that meets it.
    labeler = SimulatedLabeler()
    prompt = "Explain tides in about 10 words."
    short = labeler.criteria(prompt, "Tides rise.")
    right = labeler.criteria(prompt, "Tides are the rise and fall of the sea, caused by the moon.")
    worse, better = criterion_changes([short], [right]), criterion_changes([right], [short])
    assert worse["length"]["mean"] < 0 < better["length"]["mean"]
    policies = {
        "sft": {"labeler_criteria": criterion_means(ref)},
        "ppo": {"labeler_criteria_change": changes},
    }
    rows = criteria_rows(policies, "sft")
    assert rows[0] == ["criterion", "prompts", "sft mean", "ppo change"]
    assert rows[1][:3] == ["length", "2", "0.800"] and rows[1][3].startswith("-0.100 ±")
    assert rows[3][:3] == ["keywords", "1", "0.000"] and rows[3][3].startswith("+1.000")
    assert criteria_rows(policies, None) == [] and criteria_rows({"sft": {}}, "sft") == []


def test_eval_end_to_end_on_tiny_policies(tmp_path, tiny_model_dir, adapters):
    sft, rm = adapters
    metrics = run_eval(eval_config(tmp_path, tiny_model_dir, sft, rm))
    policies = metrics["policies"]
    assert set(policies) == {"base", "sft", "same"}
    same = policies["same"]
    assert same["win_rate_labeler"]["rate"] == 0.5 and same["win_rate_labeler"]["ties"] == 5
    assert same["win_rate_rm"]["rate"] == 0.5
    assert same["kl_to_reference"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert same["perplexity_increase"] == pytest.approx(0.0, abs=1e-6)
    # The base model lacks the SFT adapter: different log-probabilities and a different held-out perplexity.
    assert policies["base"]["kl_to_reference"]["mean"] != pytest.approx(0.0, abs=1e-4)
    assert policies["base"]["heldout_perplexity"] != pytest.approx(policies["sft"]["heldout_perplexity"])
    assert "win_rate_labeler" not in policies["sft"]
    # Same adapter, same seed: every labeler criterion unchanged against SFT, and the table in the report.
    assert set(same["labeler_criteria_change"]) >= {"length", "on_topic", "ends_cleanly"}
    assert all(c["mean"] == 0.0 for c in same["labeler_criteria_change"].values())
    assert set(policies["sft"]["labeler_criteria"]) == set(same["labeler_criteria_change"])
    out = tmp_path / "eval"
    assert json.loads((out / "metrics.json").read_text())["num_prompts"] == 5
    assert "| same |" in (out / "metrics.md").read_text()
    assert len((out / "samples.jsonl").read_text().splitlines()) == 15
    report = (out / "report.md").read_text()
    assert (
        "win rate 0.750 ± 0.100 over 7 prompts (greedy responses); response length 30.0 (SFT) -> 21.5 (trained) tokens"
        in report
    )
    assert (
        "- ppo: 0.500 (SFT) -> 0.500 (trained), change +0.500 ± 0.250, win rate 0.250 ± 0.100 over 7 prompts (sampled "
        "responses)\n" in report
    )
    assert (
        "- ppo: length correction -0.0327 ± 0.0064 reward per token within a prompt, fitted on 256 SFT samples (227 "
        "finished, mean 29.6 tokens)" in report
    )
    assert "## Labeler criteria against the reference" in report and "| length | 5 |" in report
    for image in ("ppo_curves.png", "labeler_score.png", "tax.png"):
        assert f"({image})" in report and (out / image).stat().st_size > 1000


def test_eval_with_two_samples_per_prompt(tmp_path, tiny_model_dir, adapters):
    sft, rm = adapters
    config = eval_config(
        tmp_path, tiny_model_dir, sft, rm, policies=[f"sft={sft}", f"same={sft}"], samples_per_prompt=2
    )
    metrics = run_eval(config)
    assert metrics["num_prompts"] == 5 and metrics["samples_per_prompt"] == 2
    same = metrics["policies"]["same"]
    # Same adapter, same seed: each prompt's cross pairs balance out to exactly one half.
    assert same["win_rate_labeler"]["rate"] == 0.5 and same["win_rate_rm"]["rate"] == 0.5
    assert (
        same["win_rate_labeler"]["wins"] + same["win_rate_labeler"]["ties"] + same["win_rate_labeler"]["losses"] == 20
    )
    assert same["labeler_score"]["n"] == 5 and same["kl_to_reference"]["n"] == 5  # intervals over prompts
    assert same["kl_to_reference"]["mean"] == pytest.approx(0.0, abs=1e-5)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * 5 * 2
    assert [r["sample"] for r in rows[:4]] == [0, 1, 0, 1] and rows[0]["prompt"] == rows[1]["prompt"] != rows[2][
        "prompt"
    ]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "5 held-out prompts, 2 sampled responses per prompt and policy" in report
    with pytest.raises(ConfigError, match="samples_per_prompt"):
        run_eval(eval_config(tmp_path, tiny_model_dir, sft, rm, samples_per_prompt=0))


def test_eval_names_a_missing_policy_and_a_bad_reference(tmp_path, tiny_model_dir, adapters):
    sft, rm = adapters
    with pytest.raises(MissingStageError, match="'ppo' policy"):
        run_eval(eval_config(tmp_path, tiny_model_dir, sft, rm, policies=[f"sft={sft}", f"ppo={tmp_path / 'none'}"]))
    with pytest.raises(ConfigError, match="reference"):
        run_eval(eval_config(tmp_path, tiny_model_dir, sft, rm, reference="ppo"))
    assert not (tmp_path / "eval").exists()  # nothing written before the inputs were checked


def test_mean_reward_per_prompt_averages_each_prompts_own_responses(monkeypatch, tokenizer):
    """Scores come back flat; each prompt gets the mean of its own responses' (here: their token counts)."""
    seen = []

    def fake_scores(reward_model, prompts, responses, pad_token_id, batch_size):
        seen.extend(zip(prompts, responses, strict=True))
        return [float(len(r)) for r in responses]

    monkeypatch.setattr(evaluation, "reward_scores", fake_scores)
    prompts = ["Say one word.", "Say three words."]
    responses = [["Hi", "Hello there"], ["One two three"]]
    means = mean_reward_per_prompt(None, tokenizer, prompts, responses)
    lengths = [[len(encode_response(tokenizer, r)) for r in answers] for answers in responses]
    assert means == [sum(lengths[0]) / 2, float(lengths[1][0])]
    assert [p for p, _ in seen] == [encode_prompt(tokenizer, prompts[0])] * 2 + [encode_prompt(tokenizer, prompts[1])]


def test_mean_response_tokens_counts_every_response(tokenizer):
    """The mean over all responses, not over per-prompt means; special tokens not added; nothing -> 0."""
    responses = [["Red."], ["Hi there, how are you today?", "Hello."]]
    red, hi, hello = (len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in sum(responses, []))
    assert hi > red and mean_response_tokens(tokenizer, responses) == pytest.approx((red + hi + hello) / 3)
    assert mean_response_tokens(tokenizer, responses) != pytest.approx((red + (hi + hello) / 2) / 2)
    assert mean_response_tokens(tokenizer, [[""]]) == 0 and mean_response_tokens(tokenizer, []) == 0
