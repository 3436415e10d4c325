"""A restartable pipeline over the stage recipes: finished stages are skipped, interrupted ones start again cleanly.

Each recipe marks its output directory (`instructrl.runs.start_stage` / `finish_stage`): `.instructrl-running`
while it writes there, `.instructrl-complete` once it is done. From those markers a stage is

- **done**: complete, and finished after every stage it depends on (otherwise it is stale and runs again, as `make`
  rebuilds a target older than its prerequisites);
- **changed**: complete, but its config's settings differ from those the pipeline ran it with (recorded in
  `.instructrl-config.json` beside the markers; comments do not count), so it runs again, and so does what follows;
- **interrupted**: the running marker is there but the process that wrote it is gone. A training stage (sft, rm, ppo)
  that the pipeline started with the settings it has now resumes from its newest complete `checkpoint-N`; otherwise
  (no checkpoint yet, other settings, or a stage without checkpoints) its directory is cleared and it runs from the
  start;
- **missing**: no output directory, or an empty one;
- **foreign**: a non-empty directory without markers, which instructrl did not write. The pipeline stops rather than
  write into it (or delete it): move it away or point the stage's `output_dir` elsewhere.

`force` re-runs the named stages (`all` for every stage) and so everything downstream of them.

`jobs` > 1 runs stages side by side: a stage starts once every stage in its `after:` list is done (the list order
no longer matters then), at most `jobs` at a time, its output lines tagged `[name]`. Unless `OMP_NUM_THREADS` is set,
the cores that running stages do not use are shared out among the stages starting together: a stage that runs alone
gets every core, two that start together half each; when one of them finishes, the other gets its cores from its
next training step (`instructrl.threads`; a stage without a trainer, collection or eval, keeps its share). On a
CPU, two one-thread processes get more done than one two-thread process (PyTorch's CPU kernels do not scale linearly
in threads), so independent stages such as PPO-ptx and plain PPO finish sooner side by side. A stage that fails
stops new stages from starting; the ones running finish, then the pipeline stops.

`jobs="auto"` (the command line's default) decides once, before the first stage starts (`auto_jobs`): as many
stages as can run together in the graph, but one at a time with a GPU (side by side shares out CPU cores, and two
processes on one GPU were never measured to pay), with fewer than two cores, or when the memory available does not
hold that many stages of this model (`STAGE_BYTES_PER_PARAM`).

The pipeline file (YAML) lists the stages in order:

```yaml
stages:
  - name: sft
    recipe: recipes/sft.py
    config: recipes/smollm2-135m/sft/config_lora.yaml
  - name: collect
    recipe: recipes/collect.py
    config: recipes/smollm2-135m/collect/config_k4.yaml
    after: [sft]
```
"""

import hashlib
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import patch

import yaml

from .configs import expand_path
from .errors import ConfigError, InstructRLError
from .runs import COMPLETE, RUNNING, SETTINGS_ENV, latest_complete_checkpoint, read_marker, stage_state, write_json
from .threads import THREADS_FILE_ENV, write_share

PIPELINE_KEYS = {"model", "output_root", "stages"}
STAGE_KEYS = {"name", "recipe", "config", "after", "settings"}
CONFIG_RECORD = ".instructrl-config.json"
OUTPUTS = Path("~/.cache/instructrl/outputs")

# The settings of each kind of stage (its recipe's name) that are another stage's outputs: (setting, kinds of the stage
# it reads, path inside that stage's output directory). The pipeline fills them in from the stages a stage comes
# `after:`; eval's `policies` and `ppo_runs` are filled in by `_eval_inputs`, and a reward model that continues an
# earlier one replays that one's rankings (`_replay_inputs`). A collection after a PPO stage samples from that policy,
# and a reward model after another one starts from it: InstructGPT's iterated collection (`pipeline_iterated.yaml`).
INPUTS: dict[str, list[tuple[str, tuple[str, ...], str]]] = {
    "collect": [("sft_adapter_path", ("sft", "ppo"), "")],
    "rm": [
        ("dataset_name", ("collect",), "rankings"),
        ("flip_probe", ("collect",), "probes/flip.jsonl"),
        ("init_adapter", ("sft", "rm"), ""),
    ],
    "ppo": [("sft_model_path", ("sft",), ""), ("reward_model_path", ("rm",), "")],
    "eval": [("reward_model_path", ("rm",), ""), ("comparisons_path", ("collect",), "")],
}
POLICY_KINDS = ("sft", "ppo")
# Kinds of stage that write `checkpoint-N` directories and take `--resume_from_checkpoint`.
RESUMABLE_KINDS = ("sft", "rm", "ppo")
# Settings that change when and how a stage records its progress or spreads its work, not what it computes: editing
# them does not make a finished stage run again (records written before 2026-12-05 hashed them too and are compared the
# old way). `sampling_workers` gives the same responses for any number (each batch is seeded on its own).
BOOKKEEPING_KEYS = {
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "resume_from_checkpoint",
    "sampling_workers",
}
DIGEST_VERSION = 2


