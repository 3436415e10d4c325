"""`make rm-eval`: each member's and the ensemble's held-out accuracy and flip probe, read as PPO reads rewards."""

import json

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from helpers import load_recipe, write_config, write_jsonl
from instructrl.data.rows import tokenize_comparisons
from instructrl.errors import ConfigError
from instructrl.labeler import SimulatedLabeler
from instructrl.reward import (
    accuracy_by_criterion,
    labeler_deciders,
    pair_deciders,
    pairwise_accuracy,
    score_sequences,
)
from instructrl.reward_eval import (
    ENSEMBLE,
    RewardEvalConfig,
    comparison_finished,
    comparison_groups,
    criterion_markdown,
    markdown,
    member_correlation,
    validation_table,
)
from ppo_fixtures import make_adapters

rm_eval_recipe = load_recipe("rm_eval")


def test_validation_table_scores_members_and_their_conservative_ensemble():
    # Two rankings (K=3 and K=2). Member a orders every pair right except (1, 2); member b gets (0, 1) wrong.
    scores = torch.tensor([3.0, 2.0, 1.0, 1.0, 0.0])
    sizes = torch.tensor([3, 2])
    a = torch.tensor([3.0, 1.0, 2.0, 1.0, 0.0])
    b = torch.tensor([2.0, 6.0, 0.0, 5.0, 0.0])
    table = validation_table(torch.stack([a, b], dim=1), scores, sizes, None, ["a", "b"], "min")
    assert table["a"]["pairwise_accuracy"] == pytest.approx(3 / 4)
    assert table["b"]["pairwise_accuracy"] == pytest.approx(3 / 4)
    # min(a, b) = [2, 1, 0, 1, 0]: every pair ordered right, better than either member.
    assert table[ENSEMBLE]["pairwise_accuracy"] == 1.0
    assert table[ENSEMBLE]["pairs"] == 4
    assert "flip_probe_accuracy" not in table["a"]
    # mean - 1 std of [a, b] = mean - |a - b| / 2 = min for two members.
    mean_std = validation_table(torch.stack([a, b], dim=1), scores, sizes, None, ["a", "b"], "mean_minus_std", 1.0)
    assert mean_std[ENSEMBLE]["pairwise_accuracy"] == 1.0
    # The plain mean (coef 0) = [2.5, 3.5, 1, 3, 0] gets (0, 1) wrong, as b does.
    mean = validation_table(torch.stack([a, b], dim=1), scores, sizes, None, ["a", "b"], "mean_minus_std", 0.0)
    assert mean[ENSEMBLE]["pairwise_accuracy"] == pytest.approx(3 / 4)
    # One member: no ensemble row.
    assert list(validation_table(a[:, None], scores, sizes, None, ["a"])) == ["a"]


def test_validation_table_flip_probe_per_member_and_ensemble():
    # Two items, 4 rewards each: (prompt 0: response 0, 1), (prompt 1: response 0, 1).
    follows = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 1.0, 1.0, 2.0])  # both orders right in both items
    ignores = torch.tensor([1.0, 0.0, 1.0, 0.0, 2.0, 1.0, 2.0, 1.0])  # one order of each item right
    held_out = torch.zeros(2, 2)
    table = validation_table(
        held_out, torch.tensor([1.0, 0.0]), torch.tensor([2]), torch.stack([follows, ignores], 1), ["f", "i"], "min"
    )
    assert (table["f"]["flip_probe_accuracy"], table["f"]["flip_probe_both_right"]) == (1.0, 1.0)
    assert (table["i"]["flip_probe_accuracy"], table["i"]["flip_probe_both_right"]) == (0.5, 0.0)
    assert table["i"]["flip_probe_items"] == 2
    # min(follows, ignores) = [1, 0, 0, 0, 2, 1, 1, 1]: item 1 keeps its first order only, item 2 too.
    assert table[ENSEMBLE]["flip_probe_accuracy"] == 0.5
    assert table["f"]["pairwise_accuracy"] == 0.0  # tied rewards order no pair right


