"""Comparison collection: K samples per prompt from a policy, ranked by the labeler, written as rankings and pairs."""

import json
from math import comb

import pytest

from helpers import load_recipe, write_config, write_jsonl
from instructrl.comparisons import (
    FLIP_MARGIN,
    count_rankings,
    flip_probe,
    flip_rankings,
    mark_finished,
    rank_responses,
    ranking_to_pairs,
    restated_prompt,
    sibling_rankings,
    split_by_prompt,
    topic_groups,
)
from instructrl.configs import CollectConfig, parse_args
from instructrl.errors import ConfigError, DataError, MissingStageError, OutputDirError
from instructrl.labeler import SimulatedLabeler, get_labeler
from instructrl.runs import finish_stage, start_stage

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


def run_collect(tmp_path, model_dir, **settings) -> tuple[dict, dict[str, list[dict]]]:
    """Runs the collect recipe on `model_dir` with `settings`; returns its summary and its train/test rankings."""
    config = write_config(
        tmp_path / "collect.yaml",
        model_name_or_path=str(model_dir),
        output_dir=str(tmp_path / "comparisons"),
        **settings,
    )
    summary = collect_recipe.main(*parse_args((CollectConfig, collect_recipe.ModelConfig), ["--config", str(config)]))
    rankings = tmp_path / "comparisons" / "rankings"
    files = {s: rankings / f"{s}.jsonl" for s in ("train", "test")}
    # A human collection writes no rankings until people rank.
    rows = {s: [json.loads(x) for x in f.read_text().splitlines()] if f.exists() else [] for s, f in files.items()}
    return summary, rows


def test_collect_end_to_end_on_tiny_policy(tmp_path, tiny_model_dir):
    prompts = [{"prompt": [{"role": "user", "content": f"Describe topic {i} in about 10 words."}]} for i in range(6)]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    summary, rows = run_collect(
        tmp_path,
        tiny_model_dir,
        prompts_dataset=str(data),
        prompts_split="train",
        num_responses=4,
        max_new_tokens=12,
        batch_size=4,
        test_fraction=0.34,
    )
    out = tmp_path / "comparisons"
    train, test = rows["train"], rows["test"]
    assert (len(train), len(test)) == (4, 2)
    labeler = get_labeler("simulated")
    for row in train + test:
        assert len(row["responses"]) == 4
        text = row["prompt"][0]["content"]
        assert row["scores"] == [labeler.score(text, r) for r in row["responses"]]
        assert [row["scores"][i] for i in row["ranking"]] == sorted(row["scores"], reverse=True)
        assert not any("<|im_end|>" in r or "<|endoftext|>" in r for r in row["responses"])
        assert len(row["finished"]) == 4 and all(isinstance(flag, bool) for flag in row["finished"])
    pairs = (out / "pairs" / "train.jsonl").read_text().splitlines()
    assert len(pairs) == sum(len(ranking_to_pairs(r)) for r in train) == summary["train_pairs"]
    assert json.loads((out / "summary.json").read_text())["num_responses"] == 4



def test_collections_in_one_and_two_sampling_processes_are_the_same(tmp_path, tiny_model_dir):
    prompts = [{"prompt": [{"role": "user", "content": f"Describe topic {i} in about 10 words."}]} for i in range(5)]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    settings = dict(prompts_dataset=str(data), prompts_split="train", max_new_tokens=10, batch_size=2, seed=5)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    _, one = run_collect(tmp_path / "one", tiny_model_dir, sampling_workers="1", **settings)
    _, two = run_collect(tmp_path / "two", tiny_model_dir, sampling_workers="2", **settings)
    assert one == two and one["train"]

def test_collect_config_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="num_responses"):
        CollectConfig(num_responses=12)
    for workers in ("0", "two", "-1"):
        with pytest.raises(ConfigError, match="sampling_workers"):
            CollectConfig(sampling_workers=workers)
    assert CollectConfig(sampling_workers="3").sampling_workers == "3"
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


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# Three prompts on tea with different instructions, one on owls; the responses break or keep each instruction.
SIBLING_GROUPS = [
    (
        _user("Describe tea in all lowercase letters."),
        ["tea is a drink made from dried leaves.", "Tea is a drink made from dried leaves."],
    ),
    (
        _user('Explain tea. Include the word "leaves".'),
        ["Tea is a hot drink from China.", "Tea is a drink made from leaves."],
    ),
    (
        _user("Tell me about tea in at most 8 words."),
        ["Tea is a hot drink.", "Tea is a hot drink that people in many countries enjoy every single day."],
    ),
    (_user("Describe owls in one sentence."), ["Owls hunt at night.", "Owls hunt at night. They fly silently."]),
]