def model_slug(model: str) -> str:
    """A directory name for a model id or path: `Qwen/Qwen2.5-0.5B-Instruct` -> `qwen2.5-0.5b-instruct`."""
    name = str(model).rstrip("/").split("/")[-1].lower()
    return re.sub(r"[^a-z0-9._-]+", "-", name).strip("-") or "model"


@dataclass
class Stage:
    name: str
    recipe: Path
    config: Path
    after: list[str] = field(default_factory=list)
    # Settings the pipeline gives this stage on the command line (model, output_dir, inputs from earlier stages, the
    # pipeline file's `settings:`), over those of its config file.
    overrides: dict = field(default_factory=dict)
    # The checkpoint an interrupted run of this stage resumes from (`_run_stage`); not a setting.
    resume: Path | None = None

    @property
    def kind(self) -> str:
        return self.recipe.stem

    def file_settings(self) -> dict:
        """The config file's settings as parsed now (the file may be edited between pipeline runs)."""
        return yaml.safe_load(self.config.read_text()) or {}

    def changed_overrides(self) -> dict:
        """The overrides whose value differs from the config file's (the others need not be passed)."""
        values = self.file_settings()
        return {k: v for k, v in self.overrides.items() if _normalized(values.get(k)) != _normalized(v)}

    def settings(self) -> dict:
        """The settings this stage runs with: its config file's, then the pipeline's overrides."""
        return {**self.file_settings(), **self.overrides}

    @property
    def output_dir(self) -> Path:
        """The stage's `output_dir`, where its markers live."""
        values = self.settings()
        if "output_dir" not in values:
            raise ConfigError(f"Stage '{self.name}': its config '{self.config}' sets no `output_dir`.")
        return Path(expand_path(str(values["output_dir"])))

    def settings_digest(self, version: int = DIGEST_VERSION) -> str:
        """SHA-256 of the settings (config file plus overrides that change it): comments and layout do not count,
        nor (from version 2) the `BOOKKEEPING_KEYS`."""
        settings = {**self.file_settings(), **self.changed_overrides()}
        if version >= 2:
            settings = {k: v for k, v in settings.items() if k not in BOOKKEEPING_KEYS}
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()

    def config_changed(self) -> bool:
        """Whether the settings differ from those this stage was last run with by the pipeline (unknown: no)."""
        record = read_marker(self.output_dir / CONFIG_RECORD)
        return record is not None and record.get("sha256") != self.settings_digest(record.get("version", 1))

    def resumable_checkpoint(self) -> Path | None:
        """For an interrupted training stage that the pipeline started with today's settings, its newest complete
        checkpoint; `None` when it must start over."""
        if self.kind not in RESUMABLE_KINDS:
            return None
        marker = read_marker(self.output_dir / RUNNING) or {}
        if marker.get("stage") != self.kind or marker.get("settings") != self.settings_digest():
            return None
        return latest_complete_checkpoint(self.output_dir)

    def command(self, launcher: list[str]) -> list[str]:
        command = [*launcher, str(self.recipe), "--config", str(self.config)]
        for key, value in self.changed_overrides().items():
            command += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
        if self.resume is not None:
            command += ["--resume_from_checkpoint", str(self.resume)]
        return command

    def inputs(self) -> dict:
        """The settings that are earlier stages' outputs, as this stage will run with them."""
        keys = [setting for setting, _, _ in INPUTS.get(self.kind, [])]
        keys += ["policies", "ppo_runs"] if self.kind == "eval" else []
        keys += ["replay_dataset_name"] if self.kind == "rm" else []
        values = self.settings()
        return {k: values[k] for k in keys if k in values}


