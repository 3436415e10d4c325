"""Reading a saved LoRA adapter directory (`adapter_config.json` + safetensors) into a named adapter of a PeftModel.

One loader for every place that puts saved LoRA weights into a model: PPO's and the evaluation's shared base (policy,
reference, reward and value adapters from the SFT and RM outputs) and the reward model that starts from the SFT
adapter. Only the `lora_` tensors are read; anything else an adapter directory holds (a reward model's score head)
is left to the caller.
"""

import re
from pathlib import Path

import torch
from peft import PeftModel
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file


def has_adapter(adapter_dir: Path) -> bool:
    return (adapter_dir / CONFIG_NAME).is_file() and (adapter_dir / SAFETENSORS_WEIGHTS_NAME).is_file()


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor the adapter directory saved, under its saved name."""
    return load_file(str(adapter_dir / SAFETENSORS_WEIGHTS_NAME))


def load_lora_weights(model: PeftModel, adapter_dir: Path, name: str, error: type[Exception], fix: str) -> int:
    """Copy the LoRA weights saved in `adapter_dir` into `model`'s adapter `name`; returns how many were copied.

    Saved adapters name their tensors without the adapter (`...q_proj.lora_A.weight`); in the model they carry it
    (`...q_proj.lora_A.<name>.weight`). Other tensors of the model (a trained score head, other adapters) are not
    touched. An adapter that does not fit (other shapes, modules the model lacks, LoRA weights of `name` left without
    a value) raises `error` naming `adapter_dir`, followed by `fix`.
    """
    lora = {
        re.sub(r"\.(lora_[AB])\.", rf".\1.{name}.", key): value
        for key, value in adapter_tensors(adapter_dir).items()
        if ".lora_" in key
    }
    try:
        result = model.load_state_dict(lora, strict=False)
    except RuntimeError as exc:  # shapes differ: an adapter trained on another base model or with another rank
        raise error(f"'{adapter_dir}' does not fit this model ({exc}); {fix}") from exc
    missing = [k for k in result.missing_keys if f".{name}." in k and ".lora_" in k]
    if not lora or result.unexpected_keys or missing:
        raise error(
            f"'{adapter_dir}' does not fit this model: of its {len(lora)} LoRA weights {len(result.unexpected_keys)} "
            f"match no module, and {len(missing)} LoRA weights of adapter '{name}' have no value in it; {fix}"
        )
    return len(lora)
