"""The pipeline's skip / restart / force logic, on real SFT and collection stages with the tiny model."""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import transformers
import yaml

from helpers import write_config, write_jsonl
from instructrl import modeling
from instructrl.errors import ConfigError
from instructrl.memory import Shape
from instructrl.pipeline import (
    STAGE_BYTES_PER_PARAM,
    PipelineError,
    auto_jobs,
    in_process_runner,
    load_pipeline,
    parallel_width,
    plan,
    run_pipeline,
    stage_state,
    subprocess_runner,
)
from instructrl.runs import COMPLETE, RUNNING, latest_complete_checkpoint, start_stage
from test_sft import demo_rows, sft_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def tiny_pipeline(tmp_path, tiny_model_dir):
    """A two-stage pipeline file: SFT on 8 demonstrations, then K=2 comparisons from the SFT policy."""
    demos = write_jsonl(tmp_path / "demos.jsonl", demo_rows(8))
    sft_yaml = sft_config(tmp_path, tiny_model_dir, demos, max_steps=2, output_dir=str(tmp_path / "out" / "sft"))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": [{"role": "user", "content": f"Describe topic {i} in about 10 words."}]} for i in range(4)],
    )
    collect_yaml = write_config(
        tmp_path / "collect.yaml",
        model_name_or_path=str(tiny_model_dir),
        sft_adapter_path=str(tmp_path / "out" / "sft"),
        prompts_dataset=str(prompts),
        prompts_split="train",
        num_responses=2,
        max_new_tokens=4,
        test_fraction=0.25,
        output_dir=str(tmp_path / "out" / "collect"),
    )
    stages = [
        {"name": "sft", "recipe": "recipes/sft.py", "config": str(sft_yaml)},
        {"name": "collect", "recipe": "recipes/collect.py", "config": str(collect_yaml), "after": ["sft"]},
    ]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    return path


def actions(records):
    return [r["action"] for r in records]


def test_pipeline_skips_restarts_and_forces(tiny_pipeline, tmp_path):
    stages = load_pipeline(tiny_pipeline, root=REPO)
    sft_dir, collect_dir = (s.output_dir for s in stages)

    first = run_pipeline(stages, runner=in_process_runner, launcher=[], log_file=tmp_path / "times.json")
    assert actions(first) == ["ran (missing)", "ran (missing)"]
    assert stage_state(sft_dir)[0] == stage_state(collect_dir)[0] == "complete"
    assert (tmp_path / "times.json").is_file()
    adapter_mtime = (sft_dir / "adapter_model.safetensors").stat().st_mtime_ns

    # Everything finished: nothing runs, nothing is rewritten.
    assert actions(run_pipeline(stages, runner=in_process_runner, launcher=[])) == ["skipped", "skipped"]
    assert (sft_dir / "adapter_model.safetensors").stat().st_mtime_ns == adapter_mtime

    # A collection run killed half way: its marker says running, its files are partial.
    start_stage(collect_dir, "collect")
    (collect_dir / "partial.jsonl").write_text("half a row")
    assert stage_state(collect_dir)[0] == "interrupted"
    again = run_pipeline(stages, runner=in_process_runner, launcher=[])
    assert actions(again) == ["skipped", "ran (interrupted)"]
    assert not (collect_dir / "partial.jsonl").exists() and not (collect_dir / RUNNING).exists()
    assert (collect_dir / "rankings" / "train.jsonl").is_file()

    # Forcing SFT redoes it and makes the collection downstream of it stale.
    assert [reason for _, reason in plan(stages, ["sft"])] == ["forced", "stale"]
    with pytest.raises(ConfigError, match="Cannot force"):
        plan(stages, ["rl"])
    # A stage finished before its input was redone is stale too (as `make` compares timestamps).
    complete = json.loads((sft_dir / COMPLETE).read_text())
    complete["finished"] += 1e6
    (sft_dir / COMPLETE).write_text(json.dumps(complete))
    assert [reason for _, reason in plan(stages)] == ["skip", "stale"]


def test_a_stage_whose_settings_changed_runs_again(tiny_pipeline):
    stages = load_pipeline(tiny_pipeline, root=REPO)
    run_pipeline(stages, runner=in_process_runner, launcher=[])
    sft_config = stages[0].config
    original = sft_config.read_text()
    # A comment is not a setting: nothing to redo.
    sft_config.write_text("# Tested on: a new machine\n" + original)
    assert [reason for _, reason in plan(stages)] == ["skip", "skip"]
    # A changed setting reruns the stage and what follows it.
    values = yaml.safe_load(original)
    sft_config.write_text(yaml.safe_dump({**values, "learning_rate": values["learning_rate"] * 2}))
    assert [reason for _, reason in plan(stages)] == ["changed", "stale"]
    sft_config.write_text(original)
    assert [reason for _, reason in plan(stages)] == ["skip", "skip"]


