"""Comparison collection: K samples per prompt from a policy, ranked by the labeler, written as rankings and pairs."""

import json
from math import comb

import pytest

from helpers import load_recipe, write_config, write_jsonl
from instructrl.comparisons import rank_responses, ranking_to_pairs, split_by_prompt
from instructrl.configs import CollectConfig, parse_args
from instructrl.errors import ConfigError, MissingStageError
from instructrl.labeler import SimulatedLabeler, get_labeler

collect_recipe = load_recipe("collect")


def test_rank_and_pairs_follow_the_labeler():
    prompt = [{"role": "user", "content": "Describe tea in one sentence."}]
    responses = ["Tea, tea, tea, tea,", "Tea is a drink made by steeping leaves in hot water.", "Rain falls."]
    row = rank_responses(SimulatedLabeler(), prompt, responses)
    assert row["ranking"][0] == 1
    assert row["scores"] == [SimulatedLabeler().score(prompt[0]["content"], r) for r in responses]
    pairs = ranking_to_pairs(row)
    assert len(pairs) == comb(3, 2)
    labeler = SimulatedLabeler()
    for pair in pairs:
        assert labeler.score(prompt[0]["content"], pair["chosen"]) > labeler.score(
            prompt[0]["content"], pair["rejected"]
        )
    tied = {"prompt": "p", "responses": ["a", "b", "c"], "scores": [0.5, 0.5, 0.1], "ranking": [0, 1, 2]}
    assert len(ranking_to_pairs(tied)) == 2  # the tie states no preference


def test_split_by_prompt_is_disjoint_and_seeded():
    rows = [{"prompt": str(i)} for i in range(20)]
    train, test = split_by_prompt(rows, 0.25, seed=3)
    assert len(test) == 5 and len(train) == 15
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
    assert split_by_prompt(rows, 0.25, seed=3) == (train, test)


def test_collect_end_to_end_on_tiny_policy(tmp_path, tiny_model_dir):
    prompts = [{"prompt": [{"role": "user", "content": f"Describe topic {i} in about 10 words."}]} for i in range(6)]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    config = write_config(
        tmp_path / "collect.yaml",
        model_name_or_path=str(tiny_model_dir),
        prompts_dataset=str(data),
        prompts_split="train",
        num_responses=4,
        max_new_tokens=12,
        batch_size=4,
        test_fraction=0.34,
        output_dir=str(tmp_path / "comparisons"),
    )
    summary = collect_recipe.main(*parse_args((CollectConfig, collect_recipe.ModelConfig), ["--config", str(config)]))
    out = tmp_path / "comparisons"
    train = [json.loads(line) for line in (out / "rankings" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "rankings" / "test.jsonl").read_text().splitlines()]
    assert (len(train), len(test)) == (4, 2)
    labeler = get_labeler("simulated")
    for row in train + test:
        assert len(row["responses"]) == 4
        text = row["prompt"][0]["content"]
        assert row["scores"] == [labeler.score(text, r) for r in row["responses"]]
        assert [row["scores"][i] for i in row["ranking"]] == sorted(row["scores"], reverse=True)
        assert not any("<|im_end|>" in r or "<|endoftext|>" in r for r in row["responses"])
    pairs = (out / "pairs" / "train.jsonl").read_text().splitlines()
    assert len(pairs) == sum(len(ranking_to_pairs(r)) for r in train) == summary["train_pairs"]
    assert json.loads((out / "summary.json").read_text())["num_responses"] == 4


def test_collect_config_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="num_responses"):
        CollectConfig(num_responses=12)
    config = write_config(
        tmp_path / "c.yaml",
        model_name_or_path=str(tiny_model_dir),
        sft_adapter_path=str(tmp_path / "no-sft-yet"),
        output_dir=str(tmp_path / "out"),
    )
    with pytest.raises(MissingStageError, match="make sft"):
        collect_recipe.main(*parse_args((CollectConfig, collect_recipe.ModelConfig), ["--config", str(config)]))
    with pytest.raises(ValueError, match="set `labeler` to one of"):
        get_labeler("humans")
