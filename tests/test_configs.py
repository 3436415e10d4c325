"""Every YAML under recipes/ parses into its recipe's dataclasses without loading a model."""

from pathlib import Path

import pytest
from trl import ModelConfig, RewardConfig, SFTConfig

from instructrl.configs import (
    CollectConfig,
    EvalConfig,
    LabelConfig,
    PPOScriptArguments,
    RewardScriptArguments,
    ScriptArguments,
    parse_args,
)
from instructrl.pipeline import load_pipeline
from instructrl.ppo import InstructPPOConfig
from instructrl.reward_eval import RewardEvalConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STAGE_TYPES = {
    "sft": (ScriptArguments, SFTConfig, ModelConfig),
    "rm": (RewardScriptArguments, RewardConfig, ModelConfig),
    "collect": (CollectConfig, ModelConfig),
    "ppo": (PPOScriptArguments, InstructPPOConfig, ModelConfig),
    "eval": (EvalConfig, ModelConfig),
    "label": (LabelConfig,),
    "rm_eval": (RewardEvalConfig, ModelConfig),
}
STAGE_CONFIGS = sorted(p for p in RECIPES.rglob("config_*.yaml") if p.parent.name in STAGE_TYPES)
PIPELINES = sorted(RECIPES.rglob("pipeline*.yaml"))
ROUND_ONE = ["sft", "comparisons", "rm", "ppo_ptx", "ppo"]
PIPELINE_STAGES = {  # the default pipeline, and `make pipeline ROUNDS=2` (one round of iterated collection)
    "pipeline.yaml": [*ROUND_ONE, "eval"],
    "pipeline_iterated.yaml": [*ROUND_ONE, "comparisons_r2", "rm_r2", "ppo_ptx_r2", "eval"],
}


def test_every_recipe_yaml_is_covered():
    all_configs = sorted(p for p in RECIPES.rglob("*.yaml") if "accelerate_configs" not in p.parts)
    assert all_configs == sorted(STAGE_CONFIGS + PIPELINES), "a YAML under recipes/ belongs to no known stage"
    assert {p.parent.name for p in STAGE_CONFIGS} >= {"sft", "rm", "collect", "ppo", "eval", "rm_eval"}


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_stage_yaml_parses(path):
    text = path.read_text()
    assert text.startswith("#"), "each config opens with a comment header"
    assert "Command:" in text and "Tested on:" in text
    parsed = parse_args(STAGE_TYPES[path.parent.name], ["--config", str(path)])
    if isinstance(parsed[-1], ModelConfig):
        assert parsed[-1].model_name_or_path


@pytest.mark.parametrize("path", sorted((RECIPES / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_yaml_parses(path):
    import yaml

    config = yaml.safe_load(path.read_text())
    assert config["num_processes"] >= 1 and "distributed_type" in config


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: str(p.relative_to(RECIPES)))
def test_pipeline_yaml_parses(path):
    text = path.read_text()
    assert "Command:" in text and "Tested on:" in text
    stages = load_pipeline(path, root=RECIPES.parent)
    assert [s.name for s in stages] == PIPELINE_STAGES[path.name]
    for stage in stages:
        assert stage.output_dir.is_absolute()
    # Evaluation compares the policies the PPO stages write (its config's, or filled in by the pipeline), and plots
    # their logs.
    parse_args(STAGE_TYPES["eval"], ["--config", str(stages[-1].config)])  # its config parses
    ppo_dirs = {s.name: s.output_dir for s in stages if s.name.startswith("ppo")}
    policies = dict(entry.partition("=")[::2] for entry in stages[-1].settings()["policies"])
    for name, output_dir in ppo_dirs.items():
        assert Path(policies[name]).expanduser() == output_dir
