"""The memory model's arithmetic, on a config small enough to count by hand (no timing, no weights loaded)."""

import json

import pytest
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from instructrl import memory
from instructrl.memory import Shape, Workload, estimate, largest_micro_batch, weight_bytes

CONFIG = dict(
    vocab_size=10,
    hidden_size=4,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=2,
    intermediate_size=8,
    tie_word_embeddings=True,
)
WORK = Workload(batch=4, micro_batch=2, prompt_length=3, response_length=5, lora_rank=1, rollout_chunk=2)


def shape() -> Shape:
    return Shape.from_config(LlamaConfig(**CONFIG))


def test_parameter_counts_match_the_real_model_and_peft():
    # By hand, per block: q 4x4, k 4x2, v 4x2, o 4x4, gate/up 4x8, down 8x4 = 144; embeddings 40, norms 2x2x4 + 4.
    assert shape().linear_params() == 2 * 144
    assert shape().params() == 288 + 40 + 20 == 348
    model = LlamaForCausalLM(LlamaConfig(**CONFIG))
    assert shape().params() == sum(p.numel() for p in model.parameters())
    # LoRA r=1 on all seven linears: sum of (in + out) = 8 + 6 + 6 + 8 + 12 + 12 + 12 = 64 per block.
    assert shape().lora_params(1) == 128
    lora = get_peft_model(model, LoraConfig(r=1, target_modules="all-linear"))
    assert shape().lora_params(1) == sum(p.numel() for p in lora.parameters() if p.requires_grad)


def test_weight_bytes_by_dtype_and_4bit():
    assert weight_bytes(shape(), "float32", False) == 348 * 4
    assert weight_bytes(shape(), "bfloat16", False) == 348 * 2
    # nf4: 4 bits + one fp32 absmax per 64 weights for the linear layers; embeddings and norms in the compute dtype.
    assert weight_bytes(shape(), "float32", True) == 288 * (0.5 + 4 / 64) + 60 * 4


def test_shared_layout_by_hand():
    parts = estimate(shape(), "shared", "float32", False, WORK)
    lora, head = 128 * 4, 5 * 4
    assert parts["weights"] == 348 * 4 + 4 * lora + 2 * head
    assert parts["gradients"] == 2 * lora + head and parts["optimizer"] == 2 * (2 * lora + head)
    kv = 2 * 2 * 1 * 2 * 2 * 8 * 4  # k and v, 2 layers, 1 kv head of 2, chunk of 2 rollouts, 8 tokens, fp32
    assert parts["rollout"] == kv + 4 * 5 * 10 * 4 + 2 * 2 * 8 * 10 * 4
    per_token_layer = 6 * 4 + 4 * 8 + 2 * 2 * 8
    assert parts["training"] == 2 * (2 * 2 * 8 * per_token_layer * 4) + 3 * 2 * 8 * 10 * 4
    assert parts["peak"] == parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["training"] == 31060


def test_trl_layout_holds_two_more_models_and_trains_the_value_in_full():
    parts = estimate(shape(), "trl", "float32", False, WORK)
    lora, value = 128 * 4, 348 * 4 + 5 * 4  # tied embeddings: the classifiers hold the same body and embeddings
    assert parts["weights"] == 348 * 4 + lora + 2 * value
    assert parts["gradients"] == lora + value and parts["optimizer"] == 2 * (lora + value)
    assert parts["peak"] == 34948
    shared_4bit = estimate(shape(), "shared", "float32", True, WORK)
    assert shared_4bit["peak"] < parts["peak"]
    with pytest.raises(ValueError, match="layout"):
        estimate(shape(), "separate", "float32", False, WORK)


def test_largest_micro_batch_and_the_cli(tmp_path, capsys):
    budget = estimate(shape(), "shared", "float32", False, WORK)["peak"]
    assert largest_micro_batch(shape(), "shared", "float32", False, WORK, budget) == 2
    assert largest_micro_batch(shape(), "shared", "float32", False, WORK, budget - 1) == 1
    assert largest_micro_batch(shape(), "shared", "float32", False, WORK, 1.0) == 0
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **CONFIG}))
    memory.main(["--model_name_or_path", str(tmp_path), "--dtype", "float32", "--gpu_gb", "1"])
    out = capsys.readouterr().out
    assert "0.00B parameters" in out and out.count(" yes ") == 2
