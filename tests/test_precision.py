"""bf16 where the hardware computes it: detection, fp32 fallback, fp32 trainable weights and fp32 logits."""

import os
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from trl import ModelConfig
from trl.experimental.ppo import ppo_trainer as trl_ppo

from instructrl import modeling, ppo
from instructrl.errors import ConfigError
from instructrl.generation import load_policy
from instructrl.modeling import (
    cpu_supports_bf16,
    lm_logits_in_model_dtype,
    load_base_model,
    lora_bf16_compute,
    preferred_dtype,
    torch_dtype,
)
from instructrl.reward import RankingCollator, RankingRewardTrainer
from instructrl.shared_base import SharedBase
from ppo_fixtures import make_adapters, ppo_config, run

ZEN4 = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 avx512f avx512bw avx512_bf16 avx512vl\n"
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu vme sse2 avx2 fma\n"
SKYLAKE_X = "flags\t\t: avx2 avx512f avx512bw avx512vl avx512_vnni\n"  # AVX-512 without bf16 arithmetic
SAPPHIRE_RAPIDS = "flags\t\t: avx512f amx_bf16 amx_tile amx_int8\n"


def test_cpu_bf16_detection_reads_the_flags():
    assert cpu_supports_bf16(ZEN4) and cpu_supports_bf16(SAPPHIRE_RAPIDS)
    assert not cpu_supports_bf16(AVX2_ONLY) and not cpu_supports_bf16(SKYLAKE_X)
    assert not cpu_supports_bf16("")  # no flags line (not Linux, or an odd kernel): fp32, which is always right