def test_finished_stages_ignore_bookkeeping_settings_and_old_records_still_match(tiny_pipeline):
    stages = load_pipeline(tiny_pipeline, root=REPO)
    run_pipeline(stages, runner=in_process_runner, launcher=[])
    sft = stages[0]
    original = sft.config.read_text()
    values = yaml.safe_load(original)
    # How often a stage checkpoints or logs, or how many processes sample, is not what it computes: nothing to redo.
    bookkeeping = {"save_strategy": "steps", "save_steps": 7, "logging_steps": 3, "sampling_workers": "2"}
    sft.config.write_text(yaml.safe_dump({**values, **bookkeeping}))
    assert [reason for _, reason in plan(stages)] == ["skip", "skip"]
    sft.config.write_text(original)
    # A record written before the bookkeeping keys were left out (no version) is compared the old way.
    record = sft.output_dir / ".instructrl-config.json"
    assert json.loads(record.read_text())["version"] == 2
    record.write_text(json.dumps({"config": str(sft.config), "sha256": sft.settings_digest(version=1)}))
    assert [reason for _, reason in plan(stages)] == ["skip", "skip"]
    record.write_text(json.dumps({"config": str(sft.config), "sha256": sft.settings_digest(version=2)}))
    assert [reason for _, reason in plan(stages)] == ["changed", "stale"]


def interrupt_after(stage, step: int) -> None:
    """Turn a finished stage into one interrupted after checkpoint `step`: later checkpoints and the final outputs
    gone, the running marker (settings as the pipeline recorded them) left by a process that no longer exists."""
    for path in stage.output_dir.glob("checkpoint-*"):
        if int(path.name.split("-")[1]) > step:
            shutil.rmtree(path)
    for name in (COMPLETE, "adapter_model.safetensors", "trainer_state.json"):
        (stage.output_dir / name).unlink(missing_ok=True)
    marker = {"stage": stage.kind, "started": 0.0, "pid": 0, "settings": stage.settings_digest()}
    (stage.output_dir / RUNNING).write_text(json.dumps(marker))


def test_an_interrupted_training_stage_resumes_from_its_newest_checkpoint(tiny_pipeline, monkeypatch):
    stages = load_pipeline(tiny_pipeline, root=REPO)
    sft = stages[0]
    values = yaml.safe_load(sft.config.read_text())
    sft.config.write_text(yaml.safe_dump({**values, "max_steps": 3, "save_strategy": "steps", "save_steps": 1}))
    resumed_from, marked = [], []
    real_train = transformers.Trainer.train

    def train(self, *args, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        marked.append(json.loads((sft.output_dir / RUNNING).read_text()).get("settings"))
        return real_train(self, *args, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", train)
    run_pipeline(stages[:1], runner=in_process_runner, launcher=[])
    assert [p.name for p in sorted(sft.output_dir.glob("checkpoint-*"))] == [f"checkpoint-{i}" for i in (1, 2, 3)]
    # While it trains, the stage's running marker holds the digest of the settings the pipeline runs it with.
    assert resumed_from == [None] and marked == [sft.settings_digest()]
    resumed_from.clear()
    interrupt_after(sft, 2)
    records = run_pipeline(stages[:1], runner=in_process_runner, launcher=[])
    assert actions(records) == ["ran (interrupted, resuming from checkpoint-2)"]
    assert resumed_from == [str(sft.output_dir / "checkpoint-2")]
    assert stage_state(sft.output_dir)[0] == "complete" and (sft.output_dir / "adapter_model.safetensors").is_file()
    assert json.loads((sft.output_dir / "trainer_state.json").read_text())["global_step"] == 3

    # Interrupted, then its settings edited: the checkpoints were made with others, so it starts over.
    interrupt_after(sft, 2)
    values = yaml.safe_load(sft.config.read_text())
    sft.config.write_text(yaml.safe_dump({**values, "learning_rate": values["learning_rate"] / 2}))
    resumed_from.clear()
    assert actions(run_pipeline(stages[:1], runner=in_process_runner, launcher=[])) == ["ran (interrupted)"]
    assert resumed_from == [None]
    # Interrupted before its first checkpoint: starts over too.
    interrupt_after(sft, 0)
    resumed_from.clear()
    assert actions(run_pipeline(stages[:1], runner=in_process_runner, launcher=[])) == ["ran (interrupted)"]
    assert resumed_from == [None]


def test_pipeline_refuses_a_directory_it_did_not_write(tiny_pipeline):
    stages = load_pipeline(tiny_pipeline, root=REPO)
    stages[0].output_dir.mkdir(parents=True)
    (stages[0].output_dir / "my_notes.txt").write_text("keep me")
    with pytest.raises(PipelineError, match="Move that directory away"):
        run_pipeline(stages, runner=in_process_runner, launcher=[])
    assert (stages[0].output_dir / "my_notes.txt").read_text() == "keep me"


def test_a_failing_stage_stops_the_pipeline_and_is_retried(tmp_path):
    out = tmp_path / "out"
    script = tmp_path / "stage.py"
    # Fails on its first run (after marking its directory), succeeds on the second.
    script.write_text(
        "import sys, pathlib\n"
        "from instructrl.runs import start_stage, finish_stage\n"
        f"out = pathlib.Path({str(out)!r}); flag = out.parent / 'failed-once'\n"
        "start_stage(out, 'toy')\n"
        "if not flag.exists():\n"
        "    flag.write_text('x'); sys.exit(3)\n"
        "finish_stage(out, 'toy')\n"
    )
    config = write_config(tmp_path / "toy.yaml", output_dir=str(out))
    (tmp_path / "pipeline.yaml").write_text(
        yaml.safe_dump({"stages": [{"name": "toy", "recipe": str(script), "config": str(config)}]})
    )
    stages = load_pipeline(tmp_path / "pipeline.yaml", root=REPO)
    with pytest.raises(PipelineError, match="'toy' failed \\(exit code 3\\)"):
        run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable])
    assert stage_state(out)[0] == "interrupted"
    assert actions(run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable])) == ["ran (interrupted)"]


