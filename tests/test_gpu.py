"""On a CUDA GPU (skipped without one): the stages in the layout a GPU user runs, on the tiny model.

The CPU tests cover the arithmetic; these cover what a CPU cannot: `dtype: auto` on a GPU, bitsandbytes' CUDA 4-bit
kernels under LoRA, the 4-bit base placed on the GPU by `device_map`, and the trainers running their batches there.
`bench/gpu_check.sh` runs them with the real model's stages on a GPU machine.
"""

import json
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file
from trl import ModelConfig

from conftest import build_tiny_model
from helpers import write_jsonl
from instructrl.generation import load_policy, sample_responses_with_ends
from instructrl.modeling import torch_dtype
from ppo_fixtures import make_adapters, ppo_config
from ppo_fixtures import run as run_ppo
from test_quantization import (
    LORA_TARGETS,
    NUM_LAYERS,
    dequantized_reference,
    lm_batch,
    load_nf4,
    lora_grads,
    randomize_lora,
    with_lora,
)
from test_reward import rm_config, synthetic_rankings, with_cut_off_last, write_demos
from test_reward import run as run_rm
from test_sft import demo_rows, sft_config
from test_sft import run as run_sft

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """Hidden size 64: every Linear weight spans whole 64-value nf4 blocks."""
    path = tmp_path_factory.mktemp("tiny-llama-h64-gpu")
    build_tiny_model(tokenizer, seed=0, hidden_size=64, num_layers=NUM_LAYERS).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def on_cuda(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.to(CUDA) for key, value in batch.items()}


def assert_lora_fp32_on_cuda(model: torch.nn.Module) -> int:
    lora = [(name, p) for name, p in model.named_parameters() if "lora_" in name]
    assert lora, "no LoRA weights"
    for name, param in lora:
        assert param.device == CUDA, f"{name} is on {param.device}"
        assert param.dtype == torch.float32, f"{name} is {param.dtype}: trainable weights stay fp32"
    return len(lora)


def four_bit_linears(model: torch.nn.Module) -> list[bnb.nn.Linear4bit]:
    linears = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    for module in linears:
        assert module.weight.device == CUDA and module.weight.dtype == torch.uint8
        assert module.weight.bnb_quantized and module.weight.quant_state.quant_type == "nf4"
    return linears


def assert_bf16_base_on_cuda(model: torch.nn.Module) -> None:
    frozen = [p for name, p in model.named_parameters() if "lora_" not in name and not p.requires_grad]
    assert frozen and {p.device for p in frozen} == {CUDA}
    bf16 = sum(p.numel() for p in frozen if p.dtype == torch.bfloat16)
    assert bf16 > 0.9 * sum(p.numel() for p in frozen), "the frozen base should be held in bf16"


def test_auto_dtype_is_bf16_on_a_bf16_gpu():
    assert torch.cuda.is_bf16_supported(), "a GPU without bf16 (pre-Ampere) takes fp32 by design"
    assert torch_dtype("auto") == torch.bfloat16


def test_qlora_grads_on_cuda_match_the_dequantized_model(model_dir, tokenizer):
    """bitsandbytes' CUDA nf4 path under LoRA against the same weights dequantized, both fp32 on the GPU.

    Tolerance rtol=1e-4, atol=1e-6: the same fp32 matmuls in a possibly different summation order; a bf16 compute
    path or a dropped gradient fails it by orders of magnitude.
    """
    quantized = load_nf4(model_dir, tokenizer)
    assert len(four_bit_linears(quantized)) == NUM_LAYERS * len(LORA_TARGETS)
    reference = dequantized_reference(model_dir, quantized).to(CUDA)
    quantized, reference = with_lora(quantized), with_lora(reference)
    randomize_lora(quantized, reference)
    assert_lora_fp32_on_cuda(quantized)  # peft puts each LoRA weight beside its 4-bit base layer
    batch = on_cuda(lm_batch(tokenizer))
    loss_4bit, grads_4bit = lora_grads(quantized, batch)
    loss_ref, grads_ref = lora_grads(reference, batch)
    torch.testing.assert_close(loss_4bit, loss_ref, rtol=1e-4, atol=1e-6)
    assert len(grads_4bit) == 2 * NUM_LAYERS * len(LORA_TARGETS)
    for name, grad in grads_4bit.items():
        assert grad.device == CUDA and grad.abs().max() > 0, name
        torch.testing.assert_close(grad, grads_ref[name], rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("four_bit", [False, True], ids=["bf16", "nf4"])
def test_sft_on_cuda_trains_fp32_lora_over_a_frozen_base(tmp_path, model_dir, four_bit):
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(32))
    config = sft_config(tmp_path, model_dir, data, dtype="auto", load_in_4bit=four_bit, max_steps=8)
    trainer = run_sft(config)
    model = trainer.model
    assert assert_lora_fp32_on_cuda(model) > 0
    if four_bit:
        assert len(four_bit_linears(model)) == NUM_LAYERS * len(LORA_TARGETS)  # every Linear of every layer
    else:
        assert_bf16_base_on_cuda(model)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0], losses
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