@pytest.mark.parametrize(
    ("cpuinfo", "faster", "expected"),
    [(ZEN4, True, torch.bfloat16), (ZEN4, False, torch.float32), (AVX2_ONLY, True, torch.float32)],
    ids=["bf16-and-faster", "bf16-but-slower", "no-bf16"],
)
def test_auto_dtype_is_bf16_only_where_it_is_native_and_faster(monkeypatch, cpuinfo, faster, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(modeling, "cpu_supports_bf16", lambda: cpu_supports_bf16(cpuinfo))
    monkeypatch.setattr(modeling, "cpu_bf16_is_faster", lambda: faster)
    assert preferred_dtype() == expected
    assert torch_dtype("auto") == expected and torch_dtype(None) == expected
    assert torch_dtype("float32") == torch.float32  # an explicit dtype is never overridden


def test_the_speed_probe_runs_once_per_process():
    modeling.cpu_bf16_is_faster.cache_clear()
    first = modeling.cpu_bf16_is_faster()
    assert isinstance(first, bool) and modeling.cpu_bf16_is_faster.cache_info().misses == 1
    assert modeling.cpu_bf16_is_faster() is first and modeling.cpu_bf16_is_faster.cache_info().hits == 1


def fake_matmul_seconds(bf16: list[float], fp32: list[float]):
    """Stands in for the probe's timer: each dtype's next timing from its list (the first call of each warms up)."""
    queues = {torch.bfloat16: [0.1, *bf16], torch.float32: [0.1, *fp32]}
    return lambda a, w: queues[a.dtype].pop(0)


@pytest.mark.parametrize(
    ("bf16", "fp32", "expected"),
    [
        # A neighbour busy during bf16's first rounds: the fastest rounds still show AMX's 5x.
        ([0.02, 0.02, 0.02, 0.004, 0.02, 0.004, 0.004, 0.004, 0.004], [0.02] * 9, True),
        ([0.011] * 9, [0.006] * 9, False),  # oneDNN's bf16 slower than MKL's fp32 (the AMD EPYC)
        ([0.009] * 9, [0.01] * 9, False),  # 1.1x: not worth bf16's rounding
    ],
    ids=["busy-neighbour", "bf16-slower", "barely-faster"],
)
def test_the_speed_probe_keeps_each_dtypes_fastest_round(monkeypatch, bf16, fp32, expected):
    monkeypatch.setattr(modeling, "_matmul_seconds", fake_matmul_seconds(bf16, fp32))
    modeling.cpu_bf16_is_faster.cache_clear()
    try:
        assert modeling.cpu_bf16_is_faster() is expected
    finally:
        modeling.cpu_bf16_is_faster.cache_clear()


def test_the_environment_decides_auto_without_a_probe(monkeypatch):
    monkeypatch.setattr(modeling, "cpu_bf16_is_faster", lambda: pytest.fail("probed although the variable is set"))
    monkeypatch.setenv(modeling.AUTO_DTYPE_ENV, "float16")
    assert torch_dtype("auto") == torch.float16
    assert torch_dtype("float32") == torch.float32  # an explicit dtype is never overridden
    monkeypatch.setenv(modeling.AUTO_DTYPE_ENV, "bf16")
    with pytest.raises(ConfigError, match="INSTRUCTRL_AUTO_DTYPE='bf16'.*bfloat16, float16, float32"):
        torch_dtype("auto")


def test_pinning_auto_sets_the_variable_for_the_block_only(monkeypatch):
    monkeypatch.delenv(modeling.AUTO_DTYPE_ENV, raising=False)
    monkeypatch.setattr(modeling, "preferred_dtype", lambda: torch.float16)
    with modeling.auto_dtype_pinned() as name:
        assert name == "float16" and os.environ[modeling.AUTO_DTYPE_ENV] == "float16"
    assert modeling.AUTO_DTYPE_ENV not in os.environ


@pytest.fixture
def bf16_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(modeling, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(modeling, "cpu_bf16_is_faster", lambda: True)


def test_bf16_body_with_fp32_logits_and_fp32_lora(tiny_model_dir, tokenizer, bf16_cpu):
    model = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer)
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16  # tied to the embeddings, not copied
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    ids = torch.tensor([tokenizer("Tea is a drink.")["input_ids"]])

    def expected_logits():  # the fp32 matmul of the bf16 body's hidden states, not bf16 logits cast up
        hidden = model.model(input_ids=ids).last_hidden_state
        return hidden.float() @ model.get_output_embeddings().weight.float().T

    for frozen in (False, True):  # trainable: upcast each call; frozen: a cached fp32 copy
        model.requires_grad_(not frozen)
        logits = model(input_ids=ids).logits
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, expected_logits(), rtol=1e-6, atol=1e-5)
    with torch.no_grad():  # the cached copy follows the weight when it changes
        model.get_output_embeddings().weight.mul_(2)
        torch.testing.assert_close(model(input_ids=ids).logits, expected_logits(), rtol=1e-6, atol=1e-5)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    trainable = [p for p in lora.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    lora(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trainable)


def test_lm_loss_logits_in_the_models_dtype_only_inside_the_block(tiny_model_dir, tokenizer, bf16_cpu):
    model = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer)
    model.requires_grad_(False)
    ids = torch.tensor([tokenizer("Tea is a drink.")["input_ids"]])
    hidden = model.model(input_ids=ids).last_hidden_state
    head = model.get_output_embeddings().weight
    with lm_logits_in_model_dtype():
        inside = model(input_ids=ids).logits
    assert inside.dtype == torch.bfloat16
    torch.testing.assert_close(inside, hidden @ head.T)  # the bf16 matmul itself
    outside = model(input_ids=ids).logits
    assert outside.dtype == torch.float32  # restored on exit
    torch.testing.assert_close(outside, hidden.float() @ head.float().T, rtol=1e-6, atol=1e-5)
    reward = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer, "reward")
    with lm_logits_in_model_dtype():
        assert reward(input_ids=ids).logits.dtype == torch.float32  # a trained score head stays fp32


