"""PPO on one shared base: single copy of the weights, exact gradients, the ptx hook, clipping, saving, resuming."""

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import patch

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM
from trl import ModelConfig
from trl.experimental.ppo import ppo_trainer as trl_ppo
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper, forward

from instructrl import generation
from instructrl import ppo as ppo_module
from instructrl.errors import ConfigError, MissingStageError
from instructrl.modeling import load_base_model
from instructrl.ppo import InstructPPOTrainer
from instructrl.ptx import PretrainingStream, predicted_tokens, ptx_loss
from instructrl.reward_shaping import LengthCorrection
from instructrl.shared_base import SharedBase, logits_from
from ppo_fixtures import make_adapters, ppo_config, ppo_recipe, run


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir, tokenizer):
    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"), tokenizer)


def query_responses(tokenizer) -> tuple[torch.Tensor, int]:
    """Two left-padded prompts followed by 'generated' responses, one ending early (right pad)."""
    prompts = [
        tokenizer("Describe tea.", add_special_tokens=False)["input_ids"],
        tokenizer("Why is the sky blue today?", add_special_tokens=False)["input_ids"],
    ]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    queries = [[pad] * (width - len(p)) + p for p in prompts]
    responses = [
        tokenizer(" Tea is a warm drink", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
        tokenizer(" Light scatters", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id],
    ]
    length = max(len(r) for r in responses)
    responses = [r + [pad] * (length - len(r)) for r in responses]
    return torch.tensor([q + r for q, r in zip(queries, responses, strict=True)]), width


def ppo_like_loss(policy_logits, values, qr, context, pad):
    """A stand-in for one PPO micro-batch's loss: policy log-probs weighted by fixed advantages + value error."""
    logits = policy_logits[:, context - 1 : -1]
    response = qr[:, context:]
    logprobs = torch.log_softmax(logits.float(), -1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    mask = response != pad
    advantages = torch.linspace(-1.0, 1.0, response.shape[1]).expand_as(logprobs)
    pg = -(advantages * logprobs * mask).sum() / mask.sum()
    v = values[:, context - 1 : -1].squeeze(-1)
    returns = torch.full_like(v, 0.5)
    vf = 0.5 * (((v - returns) ** 2) * mask).sum() / mask.sum()
    return pg + 0.1 * vf


def model_args(path: Path, four_bit: bool) -> ModelConfig:
    return ModelConfig(model_name_or_path=str(path), dtype="float32", load_in_4bit=four_bit, bnb_4bit_quant_type="nf4")


def shared_gradients(model_dir, sft, rm, tokenizer, four_bit, **layout):
    shared = SharedBase(load_base_model(model_args(model_dir, four_bit), tokenizer), rm, sft, **layout)
    wrapper = PolicyAndValueWrapper(shared.policy(), shared.value_model())
    qr, context = query_responses(tokenizer)
    output, values = forward(wrapper, qr, tokenizer.pad_token_id)
    ppo_like_loss(output.logits, values, qr, context, tokenizer.pad_token_id).backward()
    grads = {}
    for name, param in shared.shared.named_parameters():
        if param.grad is not None:
            grads[name] = param.grad.clone()
    grads["value_head.weight"] = shared.value_head.weight.grad.clone()
    return shared, grads


def separate_gradients(model_dir, sft, rm, tokenizer, four_bit):
    """The same micro-batch on two separately loaded models: a policy PeftModel and a classifier PeftModel."""
    args = model_args(model_dir, four_bit)
    policy = PeftModel.from_pretrained(load_base_model(args, tokenizer), sft, is_trainable=True)
    classifier = load_base_model(args, tokenizer, task="reward")
    value = PeftModel.from_pretrained(classifier, rm, is_trainable=True)
    qr, context = query_responses(tokenizer)
    mask = qr != tokenizer.pad_token_id
    position_ids = mask.cumsum(1) - mask.long()
    ids = torch.masked_fill(qr, ~mask, 0)
    hidden = value.base_model.model.model(
        input_ids=ids, attention_mask=mask, position_ids=position_ids
    ).last_hidden_state
    values = value.base_model.model.score(hidden.float()) + 0.25  # the saved normalization bias
    logits = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits
    ppo_like_loss(logits, values, qr, context, tokenizer.pad_token_id).backward()
    grads = {}
    for name, param in policy.named_parameters():
        if param.grad is not None:
            grads[name.replace(".default.", ".policy.")] = param.grad
    for name, param in value.named_parameters():
        if param.grad is not None and "lora_" in name:
            grads[name.replace(".default.", ".value.")] = param.grad
        elif param.grad is not None and "score" in name:
            grads["value_head.weight"] = param.grad
    return grads


@pytest.mark.parametrize("four_bit", [False, True], ids=["fp32", "nf4"])
def test_shared_layout_gradients_equal_separate_models(tiny_model_dir, adapters, tokenizer, four_bit):
    """Policy and value gradients of one PPO micro-batch: shared base vs separate models.

    Tolerance: fp32 rtol=1e-4, atol=1e-6; nf4 the same (both sides dequantize the same 4-bit weights).
    """
    sft, rm = adapters
    torch.manual_seed(0)
    shared, got = shared_gradients(tiny_model_dir, sft, rm, tokenizer, four_bit)
    expected = separate_gradients(tiny_model_dir, sft, rm, tokenizer, four_bit)
    lora_keys = {k for k in expected if "lora_" in k}
    assert any(".policy." in k for k in lora_keys) and any(".value." in k for k in lora_keys)
    for key in sorted(lora_keys | {"value_head.weight"}):
        shared_key = key.replace("base_model.model.model.model.", "base_model.model.model.")
        assert shared_key in got, f"no gradient reached {key} in the shared layout"
        torch.testing.assert_close(got[shared_key], expected[key].reshape(got[shared_key].shape), rtol=1e-4, atol=1e-6)
    # Frozen adapters received nothing.
    assert not any(".reference." in k or ".reward." in k for k in got)


def test_train_top_layers_trains_policy_and_value_above_with_the_same_gradients(tiny_model_dir, adapters, tokenizer):
    """`top_layers=1` on the 2-layer model: layer 0's policy and value LoRA frozen (no gradient, and no activation
    there needs one: back-propagation stops at layer 1), layer 1's gradients those of training every layer."""
    sft, rm = adapters
    torch.manual_seed(0)
    _, every = shared_gradients(tiny_model_dir, sft, rm, tokenizer, False)
    needs_grad: dict[int, list[bool]] = {0: [], 1: []}
    original_init = SharedBase.__init__

    def init_and_watch(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        for index, layer in enumerate(self.shared.get_base_model().model.layers):
            layer.register_forward_hook(lambda m, a, out, i=index: needs_grad[i].append(out[0].requires_grad))

    with patch.object(SharedBase, "__init__", init_and_watch):
        torch.manual_seed(0)
        shared, top = shared_gradients(tiny_model_dir, sft, rm, tokenizer, False, top_layers=1)
    lora = {n: p for n, p in shared.shared.named_parameters() if "lora_" in n}
    trainable = {n for n, p in lora.items() if p.requires_grad}
    assert trainable == {n for n in lora if ".layers.1." in n and (".policy." in n or ".value." in n)}
    assert trainable and all(n in top for n in trainable)
    assert not any(".layers.0." in n for n in top)
    for name in trainable:
        torch.testing.assert_close(top[name], every[name], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(top["value_head.weight"], every["value_head.weight"], rtol=1e-5, atol=1e-7)
    assert needs_grad[0] and not any(needs_grad[0]) and all(needs_grad[1])


def test_ppo_with_train_top_layers_keeps_the_lower_layers_at_sft(tmp_path, tiny_model_dir, adapters):
    sft, rm = adapters
    run(ppo_config(tmp_path, tiny_model_dir, sft, rm, total_episodes=4, train_top_layers=1))
    policy = load_file(tmp_path / "ppo" / "adapter_model.safetensors")
    sft_weights = load_file(sft / "adapter_model.safetensors")
    lower = [k for k in sft_weights if ".layers.0." in k]
    upper = [k for k in sft_weights if ".layers.1." in k]
    assert lower and upper
    assert all(torch.equal(policy[k], sft_weights[k]) for k in lower)
    assert any(not torch.equal(policy[k], sft_weights[k]) for k in upper)
    for wrong in (0, -1):
        with pytest.raises(ConfigError, match="train_top_layers"):
            run(ppo_config(tmp_path, tiny_model_dir, sft, rm, train_top_layers=wrong))


def output_layer_rows(model) -> list[int]:
    """Rows (batch x positions) each call of `model`'s output layer computes, appended as it runs."""
    rows: list[int] = []
    head = model.get_base_model().get_output_embeddings()
    head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0] * args[0].shape[1]))
    return rows


def policy_value_forward(model_dir, sft, rm, tokenizer, four_bit: bool, skip_prompt: bool):
    """One PPO micro-batch's forward/backward through TRL's `forward`, with or without `logits_from`: the rows the
    output layer computed, the logits and the gradients."""
    qr, context = query_responses(tokenizer)
    pad = tokenizer.pad_token_id
    shared = SharedBase(load_base_model(model_args(model_dir, four_bit), tokenizer), rm, sft)
    rows = output_layer_rows(shared.shared)
    wrapper = PolicyAndValueWrapper(shared.policy(), shared.value_model())
    with logits_from(context - 1) if skip_prompt else contextlib.nullcontext():
        output, values = forward(wrapper, qr, pad)
    ppo_like_loss(output.logits, values, qr, context, pad).backward()
    grads = {n: p.grad.clone() for n, p in shared.shared.named_parameters() if p.grad is not None}
    return shared, rows, output.logits.detach(), grads


@pytest.mark.parametrize("four_bit", [False, True], ids=["fp32", "nf4"])
def test_logits_from_the_prompts_end_are_the_full_forwards_with_the_same_gradients(
    tiny_model_dir, adapters, tokenizer, four_bit
):
    """`logits_from(context - 1)`: the output layer runs over the response positions only, and what PPO reads of
    the logits (from the prompt's last position on), and the policy and value gradients, are the full forward's."""
    sft, rm = adapters
    qr, context = query_responses(tokenizer)
    _, full_rows, full, full_grads = policy_value_forward(tiny_model_dir, sft, rm, tokenizer, four_bit, False)
    shared, rows, kept, grads = policy_value_forward(tiny_model_dir, sft, rm, tokenizer, four_bit, True)
    batch, width = qr.shape
    assert full_rows == [batch * width] and rows == [batch * (width - context + 1)]
    assert kept.shape == full.shape and kept[:, : context - 1].eq(0).all()
    torch.testing.assert_close(kept[:, context - 1 :], full[:, context - 1 :], rtol=1e-5, atol=1e-5)
    assert grads.keys() == full_grads.keys() and any(".policy." in k for k in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, full_grads[name], rtol=1e-4, atol=1e-6)
    # Outside the block, and for a call that asks for its own `logits_to_keep`, the view runs whole.
    view = shared.policy()
    assert view(input_ids=qr).logits.shape[1] == width
    with logits_from(context - 1):
        assert view(input_ids=qr, logits_to_keep=1).logits.shape[1] == 1


def ppo_update(tmp_path, model_dir, sft, rm, monkeypatch, skip_prompt: bool):
    """One PPO update (no ptx) with or without `response_logits_only`: the output layer's rows, the update's log
    and the policy's weights."""
    rows: list[list[int]] = []
    real_train = InstructPPOTrainer.train

    def train(trainer, *args, **kwargs):
        policy = trainer.shared.adapter_parameters("policy")
        before = [p.detach().clone() for p in policy]
        rows.append(output_layer_rows(trainer.shared.shared))
        result = real_train(trainer, *args, **kwargs)
        assert any(not torch.equal(a, b) for a, b in zip(before, policy, strict=True))  # the update trained it
        return result

    monkeypatch.setattr(InstructPPOTrainer, "train", train)
    if not skip_prompt:
        monkeypatch.setattr(ppo_module, "response_logits_only", contextlib.nullcontext)
    config = dict(ptx_coef=0.0, total_episodes=4, save_strategy="no", score_heldout=False, rollout_logprobs="forward")
    trainer = run(ppo_config(tmp_path, model_dir, sft, rm, **config))
    (log,) = [log for log in trainer.state.log_history if "objective/scores" in log]
    (counted,) = rows
    return counted, log, [p.detach().clone() for p in trainer.shared.adapter_parameters("policy")]


def test_ppo_skips_the_prompts_output_layer_and_trains_the_same_policy(
    tmp_path_factory, tiny_model_dir, adapters, monkeypatch
):
    """An update with `response_logits_only` (the default) against one with the output layer over whole sequences:
    the same rollouts, statistics and trained weights, with fewer positions through the output layer."""
    sft, rm = adapters
    rows, log, policy = ppo_update(tmp_path_factory.mktemp("skip"), tiny_model_dir, sft, rm, monkeypatch, True)
    full = ppo_update(tmp_path_factory.mktemp("full"), tiny_model_dir, sft, rm, monkeypatch, False)
    full_rows, full_log, full_policy = full
    assert rows and sum(rows) < sum(full_rows)
    for key in ("objective/scores", "objective/kl", "policy/approxkl_avg", "loss/policy_avg", "val/ratio"):
        assert log[key] == pytest.approx(full_log[key], rel=1e-4, abs=1e-6), key
    for got, expected in zip(policy, full_policy, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_reward_ensemble_on_one_base_combines_each_members_reward(tiny_model_dir, adapters, tokenizer, tmp_path):
    from trl.experimental.utils import get_reward

    from instructrl.reward import ensemble_reward
    from instructrl.shared_base import ScalarModel

    sft, rm = adapters
    # A second reward model: the first one's weights moved, so the members disagree.
    rm2 = tmp_path / "rm2"
    rm2.mkdir()
    for name in ("adapter_config.json", "reward_normalization.json"):
        (rm2 / name).write_bytes((rm / name).read_bytes())
    generator = torch.Generator().manual_seed(5)
    tensors = {
        k: v + 0.5 * torch.randn(v.shape, generator=generator)
        for k, v in load_file(rm / "adapter_model.safetensors").items()
    }
    save_file(tensors, str(rm2 / "adapter_model.safetensors"))
    base = load_base_model(model_args(tiny_model_dir, False), tokenizer)
    base_numel = sum(p.numel() for p in base.parameters())
    shared = SharedBase(base, rm, sft, more_reward_adapters=[rm2], ensemble_method="mean_minus_std", ensemble_coef=0.5)
    # Still one copy of the base: only adapters were added.
    assert sum(p.numel() for n, p in shared.shared.named_parameters() if "lora_" not in n) == base_numel
    assert not any(p.requires_grad for n, p in shared.shared.named_parameters() if ".reward" in n)
    ids, context = query_responses(tokenizer)
    pad = tokenizer.pad_token_id
    members = [
        get_reward(ScalarModel(shared.shared, name, head), ids, pad, context)[1]
        for name, head in zip(shared.reward_adapters, shared.reward_heads, strict=True)
    ]
    assert not torch.allclose(members[0], members[1], atol=1e-3)
    ensemble = get_reward(shared.reward_model(), ids, pad, context)[1]
    expected = torch.stack(members, dim=-1).mean(-1) - 0.5 * torch.stack(members, dim=-1).std(-1, correction=0)
    torch.testing.assert_close(ensemble, expected)
    torch.testing.assert_close(ensemble, ensemble_reward(torch.stack(members, dim=-1), "mean_minus_std", 0.5))


@pytest.mark.parametrize("init", ["reward", "zero"])
def test_value_function_starts_from_the_reward_model_with_its_head_or_zero(tiny_model_dir, adapters, tokenizer, init):
    """The value adapter starts as the reward adapter either way; `value_head_init` decides the head: the reward
    model's (the value of every prefix is then the RM's score of it) or zeros (a value of 0 everywhere)."""
    from trl.experimental.utils import get_reward

    sft, rm = adapters
    shared = SharedBase(load_base_model(model_args(tiny_model_dir, False), tokenizer), rm, sft, value_head_init=init)
    lora = {n: p for n, p in shared.shared.named_parameters() if "lora_" in n}
    for name, param in lora.items():
        if ".value." in name:
            torch.testing.assert_close(param, lora[name.replace(".value.", ".reward.")])
    ids, context = query_responses(tokenizer)
    pad = tokenizer.pad_token_id
    values = get_reward(shared.value_model(), ids, pad, context)[0]
    rewards = get_reward(shared.reward_model(), ids, pad, context)[0]
    assert shared.value_head.weight.requires_grad
    if init == "reward":
        torch.testing.assert_close(values, rewards)
    else:
        assert not rewards.eq(0).all() and values.eq(0).all()


def test_one_copy_of_the_base_weights(tiny_model_dir, adapters, tokenizer):
    sft, rm = adapters
    base = load_base_model(model_args(tiny_model_dir, False), tokenizer)
    base_numel = sum(p.numel() for p in base.parameters())
    shared = SharedBase(base, rm, sft)
    views = [shared.policy(), shared.reference(), shared.reward_model(), shared.value_model()]
    storages = {
        p.data_ptr()
        for v in views
        for n, p in v.named_parameters()
        if "lora_" not in n and "score" not in n and "weight" in n
    }
    base_storages = {p.data_ptr() for n, p in shared.shared.named_parameters() if "lora_" not in n}
    assert storages == base_storages
    non_lora = sum(p.numel() for n, p in shared.shared.named_parameters() if "lora_" not in n)
    assert non_lora == base_numel
    all_params = {id(p) for v in views for p in v.parameters()}
    counted = sum(p.numel() for v in views for p in v.parameters() if id(p) in all_params)
    unique = sum({id(p): p.numel() for v in views for p in v.parameters()}.values())
    assert unique < counted / 3  # four views, one set of base weights
    trainable = {n.split(".lora_")[1].split(".")[1] for n, p in shared.shared.named_parameters() if p.requires_grad}
    assert trainable == {"policy", "value"}
    assert not shared.reward_head.weight.requires_grad and shared.value_head.weight.requires_grad
    torch.testing.assert_close(shared.value_head.weight, shared.reward_head.weight)
    assert shared.reward_head.bias.item() == pytest.approx(0.25)


def test_ptx_loss_is_the_mean_next_token_nll_over_real_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, requires_grad=True)
    ids = torch.tensor([[1, 2, 3, 4], [0, 4, 2, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    loss = ptx_loss(logits, ids, mask)
    assert predicted_tokens(mask) == 5
    # Hand-computed mean next-token NLL over the 5 supervised positions.
    logp = torch.log_softmax(logits, -1)
    positions = [(0, 0, 2), (0, 1, 3), (0, 2, 4), (1, 0, 4), (1, 1, 2)]
    manual = -sum(logp[b, t, y] for b, t, y in positions) / 5
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(loss, logits)
    (manual_grad,) = torch.autograd.grad(manual, logits)
    torch.testing.assert_close(grad, manual_grad)
    # Chunks normalized by the whole batch's token count add up to the full loss.
    first = ptx_loss(logits[:1], ids[:1], mask[:1], num_tokens=5)
    second = ptx_loss(logits[1:], ids[1:], mask[1:], num_tokens=5)
    assert (first + second).item() == pytest.approx(loss.item(), rel=1e-6)


def test_ppo_ptx_end_to_end_saves_a_loadable_policy_and_resumes(tmp_path, tiny_model_dir, adapters, tokenizer):
    sft, rm = adapters
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, report_to="tensorboard"))
    out = tmp_path / "ppo"
    logs = [log for log in trainer.state.log_history if "objective/scores" in log]
    assert len(logs) == 2
    for log in logs:
        assert log["ptx/tokens"] > 0 and log["ptx/lm_loss"] > 0
        assert {"objective/kl", "objective/entropy", "loss/value_avg", "grad_norm"} <= set(log)
    # The policy moved, the reference (SFT) and the reward stayed.
    policy = load_file(out / "adapter_model.safetensors")
    sft_weights = load_file(sft / "adapter_model.safetensors")
    assert any(not torch.equal(policy[k], sft_weights[k]) for k in sft_weights)
    shared = trainer.shared.shared
    for name, param in shared.named_parameters():
        if ".reference." in name:
            key = name.replace(".reference.", ".").replace("base_model.model.", "base_model.model.", 1)
            assert torch.equal(param.detach(), sft_weights[key]), name
    # PeftModel.from_pretrained loads the saved policy.
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    for name, param in reloaded.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(param, policy[name.replace(".default", "")])
    summary = json.loads((out / "ppo_summary.json").read_text())
    assert summary["updates"] == 2
    held = summary["heldout_rm_score"]
    assert held["prompts"] == 3
    (logged,) = [log for log in trainer.state.log_history if "heldout/rm_score" in log]
    assert logged["heldout/rm_score"] == held["policy"]["mean"]
    assert logged["heldout/win_rate"] == held["win_rate"]["rate"]
    tags = set()  # the writer closes when training ends and reopens for the held-out score: two event files
    for events in (out / "runs").rglob("events.out.tfevents.*"):
        tags |= set(EventAccumulator(str(events)).Reload().Tags()["scalars"])
    assert {"train/objective/scores", "train/ptx/lm_loss", "train/heldout/rm_score"} <= tags
    # Resume from the first checkpoint: one update left, same weights as saved there.
    resumed = run(
        ppo_config(tmp_path, tiny_model_dir, sft, rm, output_dir=str(tmp_path / "ppo2")),
        "--resume_from_checkpoint",
        str(out / "checkpoint-1"),
    )
    first_log, resumed_log = [log for log in resumed.state.log_history if "objective/scores" in log]
    assert resumed_log["episode"] == 8  # the uninterrupted run's second update, not a first one again
    assert resumed.state.global_step == 2
    # The log keeps the checkpoint's update before the new one: the resumed run's summary covers both.
    assert json.dumps(first_log, sort_keys=True) == json.dumps(logs[0], sort_keys=True)  # as JSON: NaN entries
    assert json.loads((tmp_path / "ppo2" / "ppo_summary.json").read_text())["updates"] == 2
    saved_log = json.loads((tmp_path / "ppo2" / "log_history.json").read_text())
    assert [log["episode"] for log in saved_log if "objective/scores" in log] == [logs[0]["episode"], 8]
    # It started from checkpoint-1's weights (tested in full in test_recovery.py) and moved on from them.
    first = load_file(out / "checkpoint-1" / "adapter_model.safetensors")
    second = load_file(tmp_path / "ppo2" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_heldout_rm_score_pairs_the_trained_policy_with_the_reference(tmp_path, tiny_model_dir, adapters, monkeypatch):
    """Untrained, the policy is the SFT adapter: same greedy answers, zero change; moving it moves only its own."""
    sft, rm = adapters
    monkeypatch.setattr(ppo_recipe.InstructPPOTrainer, "train", lambda self: None)
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, heldout_samples=3, temperature=1.0))
    summary = json.loads((tmp_path / "ppo" / "ppo_summary.json").read_text())
    for key in ("heldout_rm_score", "heldout_rm_score_sampled"):  # greedy; sampled from the same random state
        assert summary[key]["prompts"] == 3
        assert summary[key]["change"]["mean"] == 0 and summary[key]["win_rate"]["ties"] == 3
        tokens = summary[key]["response_tokens"]  # the same answers: the same length
        assert tokens["reference"] == tokens["policy"]
    assert summary["heldout_rm_score_sampled"]["response_tokens"]["policy"] > 0  # the tiny model's samples have text
    (logged,) = [log for log in trainer.state.log_history if "heldout/sampled_rm_score" in log]
    assert logged["heldout/sampled_rm_score"] == summary["heldout_rm_score_sampled"]["policy"]["mean"]
    assert (
        logged["heldout/sampled_response_tokens"] == summary["heldout_rm_score_sampled"]["response_tokens"]["policy"]
    )
    prompts = [[{"role": "user", "content": text}] for text in ("Name a color.", "Say hi.", "Count to three.")]
    sampled_texts = trainer.heldout_responses(prompts, "reference", samples=3)
    assert [len(texts) for texts in sampled_texts] == [3, 3, 3]
    reference = trainer.heldout_rm_scores(prompts, "reference")
    sampled = trainer.heldout_rm_scores(prompts, "reference", samples=3)
    assert trainer.heldout_rm_scores(prompts, "policy") == reference
    assert sampled != reference  # samples, not the greedy answer three times
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in trainer.shared.shared.named_parameters():
            if ".policy." in name and "lora_B" in name:
                param.add_(torch.randn(param.shape, generator=generator))
    assert trainer.heldout_rm_scores(prompts, "policy") != reference
    assert trainer.heldout_rm_scores(prompts, "policy", samples=3) != sampled
    assert trainer.heldout_rm_scores(prompts, "reference") == reference
    assert trainer.heldout_rm_scores(prompts, "reference", samples=3) == sampled


def test_resumed_ppo_continues_with_the_prompts_not_yet_seen(tmp_path, tiny_model_dir, adapters, monkeypatch):
    """Resuming after one update starts at the second prompt batch, not the first (TRL's loop would restart it)."""
    sft, rm = adapters
    run(ppo_config(tmp_path, tiny_model_dir, sft, rm, total_episodes=4, save_steps=1))
    seen: list[torch.Tensor] = []
    ptx_seen: list[list[int]] = []

    def record_batches(trainer):  # stands in for train(): the prompts and ptx sequences it would draw, in order
        batches = iter(trainer.dataloader)
        seen.extend(next(batches)["input_ids"] for _ in range(2))
        ptx_seen.append([trainer.ptx_stream._next_index() for _ in range(2 * trainer.ptx_sequences_per_update())])

    monkeypatch.setattr(ppo_recipe.InstructPPOTrainer, "train", record_batches)
    run(ppo_config(tmp_path, tiny_model_dir, sft, rm, output_dir=str(tmp_path / "fresh")))
    first, second = seen
    assert not torch.equal(first, second)
    seen.clear()
    checkpoint = tmp_path / "ppo" / "checkpoint-1"
    run(
        ppo_config(tmp_path, tiny_model_dir, sft, rm, output_dir=str(tmp_path / "resumed")),
        "--resume_from_checkpoint",
        str(checkpoint),
    )
    assert torch.equal(seen[0], second)
    fresh_ptx, resumed_ptx = ptx_seen
    per_update = len(fresh_ptx) // 2
    assert per_update == 4 * 2 * 2 * 2  # PPO epochs (TRL default 4) x accumulation steps x ptx_ratio x batch
    assert resumed_ptx[:per_update] == fresh_ptx[per_update:]


def test_plain_ppo_has_no_ptx_and_clipping_bounds_the_norm(tmp_path, tiny_model_dir, adapters, monkeypatch):
    sft, rm = adapters
    draws = []
    real_sample = generation.inverse_cdf_sample
    monkeypatch.setattr(generation, "inverse_cdf_sample", lambda p, g=None: draws.append(p.shape) or real_sample(p, g))
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, ptx_coef=0.0, max_grad_norm=1e-3, total_episodes=4))
    assert draws  # the rollouts were sampled by the fast CPU sampler
    assert torch.multinomial is generation._torch_multinomial
    assert trainer.ptx_stream is None
    logs = [log for log in trainer.state.log_history if "objective/scores" in log]
    assert logs and all("ptx/lm_loss" not in log for log in logs)
    # The recorded norm is the pre-clipping norm; after clipping the gradient must be at most max_grad_norm.
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    trainer.accelerator.gradient_state._set_sync_gradients(True)
    trainer._backward_with_ptx_and_clipping(sum((p * 0).sum() for p in params))
    ones_norm = sum(p.numel() for p in params) ** 0.5
    assert trainer._ptx_stats["grad_norm"][-1] == pytest.approx(ones_norm, rel=1e-5)  # logged: before clipping
    total = torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params))
    assert total.item() == pytest.approx(1e-3, rel=1e-4)  # applied: clipped to max_grad_norm