def _normalized(value):
    if isinstance(value, str):
        name, sep, path = value.partition("=")  # `name=path` entries of eval's policies and ppo_runs
        return f"{name}={expand_path(path)}" if sep and path.startswith(("~", "$")) else expand_path(value)
    if isinstance(value, list):
        return [_normalized(v) for v in value]
    return value


class PipelineError(InstructRLError):
    """A stage failed, or the pipeline cannot run as configured."""


class StageFailed(PipelineError):
    """A stage exited with an error; `record` is its entry for `pipeline.json`."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


class PipelineLog:
    """`pipeline.json`: one record per stage, in the pipeline's order, rewritten each time a stage finishes or fails.

    Written as the pipeline goes, so a pipeline that stops half way (a failed stage, Ctrl-C, a lost session) keeps the
    times of the stages it finished. A stage skipped because an earlier run finished it keeps that run's record under
    `ran_before` (read from the file this one replaces; same output directory only): running a finished pipeline
    again does not erase how long it took. `seconds` is this invocation's wall time. `path=None` writes nothing.
    """

    def __init__(self, path: Path | None, stages: list["Stage"], jobs: int):
        self.path = Path(path) if path is not None else None
        self.order = [stage.name for stage in stages]
        self.jobs = jobs
        self.start = time.time()
        self.records: dict[str, dict] = {}
        self.earlier = self._earlier_runs()

    def _earlier_runs(self) -> dict[str, dict]:
        """Stage name -> the record of the last run that ran it, from the file about to be replaced."""
        try:
            entries = json.loads(self.path.read_text())["stages"] if self.path is not None else []
        except (OSError, ValueError, TypeError, KeyError):
            return {}  # no earlier log, or not one the pipeline wrote: nothing to carry over
        earlier = {}
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("stage"), str):
                continue
            ran = entry if str(entry.get("action", "")).startswith("ran") else entry.get("ran_before")
            if isinstance(ran, dict) and "seconds" in ran:
                earlier[entry["stage"]] = ran
        return earlier

    def add(self, record: dict) -> dict:
        """Record one stage (a skipped one with its earlier run's record) and rewrite the file; returns the record."""
        if record["action"] == "skipped":
            before = self.earlier.get(record["stage"])
            if before is not None and before.get("output_dir") == record["output_dir"]:
                record = {**record, "ran_before": before}
        self.records[record["stage"]] = record
        if self.path is not None:
            stages = [self.records[name] for name in self.order if name in self.records]
            write_json(self.path, {"stages": stages, "seconds": round(time.time() - self.start, 1), "jobs": self.jobs})
        return record


def load_pipeline(
    path: str | Path,
    root: Path | None = None,
    model: str | None = None,
    output_root: str | None = None,
    seed: int | None = None,
) -> list[Stage]:
    """Read a pipeline file and resolve every stage's settings; relative paths are resolved against `root` (cwd).

    The file names things once: `model` (every stage's `model_name_or_path`) and `output_root` (stage `name` writes
    to `output_root/name`); each stage's inputs are the outputs of the stages it comes `after:` (see `INPUTS`);
    a stage's `settings:` override its config file. `model` given here (`--model`) replaces the file's, and then the
    outputs go to `~/.cache/instructrl/outputs/<model slug>` unless `output_root` is given too, so that two models
    never overwrite each other. `seed` (`--seed`) is every stage's `seed` (the file's and the stages' `settings:`
    included), and the outputs go to `<output root>-seed<N>` unless `output_root` is given, so that a second seed is a
    second, complete run beside the first: its own SFT, comparisons, reward model, PPO runs and report.

    Raises:
        ConfigError: the file is missing or malformed, a key is unknown, a path does not exist, a name repeats, a
            stage depends on one that does not come before it, a stage's configured input is not the output of
            the stage it comes after, or a seed is given where there is no output root to put its run beside.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Pipeline file '{path}' does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not isinstance(data.get("stages"), list) or not data["stages"]:
        raise ConfigError(f"'{path}' must be a mapping with a non-empty `stages:` list.")
    unknown = set(data) - PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"'{path}' has unknown key(s) {sorted(unknown)}; use {sorted(PIPELINE_KEYS)}.")
    file_model = data.get("model")
    root_given = output_root is not None
    if model is not None and model != file_model:
        output_root = output_root or str(OUTPUTS / model_slug(model))
    else:
        model, output_root = file_model, output_root or data.get("output_root")
    if seed is not None and not root_given:
        if output_root is None:
            raise ConfigError(
                f"'{path}' has no `output_root`, so another seed's outputs would overwrite this one's: add "
                "`output_root:` to the file or pass --output-root."
            )
        output_root = f"{str(output_root).rstrip('/')}-seed{seed}"
    root = root or Path.cwd()
    stages: list[Stage] = []
    for index, entry in enumerate(data["stages"]):
        if not isinstance(entry, dict):
            raise ConfigError(f"'{path}': stage {index + 1} must be a mapping with name, recipe and config.")
        unknown = set(entry) - STAGE_KEYS
        if unknown:
            raise ConfigError(
                f"'{path}': stage {index + 1} has unknown key(s) {sorted(unknown)}; use {sorted(STAGE_KEYS)}."
            )
        missing = {"name", "recipe", "config"} - set(entry)
        if missing:
            raise ConfigError(f"'{path}': stage {index + 1} lacks {sorted(missing)}.")
        if not isinstance(entry.get("settings", {}), dict):
            raise ConfigError(f"'{path}': stage {index + 1}'s `settings` must be a mapping of `key: value`.")
        stage = Stage(
            name=str(entry["name"]),
            recipe=(root / entry["recipe"]).resolve(),
            config=(root / entry["config"]).resolve(),
            after=[str(a) for a in entry.get("after", [])],
        )
        for file in (stage.recipe, stage.config):
            if not file.is_file():
                raise ConfigError(f"'{path}': stage '{stage.name}' refers to '{file}', which does not exist.")
        known = {s.name: s for s in stages}
        if stage.name in known:
            raise ConfigError(f"'{path}': stage name '{stage.name}' appears twice.")
        early = [a for a in stage.after if a not in known]
        if early:
            raise ConfigError(f"'{path}': stage '{stage.name}' comes after {early}, which are not earlier stages.")
        if model is not None:
            stage.overrides["model_name_or_path"] = model
        if output_root is not None:
            stage.overrides["output_dir"] = str(Path(expand_path(str(output_root))) / stage.name)
        derived = _derived_inputs(stage, [known[a] for a in stage.after], path)
        explicit = dict(entry.get("settings", {}))
        for key, value in derived.items():
            if key in explicit and _normalized(explicit[key]) != _normalized(value):
                raise ConfigError(
                    f"'{path}': stage '{stage.name}' sets `{key}` to '{explicit[key]}', but it comes after the stage "
                    f"whose output is '{value}'. Remove the setting (the pipeline fills it in), or change `after:`."
                )
        stage.overrides.update(derived)
        stage.overrides.update(explicit)
        if seed is not None:
            stage.overrides["seed"] = seed
        stages.append(stage)
    return stages


def _derived_inputs(stage: Stage, upstream: list[Stage], path: Path) -> dict:
    """`stage`'s input settings filled in from the output directories of the stages it comes after."""
    derived = {}
    for setting, kinds, inside in INPUTS.get(stage.kind, []):
        sources = [s for s in upstream if s.kind in kinds]
        if len(sources) > 1:
            names = [s.name for s in sources]
            raise ConfigError(
                f"'{path}': stage '{stage.name}' comes after several {' or '.join(kinds)} stages {names}; its "
                f"`{setting}` could be any of them. Keep one in `after:`."
            )
        if sources:
            derived[setting] = str(sources[0].output_dir / inside) if inside else str(sources[0].output_dir)
    if stage.kind == "eval":
        derived.update(_eval_inputs(stage, upstream))
    if stage.kind == "rm":
        derived.update(_replay_inputs(upstream))
    return derived


def _replay_inputs(upstream: list[Stage]) -> dict:
    """A reward model after another one continues it (`init_adapter`) and trains on the rankings that one trained on
    too (`replay_dataset_name`), beside the new ones (iterated collection)."""
    earlier = [s for s in upstream if s.kind == "rm"]
    if not earlier or not earlier[0].settings().get("dataset_name"):
        return {}
    return {"replay_dataset_name": str(earlier[0].settings()["dataset_name"])}


def _eval_inputs(stage: Stage, upstream: list[Stage]) -> dict:
    """Evaluation's `policies` (and `ppo_runs`): each policy stage it comes after, named as that stage, replacing the
    config's path for that name; the config's other entries (such as `base`) stay."""
    sources = {s.name: s for s in upstream if s.kind in POLICY_KINDS}
    if not sources:
        return {}
    values = stage.file_settings()
    result = {}
    for key, kinds in (("policies", POLICY_KINDS), ("ppo_runs", ("ppo",))):
        wanted = {name: s for name, s in sources.items() if s.kind in kinds}
        entries = [str(e) for e in values.get(key, [])]
        listed = [e.partition("=")[0].strip() for e in entries]
        entries = [f"{n}={wanted[n].output_dir}" if n in wanted else e for n, e in zip(listed, entries, strict=True)]
        entries += [f"{n}={s.output_dir}" for n, s in wanted.items() if n not in listed]
        if entries:
            result[key] = entries
    return result


def plan(stages: list[Stage], force: list[str] | None = None) -> list[tuple[Stage, str]]:
    """For each stage, `skip` or the reason it runs (`missing`, `interrupted`, `changed`, `stale`, `forced`).

    Raises:
        PipelineError: a stage's directory is foreign, or another process is writing it.
        ConfigError: `force` names a stage that does not exist.
    """
    force = list(force or [])
    names = {s.name for s in stages}
    unknown = [f for f in force if f != "all" and f not in names]
    if unknown:
        raise ConfigError(f"Cannot force {unknown}: the stages are {sorted(names)} (or 'all').")
    decisions: list[tuple[Stage, str]] = []
    finished: dict[str, float] = {}
    rerun: set[str] = set()
    for stage in stages:
        state, when = stage_state(stage.output_dir)
        if state == "foreign":
            raise PipelineError(
                f"Stage '{stage.name}': '{stage.output_dir}' holds files that no instructrl stage marked as its own. "
                "Move that directory away (nothing is deleted), or set another `output_dir` in "
                f"'{stage.config}'."
            )
        if state == "running":
            raise PipelineError(
                f"Stage '{stage.name}' is being run by another process (see '{stage.output_dir / RUNNING}'). Wait "
                "for it to finish, or stop it."
            )
        if "all" in force or stage.name in force:
            reason = "forced"
        elif state in ("missing", "interrupted"):
            reason = state
        elif stage.config_changed():
            reason = "changed"
        elif any(dep in rerun for dep in stage.after) or any(
            finished.get(dep, 0.0) > (when or 0.0) for dep in stage.after
        ):
            reason = "stale"
        else:
            reason = "skip"
            finished[stage.name] = when or 0.0
        if reason != "skip":
            rerun.add(stage.name)
        decisions.append((stage, reason))
    return decisions


def default_launcher(accelerate_config: Path | None = None) -> list[str]:
    """`accelerate launch` where there is a GPU to launch on, this Python otherwise."""
    import torch

    if torch.cuda.is_available():
        launcher = [sys.executable, "-m", "accelerate.commands.launch"]
        if accelerate_config is not None:
            launcher += ["--config_file", str(accelerate_config)]
        return launcher
    return [sys.executable]


# How a stage's recipe is run: `runner(stage, launcher, env, tag)` -> exit code. `env` holds variables to set for the
# stage on top of this process's; `tag` is `None` when the stage has the terminal to itself, else the prefix of each of
# its output lines (stages running side by side).
Runner = Callable[[Stage, list[str], dict[str, str], str | None], int]


def subprocess_runner(stage: Stage, launcher: list[str], env: dict[str, str], tag: str | None = None) -> int:
    command = stage.command(launcher)
    if tag is None:
        return subprocess.call(command, env={**os.environ, **env})
    process = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0
    )
    # Universal newlines: a progress bar's carriage-return updates become lines of their own, each tagged.
    for line in io.TextIOWrapper(process.stdout, encoding="utf-8", errors="replace", newline=None):
        print(f"{tag} {line}", end="" if line.endswith("\n") else "\n", flush=True)
    return process.wait()


