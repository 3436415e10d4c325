"""Bad input, as a user gives it: one line on stderr naming the problem, a non-zero exit, no traceback, nothing lost.

Every case runs a recipe's real entry point (`__main__`, through `instructrl.cli`) on a tiny model. Its output
directory already holds an earlier result, which must be byte-identical afterwards.
"""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import RECIPES, write_config, write_jsonl
from instructrl.cli import DEBUG_ENV
from instructrl.runs import COMPLETE, OVERWRITE_ENV, RUNNING, finish_stage, write_json
from ppo_fixtures import make_adapters

STAGE_OF = {"sft": "sft", "rm": "rm", "ppo": "ppo", "eval": "eval", "collect": "collect", "rm_eval": "rm_eval"}
PROMPT = [{"role": "user", "content": "Describe tea in one sentence."}]
BROKEN_SECOND_LINE = json.dumps({"prompt": "a", "completion": "b"}) + '\n{"prompt": \n'
NAN_SCORE = '{"prompt": "p", "responses": ["a", "b"], "scores": [1, NaN]}\n'
INF_SCORE = '{"prompt": "p", "responses": ["a", "b"], "scores": [Infinity, 0]}\n'


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir, tokenizer):
    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"), tokenizer)


class Case:
    """A recipe, its valid base settings in `tmp`, and what one case changes."""

    def __init__(self, tmp: Path, model_dir: Path, sft: Path, rm: Path):
        self.tmp, self.model_dir, self.sft, self.rm = tmp, model_dir, sft, rm
        self.out = tmp / "out"
        demos = [{"prompt": PROMPT, "completion": [{"role": "assistant", "content": "Tea is a drink."}]}] * 4
        self.demos = write_jsonl(tmp / "demos.jsonl", demos)
        self.prompts = write_jsonl(tmp / "prompts.jsonl", [{"prompt": PROMPT}] * 4)
        self.text = write_jsonl(tmp / "text.jsonl", [{"text": "Rivers run to the sea, slowly and surely."}] * 4)
        ranking = {"prompt": PROMPT, "responses": ["Tea is a drink.", "Tea."], "scores": [1.0, 0.0]}
        self.rankings = write_jsonl(tmp / "rankings.jsonl", [ranking] * 4)

    def sft_config_only(self, weights: str | None) -> Path:
        """A copy of the SFT adapter's config beside `weights` (a file name) or no weights file at all."""
        adapter = self.tmp / "partial-sft"
        adapter.mkdir()
        (adapter / "adapter_config.json").write_bytes((self.sft / "adapter_config.json").read_bytes())
        if weights:
            (adapter / weights).write_bytes(b"pickled")
        return adapter

    def settings(self, recipe: str) -> dict:
        model = {"model_name_or_path": str(self.model_dir)}
        lora = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"]}
        train = {"report_to": "none", "save_strategy": "no", "max_steps": 1, "gradient_checkpointing": False}
        out = {"output_dir": str(self.out)}
        return {
            "sft": {**model, **lora, **train, **out, "dataset_name": str(self.demos), "dataset_num_proc": None},
            "rm": {**model, **lora, **train, **out, "dataset_name": str(self.rankings)},
            "ppo": {
                **model,
                **out,
                "sft_model_path": str(self.sft),
                "reward_model_path": str(self.rm),
                "dataset_name": str(self.prompts),
                "total_episodes": 4,
                "per_device_train_batch_size": 2,
                "num_mini_batches": 1,
                "local_rollout_forward_batch_size": 2,
                "response_length": 4,
                "ptx_coef": 1.0,
                "ptx_dataset_name": str(self.text),
                "report_to": "none",
                "save_strategy": "no",
                "num_sample_generations": 0,
            },
            "eval": {
                **model,
                **out,
                "policies": [f"sft={self.sft}"],
                "reference": "sft",
                "reward_model_path": str(self.rm),
                "prompts_dataset": str(self.prompts),
                "ptx_dataset_name": str(self.text),
                "num_prompts": 2,
            },
            "collect": {
                **model,
                **out,
                "sft_adapter_path": str(self.sft),
                "prompts_dataset": str(self.prompts),
                "num_prompts": 2,
            },
            "rm_eval": {
                **model,
                **out,
                "reward_model_path": str(self.rm),
                "dataset_name": str(self.rankings),
                "dataset_split": "train",
            },
        }[recipe]

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)