def test_every_stage_of_one_pipeline_runs_in_the_dtype_it_decided_once(tmp_path, monkeypatch):
    monkeypatch.delenv(modeling.AUTO_DTYPE_ENV, raising=False)
    # What this process decides `dtype: auto` means (no CPU would pick fp16): each stage must resolve the same.
    monkeypatch.setattr(modeling, "preferred_dtype", lambda: torch.float16)
    script = tmp_path / "stage.py"
    script.write_text(
        "import sys, pathlib, yaml\n"
        "from instructrl.modeling import torch_dtype\n"
        "from instructrl.runs import start_stage, finish_stage\n"
        "out = pathlib.Path(yaml.safe_load(open(sys.argv[sys.argv.index('--config') + 1]))['output_dir'])\n"
        "start_stage(out, 'toy')\n"
        "(out / 'dtype.txt').write_text(str(torch_dtype('auto')))\n"
        "finish_stage(out, 'toy')\n"
    )
    stages = []
    for name in ("a", "b"):
        config = write_config(tmp_path / f"{name}.yaml", output_dir=str(tmp_path / name))
        stages.append({"name": name, "recipe": str(script), "config": str(config)})
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"stages": stages}))
    stages = load_pipeline(tmp_path / "pipeline.yaml", root=REPO)
    run_pipeline(stages, dry_run=True, launcher=[sys.executable])
    assert modeling.AUTO_DTYPE_ENV not in os.environ  # a dry run decides nothing
    run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable])
    assert [(tmp_path / name / "dtype.txt").read_text() for name in "ab"] == ["torch.float16"] * 2
    assert modeling.AUTO_DTYPE_ENV not in os.environ  # the pipeline's decision ends with it


TOY_STAGE = """
import os, pathlib, sys, time, yaml
from instructrl.runs import start_stage, finish_stage
from instructrl.threads import read_share
settings = yaml.safe_load(open(sys.argv[sys.argv.index("--config") + 1]))
out = pathlib.Path(settings["output_dir"]); name = out.name
start_stage(out, "toy")
(out.parent / f"started-{name}").write_text(str(time.time()))
print(f"{name} says hello"); print(f"{name} progress 1/2", end="\\r"); print(f"{name} progress 2/2")
(out / "seen.txt").write_text(" ".join(sorted(p.name for p in out.parent.glob("started-*"))))
(out / "threads.txt").write_text(os.environ.get("OMP_NUM_THREADS", "unset"))
sibling = settings.get("wait_for")
deadline = time.time() + 60
while sibling and not (out.parent / f"started-{sibling}").exists():  # proof that the sibling runs at the same time
    if time.time() > deadline:
        sys.exit(4)
    time.sleep(0.05)
want = settings.get("await_threads")  # the thread count the pipeline hands over once the sibling has finished
while want and read_share(pathlib.Path(os.environ["INSTRUCTRL_THREADS_FILE"])) != want:
    if time.time() > deadline:
        sys.exit(5)
    time.sleep(0.05)
if settings.get("fail"):
    sys.exit(3)
time.sleep(settings.get("sleep", 0))
finish_stage(out, "toy")
"""


def toy_pipeline(tmp_path, stages: dict[str, dict]) -> list:
    """Stages of `TOY_STAGE` (name -> its settings plus `after`), writing under tmp_path/out."""
    script = tmp_path / "toy.py"
    script.write_text(TOY_STAGE)
    entries = []
    for name, settings in stages.items():
        settings = dict(settings)
        after = settings.pop("after", [])
        config = write_config(tmp_path / f"{name}.yaml", output_dir=str(tmp_path / "out" / name), **settings)
        entries.append({"name": name, "recipe": str(script), "config": str(config), "after": after})
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump({"stages": entries}))
    return load_pipeline(tmp_path / "pipeline.yaml", root=REPO)


def test_stages_with_their_inputs_ready_run_side_by_side(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("instructrl.pipeline.cpu_cores", lambda: 4)
    stages = toy_pipeline(
        tmp_path,
        {
            "prep": {},
            "ptx": {"after": ["prep"], "wait_for": "plain"},
            "plain": {"after": ["prep"], "wait_for": "ptx"},
            "report": {"after": ["ptx", "plain"]},
        },
    )
    records = run_pipeline(
        stages, runner=subprocess_runner, launcher=[sys.executable], jobs=2, log_file=tmp_path / "t.json"
    )
    assert [r["stage"] for r in records] == ["prep", "ptx", "plain", "report"]  # the pipeline's order
    assert actions(records) == ["ran (missing)"] * 4
    out = tmp_path / "out"
    # Each of ptx and plain waited until the other had started; the report started after both had finished.
    assert (out / "prep" / "seen.txt").read_text() == "started-prep"
    assert (out / "report" / "seen.txt").read_text() == "started-plain started-prep started-ptx started-report"
    times = {r["stage"]: r for r in records}
    assert times["report"]["started"] >= max(times["ptx"]["ended"], times["plain"]["ended"])
    assert min(times["ptx"]["ended"], times["plain"]["ended"]) > max(
        times["ptx"]["started"], times["plain"]["started"]
    )
    # Cores shared out: every core to a stage running alone, half each to two side by side. Each line of a stage's
    # output tagged with its name, progress-bar updates included.
    threads = {n: (out / n / "threads.txt").read_text() for n in ("prep", "ptx", "plain", "report")}
    assert threads == {"prep": "4", "ptx": "2", "plain": "2", "report": "4"}
    lines = capfd.readouterr().out.splitlines()
    assert (
        "[ptx] ptx says hello" in lines
        and "[plain] plain progress 1/2" in lines
        and "[plain] plain progress 2/2" in lines
    )
    assert json.loads((tmp_path / "t.json").read_text())["jobs"] == 2
    # Finished stages are skipped as before.
    assert (
        actions(run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable], jobs=2)) == ["skipped"] * 4
    )