def test_topic_groups_join_prompts_on_the_same_topic():
    assert topic_groups([p for p, _ in SIBLING_GROUPS]) == [[0, 1, 2]]


def test_sibling_rankings_rank_responses_again_under_sibling_prompts():
    labeler = SimulatedLabeler()
    rows = sibling_rankings(labeler, SIBLING_GROUPS, per_prompt=2, seed=0)
    # Every tea prompt's responses under both other tea prompts, unless they score alike there; none for owls.
    expected = {
        (j, i)
        for i in range(3)
        for j in range(3)
        if i != j and len({labeler.score(SIBLING_GROUPS[j][0][0]["content"], r) for r in SIBLING_GROUPS[i][1]}) == 2
    }
    found = {
        (
            SIBLING_GROUPS.index(next(g for g in SIBLING_GROUPS if g[0] == r["prompt"])),
            SIBLING_GROUPS.index(next(g for g in SIBLING_GROUPS if g[0] == r["sampled_for"])),
        )
        for r in rows
    }
    assert len(expected) >= 3 and found == expected and len(rows) == len(expected)
    for row in rows:
        source = next(g for g in SIBLING_GROUPS if g[0] == row["sampled_for"])
        assert row["prompt"] != row["sampled_for"] and row["responses"] == source[1]
        assert "tea" in row["prompt"][0]["content"] and "owls" not in row["prompt"][0]["content"]
        assert row["scores"] == [labeler.score(row["prompt"][0]["content"], r) for r in row["responses"]]
        assert len(set(row["scores"])) == 2
    # The length prompt's responses: the 5-word one wins under "at most 8 words", the long one under the lowercase
    # prompt (both capitalised once; the labeler's default length preference decides).
    under_lower = [r for r in rows if r["sampled_for"] == SIBLING_GROUPS[2][0] and r["prompt"] == SIBLING_GROUPS[0][0]]
    assert under_lower and under_lower[0]["ranking"][0] == 1
    assert labeler.rank(SIBLING_GROUPS[2][0][0]["content"], SIBLING_GROUPS[2][1])[0] == 0
    assert len(sibling_rankings(labeler, SIBLING_GROUPS, per_prompt=1, seed=0)) <= 3
    assert sibling_rankings(labeler, SIBLING_GROUPS, per_prompt=2, seed=0) == rows


COUNT_GROUPS = [
    (
        _user("Tell me about tea in about 5 words."),
        ["Tea is a hot drink.", "Tea is a hot drink that people in many countries enjoy every single day.", "Tea."],
    ),
    (_user("Describe owls in one sentence."), ["Owls hunt at night.", "Owls hunt at night. They fly silently."]),
    (_user("Describe tea in all lowercase letters."), ["tea is a drink.", "Tea is a drink."]),  # no count
]


def test_count_rankings_change_only_the_number_and_the_order_follows_it():
    labeler = SimulatedLabeler()
    rows = count_rankings(labeler, COUNT_GROUPS, per_prompt=5, seed=0)
    restated = {(r["sampled_for"][0]["content"], r["prompt"][0]["content"]) for r in rows}
    # Every number is one response's own count, never the prompt's own number; the lowercase prompt states none.
    assert restated == {
        ("Tell me about tea in about 5 words.", "Tell me about tea in about 14 words."),
        ("Tell me about tea in about 5 words.", "Tell me about tea in about 1 word."),
        ("Describe owls in one sentence.", "Describe owls in two sentences."),
    }
    for row in rows:
        source = next(g for g in COUNT_GROUPS if g[0] == row["sampled_for"])
        assert row["responses"] == source[1] and row["labeler"] == labeler.name
        assert row["scores"] == [labeler.score(row["prompt"][0]["content"], r) for r in row["responses"]]
    # The response whose count a restatement states wins under it: the order follows the number.
    winners = {r["prompt"][0]["content"]: r["responses"][r["ranking"][0]] for r in rows}
    assert winners["Tell me about tea in about 14 words."] == COUNT_GROUPS[0][1][1]
    assert winners["Tell me about tea in about 1 word."] == "Tea."
    assert winners["Describe owls in two sentences."] == COUNT_GROUPS[1][1][1]
    assert labeler.rank(COUNT_GROUPS[1][0][0]["content"], COUNT_GROUPS[1][1])[0] == 0  # and not under the original
    assert len(count_rankings(labeler, COUNT_GROUPS, per_prompt=1, seed=0)) == 2
    assert count_rankings(labeler, COUNT_GROUPS, per_prompt=5, seed=0) == rows