def test_bf16_ppo_ptx_takes_lm_loss_logits_in_bf16_and_ppo_logprobs_in_fp32(
    tmp_path, tiny_model_dir, tokenizer, bf16_cpu, monkeypatch
):
    sft, rm = make_adapters(tiny_model_dir, tmp_path / "adapters", tokenizer)
    seen: dict[str, set] = {"ptx": set(), "ppo": set()}
    real_ptx_loss, real_forward = ppo.ptx_loss, trl_ppo.forward

    def ptx_loss(logits, *args, **kwargs):
        seen["ptx"].add(logits.dtype)
        return real_ptx_loss(logits, *args, **kwargs)

    def forward(*args, **kwargs):
        output = real_forward(*args, **kwargs)
        if hasattr(output, "logits"):  # the policy's and reference's (the value model's output is a tuple)
            seen["ppo"].add(output.logits.dtype)
        return output

    monkeypatch.setattr(ppo, "ptx_loss", ptx_loss)
    monkeypatch.setattr(trl_ppo, "forward", forward)
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, dtype="auto", total_episodes=4, save_strategy="no"))
    assert next(trainer.shared.shared.get_base_model().parameters()).dtype == torch.bfloat16
    assert seen == {"ptx": {torch.bfloat16}, "ppo": {torch.float32}}


def test_bf16_reward_model_keeps_its_score_head_in_fp32(tiny_model_dir, tokenizer, bf16_cpu):
    model = load_base_model(
        ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer, task="reward"
    )
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.score.weight.dtype == torch.float32
    lora = get_peft_model(
        model, LoraConfig(r=4, target_modules=["q_proj"], task_type="SEQ_CLS", modules_to_save=["score"])
    )
    trainable = {n: p for n, p in lora.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and all(p.dtype == torch.float32 for p in trainable.values())
    ids = torch.tensor([tokenizer("Tea is a drink.")["input_ids"]])
    assert lora(input_ids=ids).logits.dtype == torch.float32


def test_shared_base_in_bf16_trains_fp32_adapters(tmp_path, tiny_model_dir, tokenizer, bf16_cpu):
    sft, rm = make_adapters(tiny_model_dir, tmp_path, tokenizer)
    base = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer)
    shared = SharedBase(base, rm, sft)
    trainable = [p for p in shared.shared.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    assert shared.value_head.weight.dtype == torch.float32
    frozen_base = [p for n, p in shared.shared.named_parameters() if "lora_" not in n and "layers" in n]
    assert frozen_base and all(p.dtype == torch.bfloat16 for p in frozen_base)


def test_lora_is_merged_only_into_fp32_weights(tmp_path, tiny_model_dir, tokenizer, bf16_cpu):
    """Merged into bf16 weights, a LoRA update far smaller than the weights would be rounded mostly away."""
    sft, _ = make_adapters(tiny_model_dir, tmp_path, tokenizer)
    bf16, _ = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), str(sft))
    fp32, _ = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), str(sft))
    assert isinstance(bf16, PeftModel) and not isinstance(fp32, PeftModel)
    assert all(p.dtype == torch.float32 for n, p in bf16.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("source", ["auto", "generate"])
def test_bf16_ppo_takes_rollout_logprobs_from_the_training_forward(
    tmp_path, tiny_model_dir, tokenizer, bf16_cpu, source
):
    """In bf16 `generate`'s incremental logits round differently from a forward pass over the same sequence; `auto`
    recomputes the rollouts' log-probabilities with the forward the training step uses, so a policy identical to its
    reference (the first update's rollouts) has a KL of exactly 0 to it, and the first ratio is 1."""
    sft, rm = make_adapters(tiny_model_dir, tmp_path / "adapters", tokenizer)
    config = ppo_config(
        tmp_path,
        tiny_model_dir,
        sft,
        rm,
        dtype="auto",
        total_episodes=4,
        save_strategy="no",
        score_heldout=False,
        rollout_logprobs=source,
        response_length=16,
    )
    original = trl_ppo.batch_generation
    trainer = run(config)
    assert trl_ppo.batch_generation is original  # TRL's function is back after training
    assert trainer.rollout_logprobs_source() == ("forward" if source == "auto" else "generate")
    (log,) = [log for log in trainer.state.log_history if "objective/kl" in log]
    if source == "auto":
        assert log["objective/kl"] == 0.0
    else:
        assert log["objective/kl"] != 0.0  # what the forward pass removes


def test_fp32_ppo_keeps_generates_rollout_logprobs(tmp_path, tiny_model_dir, tokenizer):
    sft, rm = make_adapters(tiny_model_dir, tmp_path / "adapters", tokenizer)
    config = ppo_config(tmp_path, tiny_model_dir, sft, rm, total_episodes=4, save_strategy="no", score_heldout=False)
    trainer = run(config)
    assert trainer.rollout_logprobs_source() == "generate"  # in fp32 the two paths agree: no extra forward


def lora_reward_model(model_dir, tokenizer, dtype: str) -> PeftModel:
    """A reward model with LoRA on attention and MLP layers whose B matrices are non-zero, so the adapters count."""
    base = load_base_model(ModelConfig(model_name_or_path=str(model_dir), dtype=dtype), tokenizer, task="reward")
    config = LoraConfig(r=4, target_modules=["q_proj", "up_proj"], task_type="SEQ_CLS", modules_to_save=["score"])
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model


def rewards_and_gradients(model, ids, enabled: bool) -> tuple[torch.Tensor, set, dict]:
    """The rewards of `ids`, the dtypes the LoRA A matrices received, and the trainable weights' gradients."""
    seen = set()
    hooks = [
        module.register_forward_pre_hook(lambda _module, args: seen.add(args[0].dtype))
        for name, module in model.named_modules()
        if name.endswith("lora_A.default")
    ]
    model.zero_grad(set_to_none=True)
    with lora_bf16_compute(model, enabled):
        rewards = model(input_ids=ids).logits
    rewards.sum().backward()
    for hook in hooks:
        hook.remove()
    return rewards, seen, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_lora_bf16_compute_runs_the_adapters_in_bf16_and_keeps_fp32_weights(tiny_model_dir, tokenizer, bf16_cpu):
    model = lora_reward_model(tiny_model_dir, tokenizer, "auto")
    ids = torch.tensor([tokenizer("Tea is a drink. Coffee is one too.")["input_ids"]] * 2)
    reference, seen_fp32, grads_fp32 = rewards_and_gradients(model, ids, enabled=False)
    rewards, seen_bf16, grads_bf16 = rewards_and_gradients(model, ids, enabled=True)
    assert seen_fp32 == {torch.float32} and seen_bf16 == {torch.bfloat16}  # PEFT's fp32 path vs bf16 arithmetic
    assert rewards.dtype == torch.float32  # the score head stays fp32 under autocast
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads_bf16.values())
    assert torch.allclose(rewards, reference, atol=0.05)
    for name, grad in grads_bf16.items():  # the same gradients to bf16 rounding
        cosine = F.cosine_similarity(grad.flatten(), grads_fp32[name].flatten(), dim=0)
        assert cosine > 0.99, name