def test_value_warmup_trains_the_value_function_alone_first(tmp_path, tiny_model_dir, adapters, monkeypatch):
    """`value_warmup_updates: 1`: the first update moves the value adapter only (no policy step, no ptx draw)."""
    sft, rm = adapters
    snapshots: list[tuple[list[torch.Tensor], list[torch.Tensor], dict]] = []
    real_train, real_log = InstructPPOTrainer.train, InstructPPOTrainer.log

    def snapshot(trainer, logs=None):
        policy, value = (trainer.shared.adapter_parameters(name) for name in ("policy", "value"))
        assert policy and value and not {id(p) for p in policy} & {id(p) for p in value}
        snapshots.append(([p.detach().clone() for p in policy], [p.detach().clone() for p in value], dict(logs or {})))

    def train(trainer, *args, **kwargs):
        snapshot(trainer)
        return real_train(trainer, *args, **kwargs)

    def log(trainer, logs, *args, **kwargs):
        real_log(trainer, logs, *args, **kwargs)
        if "objective/scores" in logs:
            snapshot(trainer, logs)

    monkeypatch.setattr(InstructPPOTrainer, "train", train)
    monkeypatch.setattr(InstructPPOTrainer, "log", log)
    run(ppo_config(tmp_path, tiny_model_dir, sft, rm, value_warmup_updates=1, score_heldout=False))
    (policy0, value0, _), (policy1, value1, log1), (policy2, value2, log2) = snapshots

    def moved(before, after):
        return any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))

    assert not moved(policy0, policy1) and moved(value0, value1)  # update 1: the value function alone
    assert "ptx/lm_loss" not in log1  # ... and no pretraining draw, which would only move the policy
    assert moved(policy1, policy2) and moved(value1, value2)  # update 2: both, with the ptx term
    assert "ptx/lm_loss" in log2