def test_count_rerankings_are_written_with_the_training_rankings(tmp_path):
    args = CollectConfig(count_reranks=5, flip_probe_size=0)
    summary = collect_recipe.rank_and_write(args, SimulatedLabeler(), COUNT_GROUPS[:2], COUNT_GROUPS[2:], tmp_path)
    train = [json.loads(x) for x in (tmp_path / "rankings" / "train.jsonl").read_text().splitlines()]
    recounted = [r for r in train if r.get("sampled_for")]
    assert summary["count_rankings"] == len(recounted) == 3 and summary["train_prompts"] == 2 + 3
    assert not (tmp_path / "rankings" / "test.jsonl").read_text().count("sampled_for")  # held-out stays as sampled
    summary = collect_recipe.rank_and_write(CollectConfig(), SimulatedLabeler(), COUNT_GROUPS[:2], [], tmp_path)
    assert summary["count_rankings"] == 0  # off by default
    with pytest.raises(ConfigError, match="count_reranks"):
        CollectConfig(count_reranks=-1)


def test_collect_ranks_an_earlier_collections_responses_again_without_sampling(tmp_path):
    owls = [(_user("Describe owls in one sentence."), ["Owls hunt at night.", "Owls hunt at night. They fly."])]
    cut = "Tea is a hot drink that people in many countries enjoy every single day."
    first = tmp_path / "first"
    collect_recipe.rank_and_write(
        CollectConfig(sibling_reranks=2), SimulatedLabeler(), SIBLING_GROUPS, owls, first, {cut}
    )
    before = {p: (first / p).read_bytes() for p in ("rankings/train.jsonl", "rankings/test.jsonl")}
    # No model exists at `model_name_or_path`: nothing is loaded or sampled.
    summary, rows = run_collect(
        tmp_path, tmp_path / "no-model", responses_from=str(first), count_reranks=2, flip_probe_size=10
    )
    originals = [r for r in rows["train"] if not r.get("sampled_for")]
    assert [(r["prompt"], r["responses"]) for r in originals] == [(p, r) for p, r in SIBLING_GROUPS]
    assert [(r["prompt"], r["responses"]) for r in rows["test"]] == owls  # the split as it was
    recounted = [r for r in rows["train"] if r.get("sampled_for") and "8 words" not in r["prompt"][0]["content"]]
    assert summary["count_rankings"] > 0 and summary["sibling_rankings"] == 0  # this run's settings, not the first's
    assert any("at most" in r["prompt"][0]["content"] for r in recounted)
    # The cut-off flags carry over: the long tea answer stays cut off wherever it is ranked.
    assert summary["cut_off_responses"] == 1
    assert all(f == (t != cut) for r in rows["train"] for t, f in zip(r["responses"], r["finished"], strict=True))
    assert summary["responses_from"] == str(first) and summary["num_responses"] == 2
    assert all((first / p).read_bytes() == b for p, b in before.items())  # the source is left as it was