def test_lora_bf16_compute_changes_nothing_on_an_fp32_base(tiny_model_dir, tokenizer):
    model = lora_reward_model(tiny_model_dir, tokenizer, "float32")
    ids = torch.tensor([tokenizer("Tea is a drink.")["input_ids"]])
    reference, _, grads_off = rewards_and_gradients(model, ids, enabled=False)
    rewards, seen, grads_on = rewards_and_gradients(model, ids, enabled=True)
    assert seen == {torch.float32} and torch.equal(rewards, reference)
    assert all(torch.equal(grads_on[n], grads_off[n]) for n in grads_off)


def test_reward_trainer_runs_the_adapters_in_bf16_only_when_asked(tiny_model_dir, tokenizer, bf16_cpu):
    model = lora_reward_model(tiny_model_dir, tokenizer, "auto")
    collate = RankingCollator(tokenizer.pad_token_id)
    sequences = [tokenizer(text)["input_ids"] for text in ("Tea. Yes.", "Tea. No, not at all.", "Tea. Maybe.")]
    inputs = collate([{"sequences": sequences, "scores": [1.0, 0.0, 0.5]}])
    seen = set()
    model.base_model.model.model.layers[0].self_attn.q_proj.lora_A.default.register_forward_pre_hook(
        lambda _module, args: seen.add(args[0].dtype)
    )
    for enabled in (False, True):
        seen.clear()
        trainer = SimpleNamespace(
            model=model,
            length_decorrelation=0.0,
            share_prompt=True,
            lora_bf16_compute=enabled,
            accelerator=SimpleNamespace(num_processes=1, unwrap_model=lambda m: m, gather_for_metrics=lambda x: x),
            _metrics={"train": defaultdict(list)},
        )
        loss = RankingRewardTrainer.compute_loss(trainer, model, inputs)
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert seen == {torch.bfloat16 if enabled else torch.float32}