def test_ppo_ptx_gradient_adds_to_ppo_gradient(tmp_path, tiny_model_dir, adapters, tokenizer):
    """The hook's ptx backward adds exactly coef x LM-loss gradient to the policy's gradient buffers."""
    sft, rm = adapters
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, total_episodes=4, max_grad_norm=0.0))
    params = [p for n, p in trainer.shared.shared.named_parameters() if p.requires_grad and ".policy." in n]
    stream = trainer.ptx_stream
    remaining = list(stream._order)
    generator_state = stream.generator.get_state()
    stream._order = iter(remaining)
    for p in params:
        p.grad = None
    trainer.ptx_backward(4)
    hooked = [p.grad.clone() for p in params]
    # Recompute by hand from the same pretraining batch.
    stream._order = iter(remaining)
    stream.generator.set_state(generator_state)
    ids, mask = trainer.ptx_stream.next_batch(4)
    for p in params:
        p.grad = None
    logits = trainer.shared.policy()(input_ids=ids, attention_mask=mask).logits
    loss = 27.8 * ptx_loss(logits, ids, mask)  # gamma x the LM loss is what the hook adds
    (loss / trainer.args.gradient_accumulation_steps).backward()
    for got, p in zip(hooked, params, strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-7)


def test_ppo_needs_the_earlier_stages(tmp_path, tiny_model_dir, adapters):
    sft, rm = adapters
    with pytest.raises(MissingStageError, match="make rm"):
        run(ppo_config(tmp_path, tiny_model_dir, sft, tmp_path / "no-rm"))
    with pytest.raises(MissingStageError, match="make sft"):
        run(ppo_config(tmp_path, tiny_model_dir, tmp_path / "no-sft", rm))