@pytest.mark.parametrize("jobs", [1, 2])
def test_pipeline_json_keeps_the_times_of_stages_finished_before(tmp_path, jobs):
    stages = toy_pipeline(
        tmp_path, {"first": {}, "second": {"after": ["first"], "fail": True}, "third": {"after": ["second"]}}
    )
    log_file = tmp_path / "pipeline.json"
    log_file.write_text("not the pipeline's JSON")  # whatever was there is replaced, not trusted
    run = dict(runner=subprocess_runner, launcher=[sys.executable], jobs=jobs, log_file=log_file)

    # A stage fails: the log already holds the stages that finished and the failure, with their times.
    with pytest.raises(PipelineError, match="'second' failed"):
        run_pipeline(stages, **run)
    logged = {r["stage"]: r for r in json.loads(log_file.read_text())["stages"]}
    assert logged["first"]["action"] == "ran (missing)" and logged["first"]["seconds"] > 0
    assert logged["second"]["action"] == "failed (exit code 3)" and "seconds" in logged["second"]
    first_run = logged["first"]

    # Fixed and run again: the first stage is skipped and keeps the record of the run that did it.
    write_config(tmp_path / "second.yaml", output_dir=str(tmp_path / "out" / "second"))
    stages = load_pipeline(tmp_path / "pipeline.yaml", root=REPO)
    records = run_pipeline(stages, **run)
    assert actions(records) == ["skipped", "ran (interrupted)", "ran (missing)"]
    assert records[0]["ran_before"] == first_run

    # Everything done: nothing runs, and every stage's time survives in the file (the first's across two rewrites).
    run_pipeline(stages, **run)
    logged = json.loads(log_file.read_text())
    assert [r["action"] for r in logged["stages"]] == ["skipped"] * 3
    assert logged["stages"][0]["ran_before"] == first_run
    assert [r["ran_before"] for r in logged["stages"][1:]] == records[1:]


def test_the_stage_left_running_gets_the_cores_of_the_one_that_finished(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("instructrl.pipeline.cpu_cores", lambda: 4)
    stages = toy_pipeline(
        tmp_path,
        {"short": {"wait_for": "long"}, "long": {"wait_for": "short", "await_threads": 4}},
    )
    # `long` exits 5 unless its thread file says 4 once `short` is done.
    records = run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable], jobs=2)
    assert actions(records) == ["ran (missing)"] * 2
    assert [(tmp_path / "out" / n / "threads.txt").read_text() for n in ("short", "long")] == ["2", "2"]
    assert "[pipeline] long: 4 CPU threads from its next step" in capfd.readouterr().out.splitlines()


def test_a_stage_failing_beside_another_lets_it_finish_and_starts_nothing_after(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's own setting wins
    stages = toy_pipeline(
        tmp_path,
        {
            "ptx": {"fail": True, "wait_for": "plain"},
            "plain": {"wait_for": "ptx", "sleep": 1.0},
            "report": {"after": ["ptx", "plain"]},
        },
    )
    with pytest.raises(PipelineError, match="'ptx' failed \\(exit code 3\\)"):
        run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable], jobs=2)
    out = tmp_path / "out"
    assert stage_state(out / "plain")[0] == "complete" and stage_state(out / "ptx")[0] == "interrupted"
    assert stage_state(out / "report")[0] == "missing"
    assert (out / "plain" / "threads.txt").read_text() == "3"
    with pytest.raises(ConfigError, match="jobs must be"):
        run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable], jobs=0)


@pytest.mark.parametrize(
    "width, cores, gpu, available, jobs, why",
    [
        (1, 4, False, 64e9, 1, "no two stages"),
        (2, 4, True, 64e9, 1, "a GPU"),
        (2, 1, False, 64e9, 1, "1 CPU core"),
        (2, 2, False, None, 1, "unknown"),
        (2, 2, False, 21e9, 2, "2 stages can run together"),
        (3, 2, False, 21e9, 2, "2 CPU cores"),
        (3, 4, False, 21e9, 3, "3 stages can run together"),
        (3, 4, False, 12e9, 2, "not enough memory for 3"),
        (2, 2, False, 9e9, 1, "not enough memory for 2"),  # 90% of 9 GB holds one 4.6 GB stage, not two
    ],
)
def test_jobs_auto_runs_side_by_side_only_with_the_cores_and_memory_for_it(width, cores, gpu, available, jobs, why):
    decided, reason = auto_jobs(width, cores, gpu, available, int(4.6e9))
    assert decided == jobs and why in reason


