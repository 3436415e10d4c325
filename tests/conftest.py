"""Shared fixtures: a tiny random Llama built in-process with the real SmolLM2 tokenizer."""

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The tests' own `from_pretrained` calls: no Hub kernels on a GPU (the package's loaders pass `use_kernels=False`).
os.environ.setdefault("USE_HUB_KERNELS", "0")
# `dtype: auto` is measured here, per test as configured, not fixed by a caller's `make pipeline` or shell.
os.environ.pop("INSTRUCTRL_AUTO_DTYPE", None)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tokenizer():
    from instructrl.modeling import load_embedded_tokenizer

    return load_embedded_tokenizer()


def build_tiny_model(tokenizer, seed: int = 0, hidden_size: int = 32, num_layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny random causal LM (safetensors) with the real tokenizer, usable as `model_name_or_path`."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_model(tokenizer).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path