def test_pretraining_stream_names_a_missing_text_column(tokenizer):
    from datasets import Dataset

    from instructrl.errors import DataError

    with pytest.raises(DataError, match="ptx_text_field"):
        PretrainingStream(Dataset.from_list([{"body": "x y z"}]), tokenizer, "text", 16)
    stream = PretrainingStream(
        Dataset.from_list([{"text": "one two three"}, {"text": "four five"}]), tokenizer, "text", 16, seed=1
    )
    ids, mask = stream.next_batch(5)
    assert ids.shape[0] == 5 and mask.sum() > 0


def test_ppo_ptx_with_two_processes_keeps_the_replicas_identical(tmp_path, tiny_model_dir, adapters):
    """DDP on 2 CPU processes: each draws its own pretraining sequences, and the ptx gradient is averaged like PPO's,
    so after an update both replicas hold the same weights (a process-local ptx gradient would make them differ)."""
    sft, rm = adapters
    config = ppo_config(
        tmp_path, tiny_model_dir, sft, rm, total_episodes=8, save_strategy="no", output_dir=str(tmp_path / "ddp")
    )
    worker = Path(__file__).resolve().parent / "ddp_ppo_worker.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([*command, str(worker), str(config), str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert first["ptx_ids"] and len(first["ptx_ids"]) == len(second["ptx_ids"])
    assert not torch.equal(first["ptx_ids"][0], second["ptx_ids"][0]), "both processes drew the same ptx batch"
    sft_weights = load_file(sft / "adapter_model.safetensors")
    policy = {n: w for n, w in first["weights"].items() if ".policy." in n}
    moved = [n for n, w in policy.items() if not torch.equal(w, sft_weights[n.replace(".policy.", ".")])]
    assert moved, "the update did not change the policy"
    for name, weight in first["weights"].items():
        torch.testing.assert_close(weight, second["weights"][name], rtol=0, atol=1e-6, msg=name)