def test_the_default_recipe_has_two_stages_that_can_run_together_until_they_are_done(tmp_path):
    stages = load_pipeline(DEFAULT_PIPELINE, root=REPO, output_root=str(tmp_path / "out"))
    assert parallel_width(plan(stages)) == 2  # PPO-ptx and plain PPO
    skip_ppo = [(s, "skip" if s.name in ("sft", "comparisons", "rm", "ppo") else "missing") for s in stages]
    assert parallel_width(skip_ppo) == 1
    assert parallel_width([(s, "skip") for s in stages]) == 0


@pytest.mark.parametrize("memory_for", [2, 1])
def test_jobs_auto_sizes_the_model_and_decides_before_the_first_stage(
    tmp_path, tiny_model_dir, monkeypatch, capfd, memory_for
):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("instructrl.pipeline.cpu_cores", lambda: 4)
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    config = transformers.AutoConfig.from_pretrained(tiny_model_dir)
    stage_bytes = Shape.from_config(config).params() * STAGE_BYTES_PER_PARAM
    # Room for `memory_for` stages after the 10% headroom, not for one more.
    monkeypatch.setattr("instructrl.pipeline.available_memory", lambda: int(stage_bytes * (memory_for + 0.5) / 0.9))
    model = {"model_name_or_path": str(tiny_model_dir)}
    stages = toy_pipeline(tmp_path, {"a": model, "b": model, "report": {**model, "after": ["a", "b"]}})
    records = run_pipeline(
        stages, runner=subprocess_runner, launcher=[sys.executable], jobs="auto", log_file=tmp_path / "t.json"
    )
    assert actions(records) == ["ran (missing)"] * 3
    assert json.loads((tmp_path / "t.json").read_text())["jobs"] == memory_for
    out = capfd.readouterr().out
    assert f"[pipeline] jobs auto = {memory_for}:" in out
    # Side by side, the two stages got half the cores each; one at a time, the pipeline leaves the threads alone.
    threads = [(tmp_path / "out" / n / "threads.txt").read_text() for n in ("a", "b")]
    assert threads == (["2", "2"] if memory_for == 2 else ["unset", "unset"])
    # Nothing left to run: nothing to decide (no model sized, no line printed).
    rerun = run_pipeline(stages, runner=subprocess_runner, launcher=[sys.executable], jobs="auto")
    assert actions(rerun) == ["skipped"] * 3 and "jobs auto" not in capfd.readouterr().out


