"""QLoRA on CPU: LoRA under a bitsandbytes nf4 base gets the gradients of an fp32 model with the same weights.

The reference is the same checkpoint loaded in fp32 with every quantized Linear weight replaced by
`bitsandbytes.functional.dequantize_4bit` of the 4-bit weight, so both models compute with identical effective
weights and any gradient difference comes from the 4-bit kernels and their autograd, not from quantization error.
"""

from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from bitsandbytes.functional import dequantize_4bit
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from conftest import build_tiny_model
from helpers import assert_shared_prefill_is_generate
from instructrl.modeling import compute_dtype, load_base_model

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NUM_LAYERS = 2
# Both sides dequantize to fp32 and run the same fp32 matmuls, so the match is bit-exact on CPU (max difference 0.0
# observed). The tolerance leaves room for a different BLAS summation order only: a bf16 compute path (relative error
# ~4e-3) or a gradient dropped by a kernel without autograd fails it by orders of magnitude.
RTOL, ATOL = 1e-5, 1e-6
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Reinforcement learning from human feedback aligns language models with what people want.",
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with hidden size 64, so every Linear weight spans whole 64-value nf4 blocks."""
    path = tmp_path_factory.mktemp("tiny-llama-h64")
    build_tiny_model(tokenizer, seed=0, hidden_size=64, num_layers=NUM_LAYERS).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_nf4(path: Path, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    args = ModelConfig(model_name_or_path=str(path), load_in_4bit=True, bnb_4bit_quant_type="nf4", dtype="float32")
    return load_base_model(args, tokenizer)


def dequantized_reference(path: Path, quantized: PreTrainedModel) -> PreTrainedModel:
    """The fp32 checkpoint with each 4-bit Linear weight replaced by its dequantized value."""
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    replaced = 0
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            target = reference.get_submodule(name).weight
            weight = dequantize_4bit(module.weight.data, module.weight.quant_state).to(target.device)
            assert weight.shape == target.shape and weight.dtype == torch.float32
            assert not torch.equal(weight, target), f"{name}: nf4 must change the weights, or nothing was quantized"
            with torch.no_grad():
                target.copy_(weight)
            replaced += 1
    assert replaced == NUM_LAYERS * len(LORA_TARGETS)
    return reference


def with_lora(model: PreTrainedModel) -> PeftModel:
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def lora_parameters(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    return {name: param for name, param in model.named_parameters() if "lora_" in name}


def randomize_lora(*models: PeftModel, seed: int = 0) -> None:
    """Give every model the same random LoRA A and B; B is zero at init, which would leave A without gradient."""
    generator = torch.Generator().manual_seed(seed)
    first = lora_parameters(models[0])
    with torch.no_grad():
        for name, param in first.items():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            for other in models[1:]:
                lora_parameters(other)[name].copy_(param)


def lm_batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    assert batch["input_ids"].shape[0] * batch["input_ids"].shape[1] > 1
    return dict(batch)


def lora_grads(model: PeftModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.train()
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    grads = {}
    for name, param in lora_parameters(model).items():
        assert param.grad is not None, f"{name} got no gradient"
        grads[name] = param.grad.detach().clone()
    return loss.detach(), grads


def assert_grads_match(quantized: PeftModel, reference: PeftModel, batch: dict[str, torch.Tensor]) -> None:
    loss_4bit, grads_4bit = lora_grads(quantized, batch)
    loss_ref, grads_ref = lora_grads(reference, batch)
    torch.testing.assert_close(loss_4bit, loss_ref, rtol=RTOL, atol=ATOL)
    assert grads_4bit.keys() == grads_ref.keys()
    assert len(grads_4bit) == 2 * NUM_LAYERS * len(LORA_TARGETS)
    for name, grad in grads_4bit.items():
        assert grad.abs().max() > 0, f"{name}: an all-zero gradient means no signal reached it"
        torch.testing.assert_close(grad, grads_ref[name], rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.fixture
def lora_pair(model_dir, tokenizer) -> tuple[PeftModel, PeftModel]:
    """(4-bit base + LoRA, dequantized fp32 base + LoRA) with identical random LoRA weights."""
    quantized = load_nf4(model_dir, tokenizer)
    reference = dequantized_reference(model_dir, quantized)
    quantized, reference = with_lora(quantized), with_lora(reference)
    randomize_lora(quantized, reference)
    return quantized, reference


def test_base_is_4bit_and_only_lora_trains(lora_pair):
    quantized, _ = lora_pair
    linears = [m for m in quantized.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linears) == NUM_LAYERS * len(LORA_TARGETS)
    for module in linears:
        assert isinstance(module.weight, bnb.nn.Params4bit) and module.weight.bnb_quantized
        assert module.weight.dtype == torch.uint8 and module.weight.quant_state.quant_type == "nf4"
    for name, module in quantized.named_modules():
        if name.endswith(tuple(LORA_TARGETS)) and hasattr(module, "base_layer"):
            assert isinstance(module.base_layer, bnb.nn.Linear4bit), f"{name} wraps a non-4-bit layer"
    trainable = {name for name, param in quantized.named_parameters() if param.requires_grad}
    assert trainable == set(lora_parameters(quantized))
    assert len(trainable) == 2 * NUM_LAYERS * len(LORA_TARGETS)


def test_lora_grads_under_nf4_match_dequantized_fp32(lora_pair, tokenizer):
    """Loss and every LoRA gradient match the dequantized fp32 reference within rtol=1e-5, atol=1e-6."""
    quantized, reference = lora_pair
    assert_grads_match(quantized, reference, lm_batch(tokenizer))


@pytest.mark.parametrize("batch_size, seq_len", [(1, 1), (2, 1), (1, 6)])
def test_lora_grads_match_for_decoding_shapes(lora_pair, batch_size, seq_len):
    """Single-token inputs are where older bitsandbytes switched to its gemv kernel; rtol=1e-5, atol=1e-6 here too."""
    quantized, reference = lora_pair
    input_ids = torch.randint(1, 1000, (batch_size, seq_len), generator=torch.Generator().manual_seed(seq_len))
    for model in (quantized, reference):
        model.train()
        model.zero_grad(set_to_none=True)
        # labels need two tokens; a loss on the logits reaches every LoRA weight for any shape.
        model(input_ids=input_ids).logits.pow(2).mean().backward()
    ref_params = lora_parameters(reference)
    for name, param in lora_parameters(quantized).items():
        torch.testing.assert_close(param.grad, ref_params[name].grad, rtol=RTOL, atol=ATOL)


def test_grads_still_match_after_eval_generation(lora_pair, tokenizer):
    """PPO generates in eval mode without grad, then trains on the same model: that must not change the 4-bit path.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a Linear4bit's weight in place into an inference-only layout
    on the first eval-mode no-grad forward, and from then on computes it with `gemv_4bit` in bf16, which has no
    autograd kernel; training after generation would then get bf16 losses and lose the gradient through every base
    layer. Tolerance as above: rtol=1e-5, atol=1e-6.
    """
    quantized, reference = lora_pair
    prompt = tokenizer(SENTENCES[:1], return_tensors="pt")
    quantized.eval()
    with torch.no_grad():
        quantized.generate(**prompt, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    for module in quantized.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            assert not getattr(module.weight.quant_state, "packing_format_for_cpu", False), (
                "an eval forward repacked the 4-bit weights for CPU inference; training on them drops gradients"
            )
    assert_grads_match(quantized, reference, lm_batch(tokenizer))


def test_optimizer_step_moves_lora_only(lora_pair, tokenizer):
    quantized, _ = lora_pair
    lora_before = {name: param.detach().clone() for name, param in lora_parameters(quantized).items()}
    base_before = {name: t.clone() for name, t in quantized.state_dict().items() if "lora_" not in name}
    packed = [name for name in base_before if name.endswith(tuple(f"{t}.base_layer.weight" for t in LORA_TARGETS))]
    assert len(packed) == NUM_LAYERS * len(LORA_TARGETS)
    assert all(base_before[name].dtype == torch.uint8 for name in packed)

    optimizer = torch.optim.AdamW([p for p in quantized.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    quantized.train()
    quantized(**lm_batch(tokenizer)).loss.backward()
    optimizer.step()

    for name, param in lora_parameters(quantized).items():
        assert not torch.equal(param.detach(), lora_before[name]), f"{name} did not move"
    base_after = {name: t for name, t in quantized.state_dict().items() if "lora_" not in name}
    assert base_after.keys() == base_before.keys()
    for name, tensor in base_before.items():
        assert torch.equal(base_after[name], tensor), f"base tensor {name} changed"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compute_dtype_of_a_4bit_model_is_its_embeddings_not_its_packed_weights(model_dir, tokenizer, dtype):
    name = str(dtype).removeprefix("torch.")
    args = ModelConfig(model_name_or_path=str(model_dir), load_in_4bit=True, bnb_4bit_quant_type="nf4", dtype=name)
    model = load_base_model(args, tokenizer)
    assert {p.dtype for p in model.parameters()} >= {torch.uint8, dtype}  # packed nf4 beside the unquantized parts
    assert compute_dtype(model) == dtype and compute_dtype(with_lora(model)) == dtype


def test_k_samples_from_one_prefill_on_a_4bit_model_with_lora(model_dir, tokenizer):
    """The shared prompt prefill goes through peft and the 4-bit layers like `generate` itself does."""
    model = with_lora(load_nf4(model_dir, tokenizer)).eval()
    prompts = [[{"role": "user", "content": "Name a fruit."}], [{"role": "user", "content": "Say hi to the crew."}]]
    assert_shared_prefill_is_generate(model, tokenizer, prompts, num_samples=3, max_new_tokens=4, tol=1e-4)
