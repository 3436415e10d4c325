"""Every YAML under recipes/ parses into its recipe's dataclasses without loading a model."""

from pathlib import Path

import pytest
from trl import ModelConfig, RewardConfig, SFTConfig

from instructrl.configs import CollectConfig, PPOScriptArguments, RewardScriptArguments, ScriptArguments, parse_args
from instructrl.ppo import InstructPPOConfig

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
STAGE_TYPES = {
    "sft": (ScriptArguments, SFTConfig, ModelConfig),
    "rm": (RewardScriptArguments, RewardConfig, ModelConfig),
    "collect": (CollectConfig, ModelConfig),
    "ppo": (PPOScriptArguments, InstructPPOConfig, ModelConfig),
}
STAGE_CONFIGS = sorted(p for p in RECIPES.rglob("config_*.yaml") if p.parent.name in STAGE_TYPES)


def test_every_recipe_yaml_is_covered():
    all_configs = sorted(p for p in RECIPES.rglob("*.yaml") if "accelerate_configs" not in p.parts)
    assert all_configs == STAGE_CONFIGS, "a YAML under recipes/ belongs to no known stage"
    assert {p.parent.name for p in STAGE_CONFIGS} >= {"sft", "rm", "collect", "ppo"}


@pytest.mark.parametrize("path", STAGE_CONFIGS, ids=lambda p: str(p.relative_to(RECIPES)))
def test_stage_yaml_parses(path):
    text = path.read_text()
    assert text.startswith("#"), "each config opens with a comment header"
    assert "Command:" in text and "Tested on:" in text
    parsed = parse_args(STAGE_TYPES[path.parent.name], ["--config", str(path)])
    model_args = parsed[-1]
    assert model_args.model_name_or_path


@pytest.mark.parametrize("path", sorted((RECIPES / "accelerate_configs").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_yaml_parses(path):
    import yaml

    config = yaml.safe_load(path.read_text())
    assert config["num_processes"] >= 1 and "distributed_type" in config
