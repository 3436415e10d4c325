"""PPO test fixtures: tiny SFT and reward adapters built directly with PEFT, and a tiny PPO config and run."""

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import ModelConfig

from helpers import load_recipe, write_config
from instructrl.configs import PPOScriptArguments, parse_args
from instructrl.ppo import InstructPPOConfig
from instructrl.reward import NORMALIZATION_FILE

ppo_recipe = load_recipe("ppo")
LORA_TARGETS = ["q_proj", "v_proj", "up_proj"]


def _randomize_lora(model, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def make_adapters(model_dir: Path, out: Path, tokenizer) -> tuple[Path, Path]:
    """Write an SFT adapter (causal LM) and a reward adapter (classifier LoRA + score head + bias) for `model_dir`."""
    sft_dir, rm_dir = out / "sft", out / "rm"
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    sft = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))
    _randomize_lora(sft, seed=1)
    sft.save_pretrained(sft_dir)
    tokenizer.save_pretrained(sft_dir)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    rm = get_peft_model(
        classifier,
        LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, task_type="SEQ_CLS", modules_to_save=["score"]),
    )
    _randomize_lora(rm, seed=2)
    with torch.no_grad():
        for name, param in rm.named_parameters():
            if "score" in name and "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)))
    rm.save_pretrained(rm_dir)
    (rm_dir / NORMALIZATION_FILE).write_text(json.dumps({"bias": 0.25, "scored_token": tokenizer.eos_token}))
    return sft_dir, rm_dir


def ppo_config(tmp_path: Path, model_dir: Path, sft: Path | None, rm: Path, **overrides) -> Path:
    """A toy PPO-ptx config (2 updates of 4 episodes, 8-token responses) written to `tmp_path/ppo.yaml`."""
    values = dict(
        model_name_or_path=str(model_dir),
        sft_model_path=str(sft) if sft else None,
        reward_model_path=str(rm),
        output_dir=str(tmp_path / "ppo"),
        total_episodes=8,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        num_mini_batches=1,
        local_rollout_forward_batch_size=4,
        response_length=8,
        stop_token="eos",
        learning_rate=1e-3,
        kl_coef=0.02,
        ptx_coef=27.8,
        ptx_ratio=2,
        ptx_micro_batch_size=3,
        ptx_max_length=32,
        max_grad_norm=1.0,
        num_sample_generations=0,
        report_to="none",
        save_strategy="steps",
        save_steps=1,
        logging_steps=1,
        seed=0,
        max_eval_samples=3,
    )
    values.update(overrides)
    return write_config(tmp_path / "ppo.yaml", **values)


def run(config: Path, *extra):
    """`recipes/ppo.py --config config EXTRA`, in this process; returns the trainer."""
    return ppo_recipe.main(
        *parse_args((PPOScriptArguments, InstructPPOConfig, ModelConfig), ["--config", str(config), *extra])
    )
