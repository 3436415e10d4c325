"""Tiny SFT and reward-model adapters for PPO tests, built directly with PEFT (no training needed)."""

import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from instructrl.reward import NORMALIZATION_FILE

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