def test_reward_model_on_cuda_learns_the_labeler(tmp_path, model_dir):
    data = tmp_path / "comparisons" / "rankings"
    write_jsonl(data / "train.jsonl", with_cut_off_last(synthetic_rankings(160, seed=1)))
    write_jsonl(data / "test.jsonl", with_cut_off_last(synthetic_rankings(40, seed=2)))
    write_demos(tmp_path)
    trainer = run_rm(rm_config(tmp_path, model_dir, data, dtype="auto"))
    assert assert_lora_fp32_on_cuda(trainer.model) > 0
    head = [p for n, p in trainer.model.named_parameters() if "score" in n and p.requires_grad]
    assert head and all(p.dtype == torch.float32 and p.device == CUDA for p in head)
    metrics = json.loads((tmp_path / "rm" / "eval_results.json").read_text())
    assert metrics["eval_pairs"] == 240 and metrics["eval_pairwise_accuracy"] >= 0.75, metrics


@pytest.mark.parametrize("four_bit", [False, True], ids=["bf16", "nf4"])
def test_ppo_ptx_on_cuda_trains_the_policy_on_one_base(tmp_path, model_dir, tokenizer, four_bit):
    sft, rm = make_adapters(model_dir, tmp_path / "adapters", tokenizer)
    trainer = run_ppo(ppo_config(tmp_path, model_dir, sft, rm, dtype="auto", load_in_4bit=four_bit))
    logs = [log for log in trainer.state.log_history if "objective/scores" in log]
    assert len(logs) == 2 and all(log["ptx/tokens"] > 0 and log["ptx/lm_loss"] > 0 for log in logs)
    shared = trainer.shared.shared
    assert assert_lora_fp32_on_cuda(shared) > 0
    if four_bit:
        # One 4-bit copy of every Linear of every layer, on the GPU, under all four adapters.
        assert len(four_bit_linears(shared)) == NUM_LAYERS * len(LORA_TARGETS)
    else:
        assert_bf16_base_on_cuda(shared)
    policy = load_file(tmp_path / "ppo" / "adapter_model.safetensors")
    before = load_file(sft / "adapter_model.safetensors")
    assert any(not torch.equal(policy[k], before[k]) for k in before), "the policy did not move"
    assert all(t.dtype == torch.float32 for t in policy.values())


def test_sampling_stages_load_the_policy_onto_the_gpu_and_sample_there(tmp_path, model_dir, tokenizer):
    """`make collect` and `make eval` load through `load_policy`, without a trainer to move the model."""
    sft, _ = make_adapters(model_dir, tmp_path / "adapters", tokenizer)
    model, policy_tokenizer = load_policy(ModelConfig(model_name_or_path=str(model_dir), dtype="auto"), str(sft))
    assert {p.device for p in model.parameters()} == {CUDA}
    prompts = [[{"role": "user", "content": "Describe tea."}], [{"role": "user", "content": "Why is the sky blue?"}]]
    sampled = sample_responses_with_ends(model, policy_tokenizer, prompts, num_samples=3, max_new_tokens=6)
    assert [len(texts) for texts, _ in sampled] == [3, 3] and [len(ended) for _, ended in sampled] == [3, 3]