def test_lora_bf16_compute_sees_adapter_updates_made_inside_the_block(tiny_model_dir, tokenizer, bf16_cpu):
    """PPO keeps the block open across optimizer steps: each forward must use the adapters' current weights, not a
    bf16 copy cast before the step (autocast's cast cache, which the block turns off)."""
    model = lora_reward_model(tiny_model_dir, tokenizer, "auto")
    ids = torch.tensor([tokenizer("Tea is a drink.")["input_ids"]])
    with lora_bf16_compute(model):
        before = model(input_ids=ids).logits
        with torch.no_grad():  # what an optimizer step does: the trainable weights change in place
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.mul_(3)
        after = model(input_ids=ids).logits
    with lora_bf16_compute(model):
        fresh = model(input_ids=ids).logits
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_logits_and_scalar_heads_stay_fp32_under_lora_bf16_compute(tmp_path, tiny_model_dir, tokenizer, bf16_cpu):
    model = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer)
    model.requires_grad_(False)
    lora = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    ids = torch.tensor([tokenizer("Tea is a drink.")["input_ids"]])
    head = model.get_output_embeddings().weight
    with lora_bf16_compute(lora):
        output = lora(input_ids=ids, output_hidden_states=True)
    hidden = output.hidden_states[-1]
    assert output.logits.dtype == torch.float32  # not autocast's bf16: PPO's ratios and KL are made of these
    torch.testing.assert_close(output.logits, hidden.float() @ head.float().T, rtol=1e-6, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # any other autocast (a GPU trainer's): as it always did
        assert lora(input_ids=ids).logits.dtype == torch.bfloat16
    _, rm = make_adapters(tiny_model_dir, tmp_path, tokenizer)
    base = load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="auto"), tokenizer)
    head = SharedBase(base, rm).value_head
    hidden = torch.randn(3, head.in_features, dtype=torch.bfloat16)
    with lora_bf16_compute(lora):
        values = head(hidden)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, hidden.float() @ head.weight.T + head.bias, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("enabled", [False, True])
def test_bf16_ppo_runs_its_adapters_in_bf16_only_when_asked(
    tmp_path, tiny_model_dir, tokenizer, bf16_cpu, monkeypatch, enabled
):
    sft, rm = make_adapters(tiny_model_dir, tmp_path / "adapters", tokenizer)
    seen: dict[str, set] = defaultdict(set)
    real_train, real_forward = ppo.InstructPPOTrainer.train, trl_ppo.forward

    def record(adapter):
        return lambda _module, args: seen[adapter].add(args[0].dtype)

    def train(self, *args, **kwargs):
        for name, module in self.shared.shared.named_modules():
            for adapter in ("policy", "value", "reward"):
                if name.endswith(f"lora_A.{adapter}"):
                    module.register_forward_pre_hook(record(adapter))
        return real_train(self, *args, **kwargs)

    def forward(*args, **kwargs):
        output = real_forward(*args, **kwargs)
        if hasattr(output, "logits"):
            seen["logits"].add(output.logits.dtype)
        return output

    monkeypatch.setattr(ppo.InstructPPOTrainer, "train", train)
    monkeypatch.setattr(trl_ppo, "forward", forward)
    config = ppo_config(
        tmp_path, tiny_model_dir, sft, rm, dtype="auto", total_episodes=4, save_strategy="no", score_heldout=False
    )
    trainer = run(config, "--lora_bf16_compute", str(enabled).lower())
    lora = torch.bfloat16 if enabled else torch.float32
    assert seen == {"policy": {lora}, "value": {lora}, "reward": {lora}, "logits": {torch.float32}}
    trainable = [p for p in trainer.shared.shared.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    (log,) = [log for log in trainer.state.log_history if "objective/kl" in log]
    assert log["objective/kl"] == 0.0  # rollouts and the training forward share their arithmetic
    assert trainer.shared.value_head(torch.ones(1, trainer.shared.value_head.in_features)).dtype == torch.float32