def test_jobs_on_the_command_line(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("pipeline_recipe", REPO / "recipes/pipeline.py")
    recipe = module_from_spec(spec)
    spec.loader.exec_module(recipe)
    assert recipe.jobs_argument("auto") == "auto" and recipe.jobs_argument("2") == 2
    for bad in ("0", "two", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="neither 'auto' nor a whole number"):
            recipe.jobs_argument(bad)


@pytest.mark.parametrize(
    "stages, message",
    [
        ([{"name": "a", "recipe": "recipes/sft.py"}], "lacks"),
        ([{"name": "a", "recipe": "recipes/sft.py", "config": "nope.yaml"}], "does not exist"),
        ([{"name": "a", "recipe": "recipes/sft.py", "config": "Makefile", "afer": []}], "unknown key"),
        ([{"name": "a", "recipe": "recipes/sft.py", "config": "Makefile", "after": ["b"]}], "not earlier stages"),
    ],
)
def test_pipeline_file_errors(tmp_path, stages, message):
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(ConfigError, match=message):
        load_pipeline(path, root=REPO)


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGKILL"])
def test_a_killed_pipeline_reruns_only_the_stage_it_was_in(tmp_path, tiny_model_dir, signal_name):
    """The real thing: `recipes/pipeline.py` as a process group killed mid-stage (as Ctrl-C, a scheduler or an OOM
    killer would), a second pipeline refused while the first runs, then a rerun that redoes only the killed stage,
    from its newest complete checkpoint."""
    demos = write_jsonl(tmp_path / "demos.jsonl", demo_rows(8))
    first = sft_config(tmp_path, tiny_model_dir, demos, max_steps=2, output_dir=str(tmp_path / "out" / "first"))
    (tmp_path / "first.yaml").write_text(first.read_text())
    long = sft_config(
        tmp_path, tiny_model_dir, demos, max_steps=300, save_strategy="steps", save_steps=5, save_total_limit=1,
        output_dir=str(tmp_path / "out" / "long"),
    )  # fmt: skip
    stages = [
        {"name": "first", "recipe": "recipes/sft.py", "config": str(tmp_path / "first.yaml")},
        {"name": "long", "recipe": "recipes/sft.py", "config": str(long), "after": ["first"]},
    ]
    pipeline_yaml = tmp_path / "pipeline.yaml"
    pipeline_yaml.write_text(yaml.safe_dump({"stages": stages}))
    command = [sys.executable, str(REPO / "recipes/pipeline.py"), "--config", str(pipeline_yaml)]
    first_dir, long_dir = tmp_path / "out" / "first", tmp_path / "out" / "long"

    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while latest_complete_checkpoint(long_dir) is None and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert (long_dir / RUNNING).exists(), "the long stage never started"
        assert latest_complete_checkpoint(long_dir) is not None, "the long stage saved no checkpoint"
        finished = {p.relative_to(first_dir): p.read_bytes() for p in first_dir.rglob("*") if p.is_file()}
        refused = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
        assert refused.returncode == 1 and "being run by another process" in refused.stderr.splitlines()[-1]
    finally:
        os.killpg(process.pid, getattr(signal, signal_name))
        process.wait(timeout=60)
    deadline = time.time() + 60  # the stage's own process (the pipeline's child) takes a moment to be reaped
    while stage_state(long_dir)[0] == "running" and time.time() < deadline:
        time.sleep(0.2)
    assert stage_state(long_dir)[0] == "interrupted" and stage_state(first_dir)[0] == "complete"

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "first: done before, skipped" in rerun.stdout
    assert "long: running (interrupted, resuming from checkpoint-" in rerun.stdout  # not from step 0
    assert stage_state(long_dir)[0] == "complete"
    assert {p.relative_to(first_dir): p.read_bytes() for p in first_dir.rglob("*") if p.is_file()} == finished


# -- one source of truth: model, output root and the stage graph ----------------------------------------------------
DEFAULT_PIPELINE = REPO / "recipes/smollm2-135m/pipeline.yaml"


def test_another_model_gets_its_own_root_and_every_input_from_the_stage_before(tmp_path, capsys):
    stages = load_pipeline(DEFAULT_PIPELINE, root=REPO, model="Qwen/Qwen2.5-0.5B-Instruct")
    root = Path("~/.cache/instructrl/outputs/qwen2.5-0.5b-instruct").expanduser()
    by_name = {s.name: s for s in stages}
    assert {s.name: s.output_dir for s in stages} == {s.name: root / s.name for s in stages}
    assert all(s.settings()["model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct" for s in stages)
    assert by_name["comparisons"].inputs() == {"sft_adapter_path": str(root / "sft")}
    assert by_name["rm"].inputs() == {
        "dataset_name": str(root / "comparisons" / "rankings"),
        "flip_probe": str(root / "comparisons" / "probes" / "flip.jsonl"),
        "init_adapter": str(root / "sft"),
    }
    assert by_name["ppo_ptx"].inputs() == {"sft_model_path": str(root / "sft"), "reward_model_path": str(root / "rm")}
    evaluation = by_name["eval"].inputs()
    assert evaluation["comparisons_path"] == str(root / "comparisons")
    assert evaluation["policies"] == ["base"] + [f"{n}={root / n}" for n in ("sft", "ppo", "ppo_ptx")]
    assert evaluation["ppo_runs"] == [f"{n}={root / n}" for n in ("ppo", "ppo_ptx")]
    # The default model keeps the paths its stage configs name: nothing is overridden, nothing reruns.
    default = load_pipeline(DEFAULT_PIPELINE, root=REPO)
    assert all(s.changed_overrides() == {} for s in default)
    # A dry run prints each stage's command, inputs and output, and writes nothing.
    records = run_pipeline(stages, dry_run=True, launcher=["python"])
    out = capsys.readouterr().out
    if not root.exists():  # nothing of this model here: every stage would run, and still nothing was created
        assert all(r["action"] == "would run (missing)" for r in records) and not root.exists()
    assert f"--model_name_or_path Qwen/Qwen2.5-0.5B-Instruct --output_dir {root / 'rm'}" in out
    assert f"rm:   input  dataset_name = {root / 'comparisons' / 'rankings'}" in out
    assert f"eval:   output {root / 'eval'}" in out


ITERATED_PIPELINE = REPO / "recipes/smollm2-135m/pipeline_iterated.yaml"


def test_iterated_collection_samples_the_policy_and_continues_the_reward_model(tmp_path):
    """`make pipeline ROUNDS=2`: round 2's comparisons are sampled by PPO-ptx, its RM continues round 1's on them and
    on round 1's rankings, PPO-ptx trains again against it, and the evaluation adds that policy."""
    stages = load_pipeline(ITERATED_PIPELINE, root=REPO, seed=7)
    by_name = {s.name: s for s in stages}
    root = by_name["sft"].output_dir.parent
    first = {s.name: s for s in load_pipeline(DEFAULT_PIPELINE, root=REPO, seed=7)}
    for name, stage in first.items():  # round 1 is the default pipeline's, stage by stage: nothing of it reruns
        if name != "eval":
            assert by_name[name].settings_digest() == stage.settings_digest(), name
    assert by_name["comparisons_r2"].inputs() == {"sft_adapter_path": str(root / "ppo_ptx")}
    assert by_name["comparisons_r2"].settings()["num_prompts"] == 400
    assert by_name["rm_r2"].inputs() == {
        "dataset_name": str(root / "comparisons_r2" / "rankings"),
        "flip_probe": str(root / "comparisons_r2" / "probes" / "flip.jsonl"),
        "init_adapter": str(root / "rm"),
        "replay_dataset_name": str(root / "comparisons" / "rankings"),
    }
    assert "replay_dataset_name" not in by_name["rm"].settings()
    assert by_name["ppo_ptx_r2"].inputs() == {
        "sft_model_path": str(root / "sft"),
        "reward_model_path": str(root / "rm_r2"),
    }
    evaluation = by_name["eval"].inputs()
    assert evaluation["policies"][-1] == f"ppo_ptx_r2={root / 'ppo_ptx_r2'}"
    assert evaluation["reward_model_path"] == str(root / "rm")
    # A collection after both the SFT and a PPO stage could sample from either: refused.
    pipeline = yaml.safe_load(ITERATED_PIPELINE.read_text())
    pipeline["stages"][5]["after"] = ["sft", "ppo_ptx"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    with pytest.raises(ConfigError, match=r"comparisons_r2' comes after several sft or ppo stages"):
        load_pipeline(path, root=REPO)


def test_another_seed_is_a_second_complete_run_beside_the_first(tiny_pipeline, tmp_path):
    """`make pipeline SEED=7`: every stage gets seed 7 and writes under `<output root>-seed7`, inputs included."""
    default = {s.name: s for s in load_pipeline(DEFAULT_PIPELINE, root=REPO)}
    stages = load_pipeline(DEFAULT_PIPELINE, root=REPO, seed=7)
    root = default["sft"].output_dir.parent.with_name(default["sft"].output_dir.parent.name + "-seed7")
    assert {s.name: s.output_dir for s in stages} == {s.name: root / s.name for s in stages}
    assert all(s.settings()["seed"] == 7 and "--seed" in s.command([]) for s in stages)
    by_name = {s.name: s for s in stages}
    assert by_name["rm"].inputs()["dataset_name"] == str(root / "comparisons" / "rankings")
    assert by_name["ppo_ptx"].inputs() == {"sft_model_path": str(root / "sft"), "reward_model_path": str(root / "rm")}
    assert by_name["eval"].inputs()["ppo_runs"] == [f"{n}={root / n}" for n in ("ppo", "ppo_ptx")]
    # The other settings are the default run's.
    assert by_name["ppo_ptx"].settings()["learning_rate"] == default["ppo_ptx"].settings()["learning_rate"]
    # A root given explicitly is used as it is.
    given = load_pipeline(DEFAULT_PIPELINE, root=REPO, seed=7, output_root=str(tmp_path / "mine"))
    assert given[0].output_dir == tmp_path / "mine" / "sft"
    # Without any output root, a second seed would overwrite the first: refused, saying what to add.
    with pytest.raises(ConfigError, match="no `output_root`.*--output-root"):
        load_pipeline(tiny_pipeline, root=REPO, seed=7)


def test_a_configured_input_that_is_not_the_previous_output_is_an_error(tmp_path):
    pipeline = yaml.safe_load(DEFAULT_PIPELINE.read_text())
    pipeline["stages"][2]["settings"] = {"dataset_name": str(tmp_path / "other" / "rankings")}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    with pytest.raises(ConfigError, match=r"stage 'rm' sets `dataset_name` to '.*other/rankings', but it comes after"):
        load_pipeline(path, root=REPO)
    # A setting that is not an input is simply passed on.
    pipeline["stages"][2]["settings"] = {"learning_rate": 5e-4}
    path.write_text(yaml.safe_dump(pipeline))
    rm = load_pipeline(path, root=REPO)[2]
    assert "--learning_rate" in rm.command([]) and rm.settings()["learning_rate"] == 5e-4


@pytest.fixture()
def tiny_recipe(tmp_path):
    """Stage configs for the whole recipe at toy size, written for the default model (the pipeline swaps it)."""
    demos = write_jsonl(tmp_path / "demos.jsonl", demo_rows(8))
    prompts = write_jsonl(
        tmp_path / "prompts.jsonl",
        [{"prompt": [{"role": "user", "content": f"Describe topic {i} in about 10 words."}]} for i in range(8)],
    )
    text = write_jsonl(
        tmp_path / "text.jsonl", [{"text": f"Rivers {i} run to the sea, slowly and surely."} for i in range(8)]
    )
    common = {"model_name_or_path": "smollm2-135m-instruct", "output_dir": "~/never-used"}
    lora = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["q_proj", "v_proj"]}
    quiet = {"report_to": "none", "gradient_checkpointing": False}
    ppo = {
        **common,
        **quiet,
        "dataset_name": str(prompts),
        "dataset_train_split": "train",
        "total_episodes": 4,
        "per_device_train_batch_size": 2,
        "num_mini_batches": 1,
        "local_rollout_forward_batch_size": 2,
        "per_device_eval_batch_size": 2,
        "response_length": 4,
        "num_sample_generations": 0,
        "save_strategy": "no",
        "ptx_dataset_name": str(text),
        "ptx_max_length": 16,
        "max_eval_samples": 2,
    }
    configs = {
        "sft": {**common, **lora, **quiet, "dataset_name": str(demos), "max_steps": 2, "save_strategy": "no"},
        "collect": {
            **common,
            "prompts_dataset": str(prompts),
            "prompts_split": "train",
            "num_responses": 3,
            "max_new_tokens": 6,
            "test_fraction": 0.25,
        },
        "rm": {
            **common,
            **lora,
            **quiet,
            "max_steps": 2,
            "save_strategy": "no",
            "normalization_dataset_name": str(demos),
        },
        "ppo_ptx": {**ppo, "ptx_coef": 1.0},
        "ppo": {**ppo, "ptx_coef": 0.0},
        "eval": {
            **common,
            "policies": ["base"],
            "prompts_dataset": str(prompts),
            "prompts_split": "train",
            "num_prompts": 2,
            "max_new_tokens": 4,
            "ptx_dataset_name": str(text),
            "ptx_dataset_split": "train",
            "num_ptx_texts": 2,
            "batch_size": 2,
        },
    }
    recipes = {"sft": "sft", "collect": "collect", "rm": "rm", "ppo_ptx": "ppo", "ppo": "ppo", "eval": "eval"}
    after = {"collect": ["sft"], "rm": ["sft", "collect"], "ppo_ptx": ["sft", "rm"], "ppo": ["sft", "rm"]}
    after["eval"] = ["sft", "rm", "ppo_ptx", "ppo"]
    stages = []
    for name, values in configs.items():
        config = write_config(tmp_path / f"{name}.yaml", **values)
        stages.append({"name": name, "recipe": f"recipes/{recipes[name]}.py", "config": str(config)})
        if name in after:
            stages[-1]["after"] = after[name]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"model": "smollm2-135m-instruct", "stages": stages}))
    return path


