"""The shipped default data: files exist and parse, splits are disjoint, demos are good, regeneration is exact."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from instructrl.data import DEFAULT_DATA_DIR, DEFAULT_DATA_FILES, default_data_file
from instructrl.labeler import SimulatedLabeler

REPO_ROOT = Path(__file__).resolve().parents[1]
TRAINING_SPLITS = ("sft_train", "sft_eval", "comparison_prompts", "ppo_prompts")
# Held-out topics and phrasings: the evaluation's prompts, and the reward model's validation prompts (none of eval's).
HELDOUT_SPLITS = ("eval_prompts", "validation_prompts")
PROMPT_SPLITS = TRAINING_SPLITS + HELDOUT_SPLITS


def _rows(name: str) -> list[dict]:
    with default_data_file(name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _prompt_text(row: dict) -> str:
    return row["prompt"][0]["content"]


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_default_data", REPO_ROOT / "scripts" / "make_default_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_data_file_names():
    assert default_data_file("sft_train") == DEFAULT_DATA_DIR / "sft_train.jsonl"
    with pytest.raises(ValueError, match=r"'nope'.*ppo_prompts"):
        default_data_file("nope")


@pytest.mark.parametrize("name", sorted(DEFAULT_DATA_FILES))
def test_files_exist_and_have_documented_columns(name):
    rows = _rows(name)
    assert rows, name
    if name.startswith("ptx"):
        for row in rows:
            assert set(row) == {"text"}
            assert 200 <= len(row["text"]) <= 1200
        return
    for row in rows:
        assert set(row) == ({"prompt", "completion"} if name.startswith("sft") else {"prompt"})
        assert row["prompt"] == [{"role": "user", "content": row["prompt"][0]["content"]}]
        assert row["prompt"][0]["content"].strip()
        if "completion" in row:
            assert row["completion"] == [{"role": "assistant", "content": row["completion"][0]["content"]}]


def test_row_counts_match_readme():
    readme = (DEFAULT_DATA_DIR / "README.md").read_text(encoding="utf-8")
    for name, filename in DEFAULT_DATA_FILES.items():
        match = re.search(rf"\| `{re.escape(filename)}` \| (\d+) \|", readme)
        assert match, f"{filename} missing from README.md"
        assert int(match.group(1)) == len(_rows(name))


def test_prompt_splits_are_disjoint():
    prompts = {name: [_prompt_text(r) for r in _rows(name)] for name in PROMPT_SPLITS}
    for name, texts in prompts.items():
        assert len(set(texts)) == len(texts), f"duplicate prompts within {name}"
    all_texts = [t for texts in prompts.values() for t in texts]
    assert len(set(all_texts)) == len(all_texts)


def test_eval_and_validation_prompts_use_held_out_topics():
    generator = _load_generator()
    topics = generator.parse_topics()

    def topic_of(prompt: str) -> str:
        # The longest match, so that "rain forests" is not read as "forests"; quoted words are constraints.
        prompt = re.sub(r'"[^"]*"', " ", prompt)
        return max((t for t in topics if re.search(rf"\b{re.escape(t)}\b", prompt)), key=len)

    def topics_of(name: str) -> set[str]:
        return {topic_of(_prompt_text(row)) for row in _rows(name)}

    for heldout in HELDOUT_SPLITS:
        heldout_topics = topics_of(heldout)
        assert len(heldout_topics) >= 5, heldout
        for name in TRAINING_SPLITS:
            assert not heldout_topics & topics_of(name), (heldout, name)


def test_ptx_eval_is_disjoint_from_train():
    train = {r["text"] for r in _rows("ptx_train")}
    assert not train & {r["text"] for r in _rows("ptx_eval")}


def test_every_demo_scores_high():
    labeler = SimulatedLabeler()
    for name in ("sft_train", "sft_eval"):
        for row in _rows(name):
            score = labeler.score(_prompt_text(row), row["completion"][0]["content"])
            assert score >= 0.85, (name, row)


def test_demos_beat_bad_responses():
    labeler = SimulatedLabeler()
    rows = _rows("sft_eval")
    for row in rows:
        prompt, demo = _prompt_text(row), row["completion"][0]["content"]
        rambling = "Sure! Here is what I know. " + " ".join([demo.replace("\n", " ")] * 3) + " It is also"
        assert labeler.score(prompt, demo) > labeler.score(prompt, rambling) + 0.3


def test_regeneration_is_byte_identical(tmp_path):
    readme = (DEFAULT_DATA_DIR / "README.md").read_text(encoding="utf-8")
    recorded = re.search(r"on Python (\d+)\.(\d+)", readme)
    assert recorded, "README.md does not record the Python version"
    if tuple(map(int, recorded.groups())) != sys.version_info[:2]:
        pytest.skip(f"data generated on Python {'.'.join(recorded.groups())}; the ptx text differs between versions")
    _load_generator().main(["--out", str(tmp_path)])
    for path in sorted(DEFAULT_DATA_DIR.glob("*.jsonl")) + [DEFAULT_DATA_DIR / "README.md"]:
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name


def test_every_kind_of_constraint_is_taught_and_eval_adds_held_out_phrasings():
    from instructrl.labeler import INSTRUCTION_KINDS, instruction_kinds

    generator = _load_generator()
    counts: dict[str, int] = {}
    for row in _rows("sft_train"):
        for kind in instruction_kinds(_prompt_text(row)):
            counts[kind] = counts.get(kind, 0) + 1
    assert set(counts) == {*INSTRUCTION_KINDS, "include", "none"}
    assert min(counts.values()) >= 20, counts
    # No kind of constraint dominates the demonstrations (the old data asked for a length in 85% of prompts).
    assert max(counts.values()) <= 0.3 * len(_rows("sft_train")), counts
    templates = [h for _, held in generator.PHRASES.values() for h in held] + list(generator.HELDOUT_TASK_TEMPLATES)
    slots = {"{n}": r"[\w-]+", "{s}": "s?", "{w}": '[^"]+', "{topic}": ".+"}

    def pattern(template: str) -> re.Pattern:
        text = re.escape(template)
        for slot, regex in slots.items():
            text = text.replace(re.escape(slot), regex)
        return re.compile(rf"\b{text}", re.IGNORECASE)

    held_out = [pattern(t) for t in templates]

    def uses_held_out(text: str) -> bool:
        return any(p.search(text) for p in held_out)

    for name in TRAINING_SPLITS:
        assert not any(uses_held_out(_prompt_text(r)) for r in _rows(name)), name
    assert sum(uses_held_out(_prompt_text(r)) for r in _rows("eval_prompts")) >= 20
    assert sum(uses_held_out(_prompt_text(r)) for r in _rows("validation_prompts")) >= 10


def test_default_rm_validation_prompts_are_not_evaluation_prompts():
    """The RM's held-out comparisons (what RM settings are chosen by) are sampled for prompts the evaluation never
    uses, so no setting is chosen by the labeler's reading of evaluation prompts."""
    import yaml

    from instructrl.data.loading import load_data

    recipes = REPO_ROOT / "recipes" / "smollm2-135m"
    collect = yaml.safe_load((recipes / "collect" / "config_k4.yaml").read_text())
    evaluation = yaml.safe_load((recipes / "eval" / "config_default.yaml").read_text())
    validation = load_data(collect["prompts_dataset"], collect["test_prompts_split"])["prompt"]
    evaluated = load_data(evaluation["prompts_dataset"], evaluation["prompts_split"])["prompt"]
    assert len(validation) >= collect["num_test_prompts"]
    assert not {_prompt_text({"prompt": p}) for p in validation} & {_prompt_text({"prompt": p}) for p in evaluated}