def test_validation_table_over_pairs_of_finished_responses():
    # Ranking 1 (K=3): response 1 was cut off; ranking 2 (K=2) records nothing; ranking 3 (K=2): one cut off.
    scores = torch.tensor([3.0, 2.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    sizes = torch.tensor([3, 2, 2])
    lengths = torch.tensor([30, 5, 10, 4, 9, 3, 8])
    rewards = torch.tensor([0.0, 9.0, 1.0, 1.0, 0.0, 1.0, 0.0])[:, None]  # finished pair (0, 2) ordered wrong
    finished = [[True, False, True], None, [True, False]]
    row = validation_table(rewards, scores, sizes, None, ["a"], lengths=lengths, finished=finished)["a"]
    # All pairs: (0,1) wrong, (0,2) wrong, (1,2) right, ranking 2 right, ranking 3 right.
    assert (row["pairwise_accuracy"], row["pairs"]) == (pytest.approx(3 / 5), 5)
    # Finished pairs: only (0, 2) of ranking 1; the RM prefers the shorter (10 tokens), the labels the longer.
    assert (row["finished_pairwise_accuracy"], row["finished_pairs"]) == (0.0, 1)
    assert (row["finished_rm_prefers_shorter"], row["finished_labels_prefer_shorter"]) == (1.0, 0.0)
    assert "| 0.000 ± " in markdown({"a": row}, {}) and "of 1, 1.00 (0.00) |" in markdown({"a": row}, {})
    # Without flags: no finished keys, and an empty column.
    plain = validation_table(rewards, scores, sizes, None, ["a"], lengths=lengths)["a"]
    assert not any(key.startswith("finished_") for key in plain)
    assert markdown({"a": plain}, {}).splitlines()[-1].endswith("|  |")


def test_pair_deciders_name_the_labeler_criterion_of_each_ordered_pair():
    labeler = SimulatedLabeler()
    length_prompt = "Explain tides in about 10 words."
    right = "Tides are the rise and fall of the sea, caused by the moon."
    long = (
        "Tides rise and fall every day because the moon pulls on the oceans of the earth, and the sun helps as well, "
        "so the water moves up the beach and back down again twice a day."
    )
    word_prompt = 'Describe tides. Include the word "gravity".'
    with_word = "Tides are the rise and fall of the sea, caused by the pull of gravity from the moon."
    without = "Tides are the rise and fall of the sea, caused by the pull of the moon on the water."
    rows = [
        # Scores as the labeler gives them, the worse response first: the pair is (1, 0) in `ordered_pairs`' order.
        {"prompt": length_prompt, "responses": [long, right], "scores": [0.2, 0.9]},
        {"prompt": [{"role": "user", "content": word_prompt}], "chosen": with_word, "rejected": without},
        # Scores that contradict the labeler (another labeler's ranking): no criterion of this one decides it.
        {"prompt": word_prompt, "responses": [with_word, without], "scores": [0.1, 0.9]},
        {"prompt": word_prompt, "responses": [with_word, without], "scores": [0.5, 0.5]},  # a tie: no pair
    ]
    assert pair_deciders(labeler, Dataset.from_list(rows[:1])) == [["length"]]  # a `datasets` split reads alike
    assert pair_deciders(labeler, rows) == [["length"], ["keywords"], ["undecided"], []]
    # With the detail `make rm-eval` shows: which length instruction the prompt states.
    detailed = pair_deciders(labeler, rows, length_detail=True)
    assert detailed == [["length (about N words)"], ["keywords"], ["undecided"], []]
    sentences = {"prompt": "Explain tides in two sentences.", "responses": [long, right + " It is daily."]}
    sentences["scores"] = [labeler.score(sentences["prompt"], r) for r in sentences["responses"]]
    assert pair_deciders(labeler, [sentences], length_detail=True) == [["length (N sentences)"]]
    # The RM stage's reading: only rankings one labeler with criteria wrote; rows without an ordered pair left out.
    ranked = [{**row, "labeler": "simulated"} for row in rows if "responses" in row]
    assert labeler_deciders(Dataset.from_list(ranked)) == [["length"], ["undecided"]]
    assert labeler_deciders(Dataset.from_list([{**row, "labeler": "alice"} for row in ranked])) is None  # a person
    mixed = [ranked[0], {**ranked[1], "labeler": "alice"}]
    assert labeler_deciders(Dataset.from_list(mixed)) is None
    assert labeler_deciders(Dataset.from_list(rows[2:])) is None and labeler_deciders(None) is None


def test_accuracy_by_criterion_counts_each_criterions_pairs():
    # Group 0: responses scored 0.9, 0.5, 0.1 -> pairs (0,1), (0,2), (1,2); group 1: 0.2, 0.8 -> pair (1,0).
    scores = torch.tensor([0.9, 0.5, 0.1, 0.2, 0.8])
    rewards = torch.tensor([1.0, 2.0, 0.0, 0.0, 1.0])  # orders (0,1) wrong, (0,2) right, (1,2) right; (1,0) right
    sizes = torch.tensor([3, 2])
    deciders = [["length", "length", "keywords"], ["length"]]
    table = accuracy_by_criterion(rewards, scores, sizes, deciders)
    assert list(table) == ["length", "keywords"]  # most pairs first
    assert table["length"]["pairs"] == 3 and table["length"]["share"] == pytest.approx(0.75)
    assert table["length"]["pairwise_accuracy"] == pytest.approx(2 / 3)
    assert table["keywords"]["pairwise_accuracy"] == 1.0 and table["keywords"]["ci95_half_width"] == 0.0
    with pytest.raises(ValueError, match="deciding criteria"):
        accuracy_by_criterion(rewards, scores, sizes, [["length"], ["length"]])
    rows = validation_table(rewards[:, None], scores, sizes, None, ["rm"], deciders=deciders)
    assert rows["rm"]["by_criterion"] == table
    text = criterion_markdown(rows, {"rm": "my rm"})
    assert text.splitlines()[0] == "| deciding criterion | pairs (share) | my rm |"
    assert "| length | 3 (75%) | 0.667 ± " in text and criterion_markdown({"rm": {}}, {}) == ""


def test_comparison_finished_reads_rankings_flags(tokenizer):
    prompt = [{"role": "user", "content": "Name a fruit."}]
    ranked = {"prompt": prompt, "responses": ["Apple.", "Pear."], "scores": [1, 0], "finished": [True, False]}
    assert comparison_finished(Dataset.from_list([ranked])) == [[True, False]]
    unflagged = {"prompt": prompt, "responses": ["Apple.", "Pear."], "scores": [1, 0]}
    assert comparison_finished(Dataset.from_list([unflagged])) is None
    assert comparison_finished(Dataset.from_list([ranked, unflagged | {"finished": None}])) == [[True, False], None]


def test_member_correlation():
    r = torch.tensor([[1.0, -1.0, 2.0], [2.0, -2.0, 2.0], [3.0, -3.0, 2.1]])
    corr = member_correlation(r)
    assert corr[0][1] == pytest.approx(-1.0) and corr[0][0] == pytest.approx(1.0)
    assert member_correlation(r[:, :1]) == [[1.0]]


def test_comparison_groups_reads_rankings_and_pairs(tokenizer):
    prompt = [{"role": "user", "content": "Name a fruit."}]
    rankings = Dataset.from_list([{"prompt": prompt, "responses": ["Apple.", "Pear.", "A car."], "scores": [2, 1, 0]}])
    pairs, scores, sizes = comparison_groups(rankings, tokenizer)
    assert len(pairs) == 3 and sizes.tolist() == [3] and scores.tolist() == [2.0, 1.0, 0.0]
    assert pairs[0][1][-1] == tokenizer.eos_token_id  # the reward is read at the end-of-turn token
    chosen = Dataset.from_list([{"prompt": prompt, "chosen": "Apple.", "rejected": "A car."}])
    pairs, scores, sizes = comparison_groups(chosen, tokenizer)
    assert sizes.tolist() == [2] and scores.tolist() == [1.0, 0.0]
    assert tokenizer.decode(pairs[0][1]).startswith("Apple.")


def test_config_refuses_an_unknown_ensemble():
    with pytest.raises(ConfigError, match="reward_ensemble"):
        RewardEvalConfig(reward_ensemble="median")
    with pytest.raises(ConfigError, match="reward_ensemble_coef"):
        RewardEvalConfig(reward_ensemble_coef=-1.0)


def _negated_reward_model(rm_dir, out):
    """A copy of the reward model whose score head is negated: it orders every pair the other way."""
    out.mkdir()
    for path in rm_dir.iterdir():
        if path.is_file():
            (out / path.name).write_bytes(path.read_bytes())
    weights = load_file(str(rm_dir / "adapter_model.safetensors"))
    save_file({k: -v if "score" in k else v for k, v in weights.items()}, str(out / "adapter_model.safetensors"))
    return out


def test_recipe_matches_the_rm_stage_reading_and_scores_the_ensemble(tmp_path, tiny_model_dir, tokenizer):
    _, rm_dir = make_adapters(tiny_model_dir, tmp_path, tokenizer)
    negated = _negated_reward_model(rm_dir, tmp_path / "rm_negated")
    prompts = [[{"role": "user", "content": f"Describe topic {i} briefly."}] for i in range(4)]
    rows = [
        {
            "prompt": p,
            "responses": [f"Answer {i}.", f"Longer answer {i} here.", f"No {i}"],
            "scores": [0.9, 0.5, 0.1],
            "finished": [True, i % 2 == 0, True],
        }
        for i, p in enumerate(prompts)
    ]
    data = write_jsonl(tmp_path / "comparisons" / "test.jsonl", rows)
    probe = [{"prompts": [prompts[0], prompts[1]], "responses": ["Answer 0.", "No 1"]}]
    probe_path = write_jsonl(tmp_path / "flip.jsonl", probe)
    config = write_config(
        tmp_path / "rm_eval.yaml",
        model_name_or_path=str(tiny_model_dir),
        reward_model_path=str(rm_dir),
        reward_adapters=[str(negated)],
        reward_ensemble="mean_minus_std",
        dataset_name=str(data.parent),
        dataset_split="test",
        flip_probe=str(probe_path),
        labeler="simulated",
        output_dir=str(tmp_path / "out"),
        batch_size=5,
    )
    result = rm_eval_recipe.run_recipe(
        rm_eval_recipe.main, (RewardEvalConfig, rm_eval_recipe.ModelConfig), ["--config", str(config)]
    )
    saved = json.loads((tmp_path / "out" / "rm_eval.json").read_text())
    assert saved["rows"] == result["rows"]
    markdown_text = (tmp_path / "out" / "rm_eval.md").read_text()
    overall, by_criterion = markdown_text.split(
        "\nHeld-out accuracy by the labeler criterion that decides the pair (length by the prompt's length "
        "instruction):\n"
    )
    assert overall.count("\n") == 5  # header, rule, 2 members, ensemble
    assert "| deciding criterion | pairs (share) |" in by_criterion
    assert "prefers the shorter (labels)" in markdown_text and "finished pairs" in markdown_text

    # The member's accuracy is the RM stage's own: the classifier with the adapter, read at the same token.
    classifier = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    classifier = PeftModel.from_pretrained(classifier, str(rm_dir)).eval()
    tokenized = tokenize_comparisons(Dataset.from_list(rows), tokenizer, None, keep_finished=True)
    expected = pairwise_accuracy(classifier, tokenized, tokenizer.pad_token_id)
    member, other = result["rows"]["reward"], result["rows"]["reward_1"]
    assert member["pairwise_accuracy"] == expected["pairwise_accuracy"] and member["pairs"] == 12
    # Pairs of two finished responses: 3 in the two rankings with all three ended, 1 in each of the other two.
    assert member["finished_pairs"] == expected["finished_pairs"] == 8
    for key in ("finished_pairwise_accuracy", "finished_rm_prefers_shorter", "finished_labels_prefer_shorter"):
        assert member[key] == pytest.approx(expected[key]), key
    assert other["finished_pairwise_accuracy"] == pytest.approx(1.0 - member["finished_pairwise_accuracy"])
    # The length preference reads the same in both places, and the negated head prefers the other response.
    for key in ("rm_prefers_shorter", "labels_prefer_shorter", "length_pairs"):
        assert member[key] == pytest.approx(expected[key]), key
    assert member["length_pairs"] > 0
    assert other["rm_prefers_shorter"] == pytest.approx(1.0 - member["rm_prefers_shorter"])
    assert other["labels_prefer_shorter"] == member["labels_prefer_shorter"]
    assert other["pairwise_accuracy"] == pytest.approx(1.0 - member["pairwise_accuracy"])  # the negated head
    assert member["flip_probe_accuracy"] + other["flip_probe_accuracy"] == pytest.approx(1.0)
    assert result["member_correlation"][0][1] == pytest.approx(-1.0, abs=1e-4)
    # By deciding criterion: every ordered pair counted once; the negated head is right where the member is not.
    assert sum(row["pairs"] for row in member["by_criterion"].values()) == 12
    for criterion, row in member["by_criterion"].items():
        assert other["by_criterion"][criterion]["pairwise_accuracy"] == pytest.approx(1.0 - row["pairwise_accuracy"])
    assert ENSEMBLE in result["rows"] and result["members"][ENSEMBLE].startswith("ensemble (mean_minus_std")

    # The rewards themselves (normalization bias included) equal the classifier's plus the saved bias.
    from instructrl.reward_eval import RewardMembers

    base = rm_eval_recipe.load_base_model(
        rm_eval_recipe.ModelConfig(model_name_or_path=str(tiny_model_dir)), tokenizer
    )
    pairs, _, _ = comparison_groups(Dataset.from_list(rows), tokenizer)
    rewards = RewardMembers(base, [rm_dir]).score(pairs, tokenizer.pad_token_id, batch_size=4)[:, 0]
    bias = json.loads((rm_dir / "reward_normalization.json").read_text())["bias"]
    direct = score_sequences(classifier, [p + r for p, r in pairs], tokenizer.pad_token_id) + bias
    assert torch.allclose(rewards, direct, atol=1e-4)


def test_recipe_names_a_missing_reward_model(tmp_path, tiny_model_dir, capsys):
    config = write_config(
        tmp_path / "rm_eval.yaml",
        model_name_or_path=str(tiny_model_dir),
        reward_model_path=str(tmp_path / "no_rm"),
        dataset_name=str(tmp_path),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(SystemExit):
        rm_eval_recipe.run_recipe(
            rm_eval_recipe.main, (RewardEvalConfig, rm_eval_recipe.ModelConfig), ["--config", str(config)]
        )
    err = capsys.readouterr().err
    assert "No reward-model adapter at" in err and "Run `make rm` first" in err
    assert not (tmp_path / "out").exists()