def test_the_whole_recipe_runs_on_another_model_in_one_command(tiny_recipe, tiny_model_dir, tmp_path):
    """`make pipeline MODEL=<dir> SEED=3`: six stages, every input taken from the stage before, under the model's own
    root, and every recipe takes the pipeline's seed."""
    root = tmp_path / "outputs"
    stages = load_pipeline(tiny_recipe, root=REPO, model=str(tiny_model_dir), output_root=str(root), seed=3)
    assert all(s.command([]).count("--seed") == 1 for s in stages)
    records = run_pipeline(stages, runner=in_process_runner, launcher=[])
    assert [r["action"] for r in records] == ["ran (missing)"] * 6
    assert all(stage_state(root / s.name)[0] == "complete" for s in stages)
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"base", "sft", "ppo_ptx", "ppo"}
    assert (root / "eval" / "report.md").is_file()
    ppo_adapter = json.loads((root / "ppo" / "adapter_config.json").read_text())
    assert ppo_adapter["base_model_name_or_path"] == str(tiny_model_dir)
    assert not Path("~/never-used").expanduser().exists()
    again = load_pipeline(tiny_recipe, root=REPO, model=str(tiny_model_dir), output_root=str(root), seed=3)
    assert [r["action"] for r in run_pipeline(again, runner=in_process_runner, launcher=[])] == ["skipped"] * 6
    # The seed is one of the settings a stage ran with: another seed in the same root runs everything again.
    other = load_pipeline(tiny_recipe, root=REPO, model=str(tiny_model_dir), output_root=str(root), seed=4)
    assert [action for _, action in plan(other)] == ["changed"] * 6