def test_ptx_batch_follows_the_micro_batches_trl_actually_runs(tmp_path, tiny_model_dir, adapters, monkeypatch):
    """With several mini-batches TRL's micro-batches are smaller than `per_device_train_batch_size`: the ptx batch
    is `ptx_ratio` x the episodes actually back-propagated, and the per-update count used by resume agrees."""
    sft, rm = adapters
    requested: list[int] = []
    original = PretrainingStream.next_batch

    def record(self, num_sequences):
        requested.append(num_sequences)
        return original(self, num_sequences)

    monkeypatch.setattr(PretrainingStream, "next_batch", record)
    shape = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_mini_batches=2, num_ppo_epochs=1)
    trainer = run(ppo_config(tmp_path, tiny_model_dir, sft, rm, total_episodes=4, save_strategy="no", **shape))
    assert requested == [2 * 2, 2 * 2]  # ptx_ratio 2 x 2 episodes, in each of the 2 micro-batches
    assert trainer.ptx_sequences_per_update() == sum(requested)


def test_truncated_rollouts_are_logged_and_warned_about_once(caplog):
    eos = 7
    trainer = SimpleNamespace(
        args=SimpleNamespace(local_batch_size=32, missing_eos_penalty=1.0, response_length=48),
        state=SimpleNamespace(global_step=1),
        processing_class=SimpleNamespace(eos_token_id=eos),
        stop_token_id=eos,
        _warned_truncation=False,
    )
    log = InstructPPOTrainer._log_truncation
    few = {"val/num_eos_tokens": 31}
    with caplog.at_level("WARNING", logger="instructrl"):
        log(trainer, few)
        assert few["rollouts/truncated_share"] == pytest.approx(1 / 32) and not caplog.records
        many = {"val/num_eos_tokens": 27}
        log(trainer, many)
        assert many["rollouts/truncated_share"] == pytest.approx(5 / 32)
        (record,) = caplog.records
        assert "16% of update 1's rollouts" in record.message and "(48 tokens)" in record.message
        assert "`missing_eos_penalty` (1)" in record.message and "raise `response_length`" in record.message
        log(trainer, {"val/num_eos_tokens": 0})  # warned once per run
        assert len(caplog.records) == 1
    trainer.stop_token_id = None  # no stop token: nothing ends a rollout early, nothing to report
    untouched = {"val/num_eos_tokens": 0}
    log(trainer, untouched)
    assert "rollouts/truncated_share" not in untouched