def in_process_runner(stage: Stage, launcher: list[str], env: dict[str, str], tag: str | None = None) -> int:
    """Run the recipe in this process, as `python recipe --config ...` would (tests; no launcher; one stage at a
    time: it sets this process's `sys.argv` and environment)."""
    with patch.object(sys, "argv", stage.command([])), patch.dict(os.environ, env):
        try:
            runpy.run_path(str(stage.recipe), run_name="__main__")
        except SystemExit as exit_:  # the recipe's entry wrapper exits non-zero on an error, as the process would
            return exit_.code if isinstance(exit_.code, int) else 1
    return 0


def _run_stage(
    stage: Stage,
    reason: str,
    prefix: str,
    launcher: list[str],
    runner: Runner,
    dry_run: bool,
    env: dict[str, str] | None = None,
    tag: str | None = None,
) -> dict:
    """Run (or skip, or only show) one stage as `plan` decided; returns its record for `pipeline.json`. `env` and
    `tag` go to the runner (stages side by side)."""
    output_dir = stage.output_dir
    if reason == "skip":
        print(f"{prefix}: done before, skipped. Outputs: {output_dir}", flush=True)
        return {"stage": stage.name, "action": "skipped", "output_dir": str(output_dir)}
    stage.resume = stage.resumable_checkpoint() if reason == "interrupted" else None
    if stage.resume is not None:
        reason = f"interrupted, resuming from {stage.resume.name}"
    print(f"{prefix}: running ({reason}). Outputs: {output_dir}", flush=True)
    print(f"{prefix}: $ {' '.join(stage.command(launcher))}", flush=True)
    for key, value in stage.inputs().items():
        print(f"{prefix}:   input  {key} = {' '.join(value) if isinstance(value, list) else value}", flush=True)
    print(f"{prefix}:   output {output_dir}", flush=True)
    if dry_run:
        return {"stage": stage.name, "action": f"would run ({reason})", "output_dir": str(output_dir)}
    if stage.resume is None and ((output_dir / RUNNING).exists() or (output_dir / COMPLETE).exists()):
        # A stage starts from an empty directory; only directories instructrl marked as its own get here.
        shutil.rmtree(output_dir)
    digest = stage.settings_digest()  # the settings this run uses, even if the file is edited meanwhile
    start = time.time()
    # The digest goes into the stage's running marker (`runs.start_stage`), for a later resume.
    code = runner(stage, launcher, {**(env or {}), SETTINGS_ENV: digest}, tag)
    end = time.time()
    seconds = round(end - start, 1)
    record = {"seconds": seconds, "started": round(start, 1), "ended": round(end, 1), "output_dir": str(output_dir)}
    if code != 0 or stage_state(output_dir)[0] != "complete":
        raise StageFailed(
            f"Stage '{stage.name}' failed (exit code {code}) after {seconds:.0f} s; see its output above. Fix the "
            "cause and run the pipeline again: finished stages are kept and this one resumes from its newest "
            "checkpoint, or starts over if it has none.",
            {"stage": stage.name, "action": f"failed (exit code {code})", **record},
        )
    write_json(output_dir / CONFIG_RECORD, {"config": str(stage.config), "sha256": digest, "version": DIGEST_VERSION})
    print(f"{prefix}: finished in {seconds / 60:.1f} min. Outputs: {output_dir}", flush=True)
    return {"stage": stage.name, "action": f"ran ({reason})", **record}