def test_two_rounds_of_collection_run_end_to_end(tiny_recipe, tiny_model_dir, tmp_path):
    """`make pipeline ROUNDS=2` at toy size, stage after stage: PPO-ptx's adapter samples the second collection, the
    second RM starts from the first one (its score head too; at learning rate 0 it stays that RM exactly) and reports
    how that RM did on the new held-out pairs before training, PPO-ptx trains again against it, and the evaluation
    reports that policy beside the others."""
    from safetensors.torch import load_file

    pipeline = yaml.safe_load(tiny_recipe.read_text())
    stages = {s["name"]: s for s in pipeline["stages"]}
    evaluation = pipeline["stages"].pop()
    pipeline["stages"] += [
        {**stages["collect"], "name": "collect_r2", "after": ["ppo_ptx"]},
        {**stages["rm"], "name": "rm_r2", "after": ["rm", "collect_r2"], "settings": {"learning_rate": 0.0}},
        {**stages["ppo_ptx"], "name": "ppo_ptx_r2", "after": ["sft", "rm_r2"]},
        {**evaluation, "after": [*evaluation["after"], "ppo_ptx_r2"]},
    ]
    path = tmp_path / "iterated.yaml"
    path.write_text(yaml.safe_dump(pipeline))
    root = tmp_path / "outputs"
    loaded = load_pipeline(path, root=REPO, model=str(tiny_model_dir), output_root=str(root))
    records = run_pipeline(loaded, runner=in_process_runner, launcher=[])
    assert [r["action"] for r in records] == ["ran (missing)"] * 9
    assert (root / "collect_r2" / "rankings" / "train.jsonl").is_file()
    first, second = (load_file(root / name / "adapter_model.safetensors") for name in ("rm", "rm_r2"))
    assert first.keys() == second.keys() and any("score" in key for key in first)
    assert all(torch.equal(first[key], second[key]) for key in first)
    # The continued RM reports its held-out accuracy on the new pairs before training too (the same, at lr 0);
    # the first RM, which starts from the SFT adapter's weights and a fresh score head, does not.
    results = {name: json.loads((root / name / "eval_results.json").read_text()) for name in ("rm", "rm_r2")}
    assert "eval_before_pairwise_accuracy" not in results["rm"]
    assert results["rm_r2"]["eval_before_pairwise_accuracy"] == results["rm_r2"]["eval_pairwise_accuracy"]
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"base", "sft", "ppo_ptx", "ppo", "ppo_ptx_r2"}