def test_responses_from_refuses_bad_sources(tmp_path):
    first = tmp_path / "comparisons"
    start_stage(first, "collect")
    collect_recipe.rank_and_write(CollectConfig(), SimulatedLabeler(), SIBLING_GROUPS, [], first)
    finish_stage(first, "collect")  # a finished collection, which `make collect` could otherwise write again
    before = (first / "rankings" / "train.jsonl").read_bytes()
    with pytest.raises(OutputDirError, match="same folder"):
        run_collect(tmp_path, tmp_path / "no-model", responses_from=str(first))
    assert (first / "rankings" / "train.jsonl").read_bytes() == before
    with pytest.raises(MissingStageError, match="earlier `make collect`"):
        run_collect(tmp_path, tmp_path / "no-model", responses_from=str(tmp_path / "nowhere"))
    broken = tmp_path / "broken"
    write_jsonl(broken / "rankings" / "train.jsonl", [{"prompt": "Hi.", "responses": ["a", "b"], "finished": [True]}])
    write_jsonl(broken / "rankings" / "test.jsonl", [])
    with pytest.raises(DataError, match="Line 1 of .*one `finished` flag per response"):
        run_collect(tmp_path, tmp_path / "no-model", responses_from=str(broken))
    (broken / "rankings" / "train.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="Line 1 of .* is not JSON"):
        run_collect(tmp_path, tmp_path / "no-model", responses_from=str(broken))


def test_restated_prompt_keeps_the_other_messages():
    messages = [{"role": "system", "content": "Be brief."}, *_user("Describe owls in 3 sentences.")]
    assert restated_prompt(messages, 2) == [
        messages[0],
        {"role": "user", "content": "Describe owls in 2 sentences."},
    ]
    assert restated_prompt(messages, 3) is None  # the prompt's own number
    assert restated_prompt("Describe owls in 3 sentences.", 1) == "Describe owls in 1 sentence."


def test_flip_probe_items_reverse_under_the_labeler():
    labeler = SimulatedLabeler()
    items = flip_probe(labeler, SIBLING_GROUPS, max_items=100, seed=0)
    assert items
    for item in items:
        (a, b), (x, y) = item["prompts"], item["responses"]
        a, b = a[0]["content"], b[0]["content"]
        assert "tea" in a and "tea" in b and a != b
        assert labeler.score(a, x) - labeler.score(a, y) >= FLIP_MARGIN
        assert labeler.score(b, y) - labeler.score(b, x) >= FLIP_MARGIN
    # At most two items per pair of prompts (three pairs of tea prompts), and the cap holds.
    assert len(items) <= 6
    assert len(flip_probe(labeler, SIBLING_GROUPS, max_items=1, seed=0)) == 1
    # Without sibling prompts there is no probe.
    assert flip_probe(labeler, SIBLING_GROUPS[2:], max_items=100, seed=0) == []


def test_flip_rankings_train_on_both_orders_of_each_flip_item():
    labeler = SimulatedLabeler()
    rows = flip_rankings(labeler, SIBLING_GROUPS, max_items=100, seed=0)
    items = flip_probe(labeler, SIBLING_GROUPS, max_items=100, seed=0)
    assert items and len(rows) == 2 * len(items)
    for first, second in zip(rows[::2], rows[1::2], strict=True):
        # The same two responses under two sibling prompts, each prompt naming the other as its flipped twin.
        assert first["responses"] == second["responses"] and len(first["responses"]) == 2
        assert first["flipped_with"] == second["prompt"] and second["flipped_with"] == first["prompt"]
        # The labeler decides both orders, and they are opposite: no response-only trait gets both right.
        for row in (first, second):
            assert row["scores"] == [labeler.score(row["prompt"][0]["content"], r) for r in row["responses"]]
        assert first["ranking"] == [0, 1] and second["ranking"] == [1, 0]
        assert min(first["scores"][0] - first["scores"][1], second["scores"][1] - second["scores"][0]) >= FLIP_MARGIN
    assert len(flip_rankings(labeler, SIBLING_GROUPS, max_items=1, seed=0)) == 2
    assert flip_rankings(labeler, SIBLING_GROUPS[2:], max_items=100, seed=0) == []


def test_flip_items_are_written_from_the_training_prompts_only(tmp_path):
    # The tea prompts train, the owls prompts are held out; both topics have flip items.
    owls = [
        (_user("Describe owls in all lowercase letters."), ["owls hunt at night.", "Owls are birds of prey."]),
        (_user('Explain owls. Include the word "prey".'), ["Owls are birds of prey.", "owls hunt at night."]),
    ]
    args = CollectConfig(flip_pairs=100, sibling_reranks=0, flip_probe_size=100)
    summary = collect_recipe.rank_and_write(args, SimulatedLabeler(), SIBLING_GROUPS, owls, tmp_path)
    train = [json.loads(x) for x in (tmp_path / "rankings" / "train.jsonl").read_text().splitlines()]
    flipped = [r for r in train if r.get("flipped_with")]
    assert summary["flip_training_items"] > 0 and len(flipped) == 2 * summary["flip_training_items"]
    assert all("tea" in r["prompt"][0]["content"] and "tea" in r["flipped_with"][0]["content"] for r in flipped)
    assert summary["train_prompts"] == len(SIBLING_GROUPS) + len(flipped)
    probe = [json.loads(x) for x in (tmp_path / "probes" / "flip.jsonl").read_text().splitlines()]
    assert probe and all("owls" in p[0]["content"] for item in probe for p in item["prompts"])
    # Off by default.
    summary = collect_recipe.rank_and_write(CollectConfig(), SimulatedLabeler(), SIBLING_GROUPS, owls, tmp_path)
    assert summary["flip_training_items"] == 0


def test_collection_counts_the_prompts_whose_responses_all_tie(tmp_path):
    labeler = SimulatedLabeler()
    tied = (_user("Tell me about tea."), ["Tea is a drink made from leaves.", "Tea is a drink made from leaves."])
    groups = [*SIBLING_GROUPS, tied]
    summary = collect_recipe.rank_and_write(CollectConfig(sibling_reranks=0), labeler, groups, [], tmp_path)
    expected = sum(len({labeler.score(p[0]["content"], r) for r in responses}) == 1 for p, responses in groups)
    assert summary["tied_prompts"] == expected >= 1  # the duplicated answer, and any group the labeler scores alike


def test_rankings_record_which_responses_were_cut_off(tmp_path):
    """Every written ranking row, sibling re-rankings included, says which responses ended; without the cut-off
    texts (a caller that does not know) no row carries the field."""
    cut = "Tea is a hot drink that people in many countries enjoy every single day."
    assert mark_finished([{"responses": ["a ", cut]}], {cut}) == [
        {"responses": ["a ", cut], "finished": [True, False]}
    ]
    args = CollectConfig(sibling_reranks=2, flip_probe_size=0, test_fraction=0.34)
    summary = collect_recipe.rank_and_write(args, SimulatedLabeler(), SIBLING_GROUPS, [], tmp_path, {cut})
    rows = [
        json.loads(x)
        for s in ("train", "test")
        for x in (tmp_path / "rankings" / f"{s}.jsonl").read_text().splitlines()
    ]
    assert any(r.get("sampled_for") for r in rows) and all(len(r["finished"]) == len(r["responses"]) for r in rows)
    assert all(
        flag == (response != cut) for r in rows for response, flag in zip(r["responses"], r["finished"], strict=True)
    )
    assert summary["cut_off_responses"] == 1  # counted once, in the prompt it was sampled for
    collect_recipe.rank_and_write(args, SimulatedLabeler(), SIBLING_GROUPS, [], tmp_path)
    assert "finished" not in (tmp_path / "rankings" / "train.jsonl").read_text()


def test_collect_with_held_out_test_prompts_siblings_and_probe(tmp_path, tiny_model_dir):
    data = tmp_path / "prompts"
    train = [
        f"Describe {t} {how}"
        for t in ("tea", "owls", "maps")
        for how in ("in about 10 words.", 'and use the word "fact".')
    ]
    held_out = [f"Explain {t} {how}" for t in ("rain", "salt") for how in ("in lowercase.", "in one sentence.")]
    write_jsonl(data / "train.jsonl", [{"prompt": _user(t)} for t in train])
    write_jsonl(data / "test.jsonl", [{"prompt": _user(t)} for t in held_out])
    summary, rows = run_collect(
        tmp_path,
        tiny_model_dir,
        prompts_dataset=str(data),
        prompts_split="train",
        test_prompts_split="test",
        sibling_reranks=1,
        flip_pairs=50,
        num_responses=3,
        max_new_tokens=10,
        batch_size=5,
    )
    out = tmp_path / "comparisons"
    # The test split is exactly the held-out prompts; every training prompt is trained on, plus sibling rows.
    assert sorted(r["prompt"][0]["content"] for r in rows["test"]) == sorted(held_out)
    originals = [r for r in rows["train"] if not r.get("sampled_for") and not r.get("flipped_with")]
    assert sorted(r["prompt"][0]["content"] for r in originals) == sorted(train)
    siblings = [r for r in rows["train"] if r.get("sampled_for")]
    assert len(siblings) == summary["sibling_rankings"] <= len(train)
    for row in siblings:
        assert row["sampled_for"] != row["prompt"] and row["sampled_for"][0]["content"] in train
    # Flip items come from the training prompts only: the held-out topics stay unseen.
    flipped = [r for r in rows["train"] if r.get("flipped_with")]
    assert len(flipped) == 2 * summary["flip_training_items"]
    for row in flipped:
        assert row["prompt"][0]["content"] in train and row["flipped_with"][0]["content"] in train
    assert (out / "probes" / "flip.jsonl").is_file()
    assert summary["flip_probe_items"] == len((out / "probes" / "flip.jsonl").read_text().splitlines())
    shares = summary["pairs_decided_by"]
    assert shares and sum(shares.values()) == pytest.approx(1.0, abs=1e-3)


def test_human_collection_says_which_labeler_settings_it_skips(tmp_path, tiny_model_dir, capsys):
    prompts = [{"prompt": _user(f"Describe topic {i} briefly.")} for i in range(4)]
    data = write_jsonl(tmp_path / "prompts.jsonl", prompts)
    summary, _ = run_collect(
        tmp_path,
        tiny_model_dir,
        prompts_dataset=str(data),
        prompts_split="train",
        labeler="human",
        sibling_reranks=1,
        flip_pairs=5,
        flip_probe_size=0,
        num_responses=3,
        max_new_tokens=8,
        batch_size=4,
        test_fraction=0.25,
    )
    out = capsys.readouterr().out
    notice = [line for line in out.splitlines() if "`labeler: human`" in line]
    assert len(notice) == 1 and "(sibling_reranks: 1, flip_pairs: 5)" in notice[0], out
    assert summary["tasks"] >= 1 and "sibling_rankings" not in summary