@pytest.mark.parametrize("choice", ["score", "neutral"])
def test_truncated_reward_neutral_is_applied_in_training(tmp_path, tiny_model_dir, adapters, monkeypatch, choice):
    """With `truncated_reward: neutral` every rollout batch's RM scores pass through `neutralize_truncated` with the
    rollouts' responses and the stop token; with `score` they do not. TRL's function is back afterwards."""
    sft, rm = adapters
    seen, real = [], ppo_module.neutralize_truncated

    def spy(scores, responses, stop_token_id):
        seen.append((scores.shape[0], responses.shape, stop_token_id))
        return real(scores, responses, stop_token_id)

    original = trl_ppo.get_reward
    monkeypatch.setattr(ppo_module, "neutralize_truncated", spy)
    config = ppo_config(
        tmp_path,
        tiny_model_dir,
        sft,
        rm,
        total_episodes=4,
        save_strategy="no",
        score_heldout=False,
        truncated_reward=choice,
    )
    trainer = run(config)
    assert trl_ppo.get_reward is original
    if choice == "score":
        assert seen == []
    else:
        assert seen and all(n == 4 and shape[0] == 4 for n, shape, _ in seen)
        assert {stop for _, _, stop in seen} == {trainer.processing_class.eos_token_id}


def test_length_correction_on_the_sft_samples_is_taken_out_of_every_finished_rollout(
    tmp_path, tiny_model_dir, adapters, monkeypatch
):
    """`length_correction: sft` fits once, before training, on `prompts x samples` reference samples, without moving
    the random state the rollouts draw from (refitting gives the same correction); every rollout batch's RM scores
    then pass through it; the fit is in `ppo_summary.json`. Without it, nothing is fitted or applied."""
    sft, rm = adapters
    fits, applied = [], []
    real_fit, real_apply = LengthCorrection.fit.__func__, LengthCorrection.apply

    def spy_fit(cls, scores, responses, stop_token_id, samples_per_prompt):
        fits.append((scores.shape[0], responses.shape, samples_per_prompt))
        return real_fit(cls, scores, responses, stop_token_id, samples_per_prompt)

    def spy_apply(self, scores, responses, stop_token_id):
        applied.append(scores.shape[0])
        return real_apply(self, scores, responses, stop_token_id)

    monkeypatch.setattr(LengthCorrection, "fit", classmethod(spy_fit))
    monkeypatch.setattr(LengthCorrection, "apply", spy_apply)
    common = dict(total_episodes=4, save_strategy="no", score_heldout=False, ptx_coef=0.0)
    for name in ("off", "on"):
        (tmp_path / name).mkdir()
    trainer = run(ppo_config(tmp_path / "off", tiny_model_dir, sft, rm, **common))
    assert trainer.length_correction is None and fits == [] and applied == []

    config = ppo_config(
        tmp_path / "on",
        tiny_model_dir,
        sft,
        rm,
        length_correction="sft",
        length_correction_prompts=3,
        length_correction_samples=2,
        **common,
    )
    trainer = run(config)
    assert fits == [(6, torch.Size([6, 8]), 2)]  # 3 prompts x 2 samples, response_length 8
    assert applied and all(n == 4 for n in applied)  # every scoring batch of 4 rollouts
    summary = json.loads((tmp_path / "on" / "ppo" / "ppo_summary.json").read_text())
    assert summary["length_correction"] == trainer.length_correction.to_dict()
    assert summary["length_correction"]["samples"] == 6
    state = torch.get_rng_state()
    with generation.fast_cpu_sampling():  # as in `train`: the same sampler draws the same samples
        assert trainer.fit_length_correction() == trainer.length_correction  # same seed, same samples, same fit
    assert torch.equal(torch.get_rng_state(), state)