# (id, recipe, changes(case) -> settings to override (None removes a key), extra argv; text the error line must hold)
CASES = [
    ("missing data file", "sft", lambda c: {"dataset_name": str(c.tmp / "nope.jsonl")}, "nope.jsonl"),
    (
        "malformed JSON line",
        "sft",
        lambda c: {"dataset_name": c.file("bad.jsonl", BROKEN_SECOND_LINE)},
        "line 2",
    ),
    ("empty data file", "sft", lambda c: {"dataset_name": c.file("empty.jsonl", "\n")}, "is empty: it holds no rows"),
    ("binary data file", "sft", lambda c: {"dataset_name": c.file("blob.jsonl", bytes(range(256)) * 4)}, "UTF-8"),
    (
        "wrong columns",
        "sft",
        lambda c: {"dataset_name": str(write_jsonl(c.tmp / "cols.jsonl", [{"question": "q", "answer": "a"}]))},
        "needs (prompt, completion)",
    ),
    (
        "wrong types",
        "sft",
        lambda c: {"dataset_name": str(write_jsonl(c.tmp / "types.jsonl", [{"prompt": 3, "completion": 4}]))},
        "column 'prompt': expected text or a list of {'role': ..., 'content': ...} messages, got int",
    ),
    ("YAML typo", "sft", lambda c: {"learning_rat": 0.1}, "did you mean 'learning_rate'"),
    ("bad YAML", "sft", lambda c: "model_name_or_path: [unclosed\n", "not valid YAML"),
    ("bad model path", "sft", lambda c: {"model_name_or_path": str(c.tmp / "no-model")}, "no-model"),
    ("bad number", "sft", lambda c: {"learning_rate": "fast"}, "invalid float value: 'fast'"),
    (
        "NaN score",
        "rm",
        lambda c: {"dataset_name": c.file("nan.jsonl", NAN_SCORE)},
        "score 1 is nan",
    ),
    (
        "infinite score",
        "rm",
        lambda c: {"dataset_name": c.file("inf.jsonl", INF_SCORE)},
        "score 0 is inf",
    ),
    (
        "text scores",
        "rm",
        lambda c: {
            "dataset_name": str(
                write_jsonl(c.tmp / "s.jsonl", [{"prompt": "p", "responses": ["a", "b"], "scores": ["hi", "lo"]}])
            )
        },
        "score 0 is 'hi', not a number",
    ),
    (
        "repeated response",
        "rm",
        lambda c: {
            "dataset_name": str(
                write_jsonl(c.tmp / "d.jsonl", [{"prompt": "p", "responses": ["a", "b", "a "], "scores": [2, 1, 0]}])
            )
        },
        "response 2 repeats response 0",
    ),
    (
        "empty response",
        "rm",
        lambda c: {
            "dataset_name": str(
                write_jsonl(c.tmp / "e.jsonl", [{"prompt": "p", "responses": ["a", " "], "scores": [1, 0]}])
            )
        },
        "response 1 is empty",
    ),
    (
        "identical pair",
        "rm",
        lambda c: {
            "dataset_name": str(write_jsonl(c.tmp / "p.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}]))
        },
        "chosen and rejected are the same",
    ),
    ("RM path holds an SFT adapter", "ppo", lambda c: {"reward_model_path": str(c.sft)}, "not a reward-model adapter"),
    (
        "bad ptx data",
        "ppo",
        lambda c: {"ptx_dataset_name": str(write_jsonl(c.tmp / "ptx.jsonl", [{"content": "x"}]))},
        "text",
    ),
    ("negative coefficient", "ppo", lambda c: {"ptx_coef": -1}, "`ptx_coef` is -1 but must be >= 0"),
    ("negative warm-up", "ppo", lambda c: {"value_warmup_updates": -1}, "`value_warmup_updates` is -1 but must be"),
    ("negative held-out samples", "ppo", lambda c: {"heldout_samples": -2}, "`heldout_samples` is -2 but must be"),
    (
        "unknown truncated reward",
        "ppo",
        lambda c: {"truncated_reward": "zero"},
        "`truncated_reward` is 'zero'; choose",
    ),
    (
        "neutral truncated reward without a stop token",
        "ppo",
        lambda c: {"truncated_reward": "neutral", "stop_token": None},
        "`truncated_reward: neutral` needs a stop token",
    ),
    ("unknown value head init", "ppo", lambda c: {"value_head_init": "random"}, "`value_head_init` is 'random'"),
    (
        "unknown length correction",
        "ppo",
        lambda c: {"length_correction": "sfft"},
        "`length_correction` is 'sfft'; choose",
    ),
    (
        "length correction without a stop token",
        "ppo",
        lambda c: {"length_correction": "sft", "stop_token": None},
        "`length_correction: sft` needs a stop token",
    ),
    (
        "length correction from one sample per prompt",
        "ppo",
        lambda c: {"length_correction": "sft", "length_correction_samples": 1},
        "`length_correction_samples` is 1 but must be >= 2",
    ),
    ("warm-up without policy updates", "ppo", lambda c: {"value_warmup_updates": 2}, "leaves no update"),
    ("unknown ensemble", "ppo", lambda c: {"reward_ensemble": "max"}, "`reward_ensemble` is 'max'; choose one of"),
    (
        "missing ensemble member",
        "ppo",
        lambda c: {"reward_adapters": [str(c.tmp / "rm2")]},
        "No reward-model adapter at",
    ),
    ("RM init from nothing", "rm", lambda c: {"init_adapter": str(c.tmp / "none")}, "holds no LoRA adapter"),
    ("missing SFT adapter", "collect", lambda c: {"sft_adapter_path": str(c.tmp / "none")}, "Run `make sft` first"),
    (
        "SFT adapter saved as a pickle",
        "collect",
        lambda c: {"sft_adapter_path": str(c.sft_config_only("adapter_model.bin"))},
        "only as the pickle adapter_model.bin, which instructrl does not load (safetensors only)",
    ),
    (
        "SFT adapter without weights",
        "ppo",
        lambda c: {"sft_model_path": str(c.sft_config_only(None))},
        "has adapter_config.json but no adapter_model.safetensors",
    ),
    (
        "missing policy adapter",
        "eval",
        lambda c: {"policies": [f"sft={c.sft}", f"ppo_ptx={c.tmp / 'none'}"]},
        "Run `make ppo` first",
    ),
    ("unknown labeler", "eval", lambda c: {"labeler": "oracle"}, "Unknown labeler 'oracle': set `labeler` to one of"),
    ("RM-eval NaN score", "rm_eval", lambda c: {"dataset_name": c.file("nan.jsonl", NAN_SCORE)}, "score 1 is nan"),
    ("RM-eval member is the SFT adapter", "rm_eval", lambda c: {"reward_adapters": [str(c.sft)]}, "no score head"),
    (
        "RM-eval flip probe row",
        "rm_eval",
        lambda c: {"flip_probe": str(write_jsonl(c.tmp / "flip.jsonl", [{"prompts": ["a", "b"]}]))},
        "needs `prompts` and `responses`, two of each",
    ),
    ("RM-eval unknown ensemble", "rm_eval", lambda c: {"reward_ensemble": "max"}, "`reward_ensemble` is 'max'"),
    ("RM-eval missing RM", "rm_eval", lambda c: {"reward_model_path": str(c.tmp / "none")}, "Run `make rm` first"),
]


def run_main(recipe: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run `recipes/<recipe>.py` as `python recipes/<recipe>.py ARGV` would, in this process."""
    saved = sys.argv
    sys.argv = [str(RECIPES / f"{recipe}.py"), *argv]
    capsys.readouterr()
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv = saved
    return code, capsys.readouterr().err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_one_error_line(code: int, stderr: str, expected: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("instructrl: error:")]
    assert code == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert len(errors) == 1, stderr
    assert expected in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("name, recipe, change, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    name, recipe, change, expected, tmp_path, tiny_model_dir, adapters, capsys, monkeypatch
):
    monkeypatch.delenv(OVERWRITE_ENV, raising=False)
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    case = Case(tmp_path, tiny_model_dir, *adapters)
    # An earlier run of the same stage: a new run may replace it, but a failing one must leave it alone.
    case.out.mkdir()
    (case.out / "earlier_result.bin").write_bytes(b"\x00earlier")
    finish_stage(case.out, STAGE_OF[recipe])
    before = snapshot(case.out)
    changes = change(case)
    if isinstance(changes, str):  # the config file's text itself
        config = case.file("config.yaml", changes)
    else:
        settings = {**case.settings(recipe), **changes}
        config = str(write_config(tmp_path / "config.yaml", **{k: v for k, v in settings.items() if v is not None}))
    code, stderr = run_main(recipe, ["--config", config], capsys)
    assert_one_error_line(code, stderr, expected)
    assert snapshot(case.out) == before


@pytest.mark.parametrize(
    "recipe, owner, expected",
    [
        ("rm", "sft", "holds the finished outputs of the sft stage"),
        ("sft", None, "no instructrl stage wrote it (it holds notes.txt)"),
        ("eval", "live", "is being written by the eval stage in process"),
    ],
)
def test_a_directory_owned_by_something_else_is_refused(
    recipe, owner, expected, tmp_path, tiny_model_dir, adapters, capsys, monkeypatch
):
    monkeypatch.delenv(OVERWRITE_ENV, raising=False)
    case = Case(tmp_path, tiny_model_dir, *adapters)
    case.out.mkdir()
    (case.out / "notes.txt").write_text("someone's notes")
    if owner == "live":  # another terminal running the same stage: this test's parent process is alive
        write_json(case.out / RUNNING, {"stage": "eval", "pid": os.getppid(), "started": 0.0})
    elif owner is not None:
        finish_stage(case.out, owner)
    before = snapshot(case.out)
    config = write_config(tmp_path / "config.yaml", **case.settings(recipe))
    code, stderr = run_main(recipe, ["--config", str(config)], capsys)
    assert_one_error_line(code, stderr, expected)
    assert snapshot(case.out) == before
    if owner == "live":
        # Not even --overwrite interleaves two processes' writes.
        code, stderr = run_main(recipe, ["--config", str(config), "--overwrite"], capsys)
        assert_one_error_line(code, stderr, "is being written")


def test_overwrite_lets_a_stage_replace_another_stages_output(tmp_path, tiny_model_dir, adapters, capsys, monkeypatch):
    monkeypatch.delenv(OVERWRITE_ENV, raising=False)
    case = Case(tmp_path, tiny_model_dir, *adapters)
    case.out.mkdir()
    finish_stage(case.out, "rm")
    config = write_config(tmp_path / "config.yaml", **case.settings("sft"))
    code, stderr = run_main("sft", ["--config", str(config), "--overwrite"], capsys)
    assert code == 0, stderr
    marker = json.loads((case.out / COMPLETE).read_text())
    assert marker["stage"] == "sft" and (case.out / "adapter_model.safetensors").is_file()


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    code, stderr = run_main("sft", ["--config", str(tmp_path / "missing.yaml")], capsys)
    assert_one_error_line(code, stderr, "missing.yaml")
    with pytest.raises(Exception, match="missing.yaml"):
        run_main("sft", ["--config", str(tmp_path / "missing.yaml"), "--debug"], capsys)
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(Exception, match="missing.yaml"):
        run_main("sft", ["--config", str(tmp_path / "missing.yaml")], capsys)


@pytest.mark.parametrize("recipe", ["sft", "collect", "rm", "ppo", "eval", "rm_eval", "pipeline"])
def test_every_recipe_process_prints_one_line(recipe, tmp_path):
    """The real process, as a user starts it: exit 1, the last stderr line is the error, no traceback."""
    env = {k: v for k, v in os.environ.items() if k != DEBUG_ENV}
    result = subprocess.run(
        [sys.executable, str(RECIPES / f"{recipe}.py"), "--config", str(tmp_path / "typo.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("instructrl: error:") and "typo.yaml" in last, result.stderr