def run_pipeline(
    stages: list[Stage],
    force: list[str] | None = None,
    dry_run: bool = False,
    launcher: list[str] | None = None,
    runner: Runner = subprocess_runner,
    log_file: Path | None = None,
    jobs: int | str = 1,
) -> list[dict]:
    """Run what `plan` says, printing each stage's state and output directory; returns one record per stage, in the
    pipeline's order, and keeps them in `log_file` as it goes (`PipelineLog`). `jobs` > 1 runs stages whose `after:`
    stages are done side by side, "auto" decides how many from this machine (see the module docstring).

    Raises:
        ConfigError: `jobs` is neither "auto" nor a whole number >= 1.
        PipelineError: a stage exits with an error (its directory stays marked as interrupted).
    """
    if jobs != "auto" and (not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"jobs must be 'auto' or a whole number >= 1 (stages run side by side), not {jobs!r}.")
    decisions = plan(stages, force)
    anything_runs = any(reason != "skip" for _, reason in decisions)
    if jobs == "auto":
        jobs = decide_jobs(decisions) if anything_runs and not dry_run and runner is not in_process_runner else 1
    if jobs > 1 and runner is in_process_runner:
        raise ValueError("in_process_runner runs one stage at a time (it sets this process's argv and environment).")
    launcher = launcher if launcher is not None else default_launcher()
    log = PipelineLog(None if dry_run else log_file, stages, jobs)
    with ExitStack() as pinned:
        if anything_runs and not dry_run:
            from .modeling import auto_dtype_pinned  # torch and transformers load only when a stage will run

            dtype = pinned.enter_context(auto_dtype_pinned())  # one dtype for `dtype: auto` in every stage
            print(f"[pipeline] dtype auto = {dtype} on this machine, for every stage that runs", flush=True)
        prefixes = [f"[pipeline] {i}/{len(decisions)} {stage.name}" for i, (stage, _) in enumerate(decisions, 1)]
        if jobs == 1 or dry_run:
            records = []
            for (stage, reason), prefix in zip(decisions, prefixes, strict=True):
                try:
                    records.append(log.add(_run_stage(stage, reason, prefix, launcher, runner, dry_run)))
                except StageFailed as failed:
                    log.add(failed.record)
                    raise
        else:
            records = _run_side_by_side(decisions, prefixes, launcher, runner, jobs, log)
    return records


def cpu_cores() -> int:
    """The CPU cores this process may use (its affinity where the OS tells it, as a container's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# One PPO-ptx process of the default recipe on CPU peaked at 5.1 GB resident (SmolLM2-135M in bf16, 32 rollouts of
# 48 tokens trained 8 at a time; docs/measurements.md, 2026-12-07 02:05): ~38 bytes per parameter, counted for every
# stage that would overlap. It holds for workloads like the default's: longer responses or larger micro-batches need
# more (the same model training 32 rollouts at once peaked at 16 GB), so set `--jobs 1` for those on a tight machine.
# For larger models it overcounts (Python, torch and the data take a fixed ~1.5 GB of it).
STAGE_BYTES_PER_PARAM = 38
MEMORY_HEADROOM = 0.9  # plan with at most this share of the memory available


def parallel_width(decisions: list[tuple[Stage, str]]) -> int:
    """How many of the stages that will run can run together: the most at one depth of the `after:` graph (a stage
    one deeper than the deepest stage it comes after that also runs)."""
    depth: dict[str, int] = {}
    for stage, reason in decisions:
        if reason != "skip":
            depth[stage.name] = 1 + max((depth[a] for a in stage.after if a in depth), default=-1)
    return max(Counter(depth.values()).values(), default=0)


def available_memory() -> int | None:
    """Bytes the stages may still take: the kernel's MemAvailable, less under a container's (cgroup v2) limit; None
    where neither can be read."""
    try:
        found = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
    except OSError:
        return None
    if found is None:
        return None
    available = int(found.group(1)) * 1024
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return available


def auto_jobs(width: int, cores: int, gpu: bool, available: int | None, stage_bytes: int | None) -> tuple[int, str]:
    """How many stages to run side by side, and why: `width` stages could run together (`parallel_width`), on
    `cores` CPU cores, with or without a GPU, `available` bytes of memory and `stage_bytes` per stage (None where
    either is unknown)."""
    if width < 2:
        return 1, "no two stages that will run can run together"
    if gpu:
        return 1, "a GPU: stages share it one at a time"
    if cores < 2:
        return 1, f"{cores} CPU core"
    if available is None or stage_bytes is None:
        return 1, "the memory available or the model's size is unknown"
    fits = int(available * MEMORY_HEADROOM // stage_bytes)
    jobs = max(1, min(width, cores, fits))
    memory = f"~{stage_bytes / 1e9:.1f} GB per stage, {available / 1e9:.1f} GB available"
    if jobs < min(width, cores):
        return jobs, f"{memory}: not enough memory for {min(width, cores)}"
    return jobs, f"{cores} CPU cores, no GPU, {width} stages can run together, {memory}"


def decide_jobs(decisions: list[tuple[Stage, str]]) -> int:
    """`auto_jobs` on this machine and on the model of the first stage that will run; prints what it decided."""
    import torch

    from .memory import Shape
    from .modeling import load_model_config

    width, cores, gpu, stage_bytes = parallel_width(decisions), cpu_cores(), torch.cuda.is_available(), None
    if width >= 2 and not gpu and cores >= 2:  # only then does the model's size matter
        settings = next(stage for stage, reason in decisions if reason != "skip").settings()
        try:
            config = load_model_config(
                settings.get("model_name_or_path"), trust_remote_code=bool(settings.get("trust_remote_code"))
            )
            stage_bytes = Shape.from_config(config).params() * STAGE_BYTES_PER_PARAM
        except (ValueError, AttributeError, KeyError) as err:  # no config, or not a decoder shape the count knows
            print(f"[pipeline] jobs auto: could not size the model ({err})", flush=True)
    jobs, why = auto_jobs(width, cores, gpu, available_memory(), stage_bytes)
    print(f"[pipeline] jobs auto = {jobs}: {why}", flush=True)
    return jobs


def _run_side_by_side(
    decisions: list[tuple[Stage, str]],
    prefixes: list[str],
    launcher: list[str],
    runner: Runner,
    jobs: int,
    log: PipelineLog,
) -> list[dict]:
    """Up to `jobs` stages at once, each as soon as its `after:` stages are done; records in the pipeline's order."""
    # Output as it comes, and a progress line every 30 s per stage rather than ten a second, interleaved.
    env = {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "30"}
    user_threads = os.environ.get("OMP_NUM_THREADS")
    cores = cpu_cores()
    how = (
        f"OMP_NUM_THREADS={user_threads} each (yours)" if user_threads else f"the {cores} cores shared out among them"
    )
    print(f"[pipeline] up to {jobs} stages side by side, {how}", flush=True)
    # A skipped stage's `after:` stages are skipped too (`plan` makes it stale otherwise): record them all first.
    records = {
        stage.name: log.add(_run_stage(stage, reason, prefix, launcher, runner, False))
        for (stage, reason), prefix in zip(decisions, prefixes, strict=True)
        if reason == "skip"
    }
    waiting = [
        (s, reason, prefix) for (s, reason), prefix in zip(decisions, prefixes, strict=True) if reason != "skip"
    ]
    running: dict[Future, Stage] = {}
    failure: PipelineError | None = None
    shares: dict[str, int] = {}  # running stage -> the CPU threads it has been given
    share_dir = Path(tempfile.mkdtemp(prefix="instructrl-threads-"))

    def share_out(names: list[str]) -> None:
        """Every core to the stages running (or starting) now; a running trainer takes up its new share next step."""
        for n, name in enumerate(names):
            threads, before = max(1, cores // len(names) + (n < cores % len(names))), shares.get(name)
            if threads == before:
                continue
            if before is not None:  # a running stage's share changes
                print(f"[pipeline] {name}: {threads} CPU threads from its next step", flush=True)
            write_share(share_dir / name, threads)
            shares[name] = threads

    def run(stage: Stage, reason: str, prefix: str, threads: int) -> dict:
        stage_env = env
        if not user_threads:
            stage_env = {**env, "OMP_NUM_THREADS": str(threads), THREADS_FILE_ENV: str(share_dir / stage.name)}
        return _run_stage(stage, reason, prefix, launcher, runner, False, stage_env, f"[{stage.name}]")

    with ThreadPoolExecutor(max_workers=jobs) as pool, ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, share_dir, ignore_errors=True)
        while True:
            ready = [i for i in waiting if failure is None and all(dep in records for dep in i[0].after)]
            starting = ready[: jobs - len(running)]
            if not user_threads:  # a stage alone gets every core; when one of two finishes, the other gets them
                share_out([s.name for s in running.values()] + [stage.name for stage, _, _ in starting])
            for item in starting:
                waiting.remove(item)
                running[pool.submit(run, *item, shares.get(item[0].name, 0))] = item[0]
            if not running:
                break  # all done, or a failure left stages waiting: they do not start
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                stage = running.pop(future)
                shares.pop(stage.name, None)
                try:
                    records[stage.name] = log.add(future.result())
                except StageFailed as error:
                    log.add(error.record)
                    failure = failure or error
                    others = sorted(s.name for s in running.values())
                    if others:
                        print(
                            f"[pipeline] stage '{stage.name}' failed; waiting for {others} to finish "
                            "(Ctrl-C stops them; they resume from their newest checkpoints).",
                            flush=True,
                        )
    if failure is not None:
        raise failure
    return [records[stage.name] for stage, _ in decisions]
