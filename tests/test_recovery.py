"""Training that goes wrong: divergence stops a run safely, a save killed halfway is never resumed from, and resume
restores exactly what the checkpoint holds (so a resumed run continues as the uninterrupted one would)."""

import copy
import json
import unittest.mock

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, Trainer
from trl import ModelConfig, RewardConfig, SFTConfig, SFTTrainer

from helpers import load_recipe, write_jsonl
from instructrl.configs import RewardScriptArguments, ScriptArguments, parse_args
from instructrl.errors import ConfigError, DivergenceError
from instructrl.ptx import PretrainingStream
from instructrl.reward import NORMALIZATION_FILE, RankingRewardTrainer
from instructrl.runs import COMPLETE, RUNNING, latest_complete_checkpoint, resolve_resume, stage_state
from instructrl.shared_base import POLICY, VALUE
from instructrl.threads import THREADS_FILE_ENV, write_share
from ppo_fixtures import make_adapters, ppo_config, ppo_recipe, run
from test_reward import rm_config, synthetic_rankings, write_demos
from test_sft import demo_rows, sft_config

sft_recipe = load_recipe("sft")

rm_recipe = load_recipe("rm")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_model_dir, tokenizer):
    return make_adapters(tiny_model_dir, tmp_path_factory.mktemp("adapters"), tokenizer)


def sft_run(tmp_path, model_dir, *extra, **overrides):
    """SFT on 8 demonstrations, 3 steps, a checkpoint after each, into `tmp_path/sft`."""
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(8))
    values = dict(output_dir=str(tmp_path / "sft"), max_steps=3, per_device_train_batch_size=2, save_strategy="steps")
    config = sft_config(tmp_path, model_dir, data, **{**values, "save_steps": 1, "seed": 0, **overrides})
    return sft_recipe.main(*parse_args((ScriptArguments, SFTConfig, ModelConfig), ["--config", str(config), *extra]))


# Small PPO-ptx steps: 4 updates of 2 episodes, one PPO epoch, a checkpoint after each, no held-out scoring.
PPO_SETTINGS = dict(
    total_episodes=8,
    gradient_accumulation_steps=1,
    num_ppo_epochs=1,
    local_rollout_forward_batch_size=2,
    response_length=6,
    learning_rate=1e-2,
    ptx_coef=1.0,
    ptx_ratio=1,
    ptx_micro_batch_size=2,
    ptx_max_length=16,
    score_heldout=False,
)


def ppo_run(tmp_path, model_dir, sft, rm, *extra, **overrides):
    return run(ppo_config(tmp_path, model_dir, sft, rm, **{**PPO_SETTINGS, **overrides}), *extra)


def poison_after(step: int, compute_loss):
    """`compute_loss` whose loss turns NaN from optimizer step `step` on (as an overflow or a bad row would)."""

    def poisoned(self, model, inputs, *args, **kwargs):
        result = compute_loss(self, model, inputs, *args, **kwargs)
        if self.state.global_step < step:
            return result
        if isinstance(result, tuple):
            return (result[0] * float("nan"), *result[1:])
        return result * float("nan")

    return poisoned


# -- divergence ---------------------------------------------------------------------------------------------------
def test_sft_stops_at_a_nan_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(SFTTrainer, "compute_loss", poison_after(2, SFTTrainer.compute_loss))
    with pytest.raises(DivergenceError, match="optimizer step 3: a gradient is NaN"):
        sft_run(tmp_path, tiny_model_dir)
    out = tmp_path / "sft"
    # The two good steps were saved and nothing after them; the stage is not complete, so the pipeline reruns it.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert latest_complete_checkpoint(out) == out / "checkpoint-2"
    weights = load_file(out / "checkpoint-2" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / COMPLETE).exists() and (out / RUNNING).exists()
    assert stage_state(out)[0] == "interrupted"


def test_rm_stops_at_a_nan(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(RankingRewardTrainer, "compute_loss", poison_after(1, RankingRewardTrainer.compute_loss))
    write_demos(tmp_path)
    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=0))
    config = rm_config(tmp_path, tiny_model_dir, data, max_steps=3, per_device_train_batch_size=2)
    with pytest.raises(DivergenceError, match="optimizer step 2"):
        rm_recipe.main(*parse_args((RewardScriptArguments, RewardConfig, ModelConfig), ["--config", str(config)]))
    assert not (tmp_path / "rm" / COMPLETE).exists()
    assert not (tmp_path / "rm" / "adapter_model.safetensors").exists()


def test_ppo_stops_at_a_nan_ptx_loss(tmp_path, tiny_model_dir, adapters, monkeypatch):
    import instructrl.ppo as ppo_module

    ptx_loss = ppo_module.ptx_loss
    calls = []

    def nan_after_first_update(*args, **kwargs):
        loss = ptx_loss(*args, **kwargs)
        calls.append(1)
        return loss * float("nan") if len(calls) > 1 else loss

    monkeypatch.setattr(ppo_module, "ptx_loss", nan_after_first_update)
    with pytest.raises(DivergenceError, match="update 2: the ptx LM loss is nan"):
        ppo_run(tmp_path, tiny_model_dir, *adapters)
    out = tmp_path / "ppo"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
    policy = load_file(out / "checkpoint-1" / "adapter_model.safetensors")
    assert all(torch.isfinite(w).all() for w in policy.values())
    assert stage_state(out)[0] == "interrupted"


def test_ppo_stops_above_max_kl_before_saving_that_update(tmp_path, tiny_model_dir, adapters):
    with pytest.raises(DivergenceError, match="above `max_kl` 1e-09") as raised:
        ppo_run(tmp_path, tiny_model_dir, *adapters, max_kl=1e-9, learning_rate=0.05)
    message = str(raised.value)
    kl = float(message.split("reached ")[1].split(" nats")[0])
    step = int(message.split("at update ")[1].split(",")[0])
    assert kl > 1e-9
    out = tmp_path / "ppo"
    # Updates before the one that crossed the ceiling were saved; that one was not.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, step)]
    assert stage_state(out)[0] == "interrupted"


def test_max_kl_must_be_positive(tmp_path, tiny_model_dir, adapters):
    with pytest.raises(ConfigError, match="`max_kl` is 0.0 but must be > 0"):
        ppo_run(tmp_path, tiny_model_dir, *adapters, max_kl=0.0)


# -- saving and resuming --------------------------------------------------------------------------------------------
def test_a_save_killed_halfway_is_not_resumed_from(tmp_path, tiny_model_dir, monkeypatch):
    save_rng_state = Trainer._save_rng_state

    def killed_during_second_save(self, output_dir):
        if self.state.global_step == 2:
            raise KeyboardInterrupt  # the model and optimizer of checkpoint-2 are written, trainer_state.json is not
        return save_rng_state(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", killed_during_second_save)
    with pytest.raises(KeyboardInterrupt):
        sft_run(tmp_path, tiny_model_dir)
    out = tmp_path / "sft"
    assert (out / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert latest_complete_checkpoint(out) == out / "checkpoint-1"
    with pytest.raises(ConfigError, match="checkpoint-2' is incomplete"):
        resolve_resume(str(out / "checkpoint-2"), out)
    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)
    resumed_from = []
    train = SFTTrainer.train

    def record(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(SFTTrainer, "train", record)
    trainer = sft_run(tmp_path, tiny_model_dir, "--resume_from_checkpoint", "true")
    assert resumed_from == [str(out / "checkpoint-1")]
    assert trainer.state.global_step == 3 and (out / COMPLETE).exists()


def test_resume_loads_every_trained_state_and_continues_the_uninterrupted_run(tmp_path, tiny_model_dir, adapters):
    sft, rm = adapters
    straight = ppo_run(tmp_path, tiny_model_dir, sft, rm, total_episodes=4)  # two updates, checkpoint-1 and -2
    checkpoint = tmp_path / "ppo" / "checkpoint-1"
    captured = {}
    resume_from = ppo_recipe.InstructPPOTrainer.resume_from

    def capture(self, path):
        done = resume_from(self, path)
        captured["policy"] = state_of(self.shared.shared, POLICY)
        captured["value"] = state_of(self.shared.shared, VALUE)
        captured["value_head"] = {k: v.clone() for k, v in self.shared.value_head.state_dict().items()}
        captured["optimizer"] = copy.deepcopy(self.optimizer.state_dict())  # training goes on to change them
        captured["scheduler"] = copy.deepcopy(self.lr_scheduler.state_dict())
        return done

    with unittest.mock.patch.object(ppo_recipe.InstructPPOTrainer, "resume_from", capture):
        resumed = ppo_run(
            tmp_path,
            tiny_model_dir,
            sft,
            rm,
            "--resume_from_checkpoint",
            str(checkpoint),
            total_episodes=4,
            output_dir=str(tmp_path / "resumed"),
        )
    # What resume loaded is what the checkpoint holds.
    saved_policy = load_file(checkpoint / "adapter_model.safetensors")
    saved_value = load_file(checkpoint / "value" / "adapter_model.safetensors")
    assert_adapter_equal(captured["policy"], saved_policy)
    assert_adapter_equal(captured["value"], saved_value)
    head = load_file(checkpoint / "value" / "value_head.safetensors")
    for key in ("weight", "bias"):
        assert torch.equal(captured["value_head"][key], head[key])
    saved_optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    for index, state in saved_optimizer["state"].items():
        for key, value in state.items():
            assert torch.equal(captured["optimizer"]["state"][index][key], value), (index, key)
    assert captured["scheduler"] == torch.load(checkpoint / "scheduler.pt", weights_only=True)
    # Its one remaining update is the uninterrupted run's second: same samples, same step, same weights after it.
    straight_first, straight_log = [log for log in straight.state.log_history if "objective/scores" in log]
    kept, resumed_log = [log for log in resumed.state.log_history if "objective/scores" in log]
    # The checkpoint's log comes first: the resumed run's log is the whole run's (compared as JSON: NaN entries).
    assert json.dumps(kept, sort_keys=True) == json.dumps(straight_first, sort_keys=True)
    assert resumed_log["episode"] == straight_log["episode"] == 4
    assert resumed_log["objective/scores"] == pytest.approx(straight_log["objective/scores"], abs=1e-6)
    assert resumed_log["objective/kl"] == pytest.approx(straight_log["objective/kl"], abs=1e-6)
    assert_adapter_equal(
        state_of(resumed.shared.shared, POLICY), load_file(tmp_path / "ppo" / "adapter_model.safetensors"), atol=1e-6
    )
    # Counted on from the checkpoint: the resumed run's checkpoint is the uninterrupted run's checkpoint-2.
    assert sorted(p.name for p in (tmp_path / "resumed").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_resumed_reward_model_from_the_sft_adapter_ends_as_the_uninterrupted_one(
    tmp_path, tiny_model_dir, adapters, monkeypatch
):
    """The RM stage started from the SFT adapter (the default) and resumed from a checkpoint: it runs only the steps
    after the checkpoint, from the checkpoint's adapter and score head, and ends where the straight run does."""
    sft, _ = adapters
    write_demos(tmp_path)
    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(12, seed=0))
    settings = dict(max_steps=3, per_device_train_batch_size=2, save_strategy="steps", save_steps=1)
    straight = rm_config(tmp_path, tiny_model_dir, data, **settings, init_adapter=str(sft))
    rm_recipe.main(*parse_args((RewardScriptArguments, RewardConfig, ModelConfig), ["--config", str(straight)]))
    steps = []
    training_step = RankingRewardTrainer.training_step
    monkeypatch.setattr(
        RankingRewardTrainer, "training_step", lambda self, *a, **k: steps.append(1) or training_step(self, *a, **k)
    )
    resumed = rm_config(
        tmp_path, tiny_model_dir, data, **settings, init_adapter=str(sft), output_dir=str(tmp_path / "resumed")
    )
    argv = ["--config", str(resumed), "--resume_from_checkpoint", str(tmp_path / "rm" / "checkpoint-2")]
    rm_recipe.main(*parse_args((RewardScriptArguments, RewardConfig, ModelConfig), argv))
    assert len(steps) == 1  # step 3 only
    expected = load_file(tmp_path / "rm" / "adapter_model.safetensors")
    got = load_file(tmp_path / "resumed" / "adapter_model.safetensors")
    assert any("score" in k for k in expected)
    first = load_file(tmp_path / "rm" / "checkpoint-1" / "adapter_model.safetensors")
    assert any(not torch.equal(first[k], expected[k]) for k in expected)  # training moved it after step 1
    assert_adapter_equal(got, expected, atol=1e-6)
    bias = (json.loads((d / NORMALIZATION_FILE).read_text())["bias"] for d in (tmp_path / "rm", tmp_path / "resumed"))
    assert next(bias) == pytest.approx(next(bias), abs=1e-5)


def state_of(shared, adapter: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(shared, adapter_name=adapter).items()}


def assert_adapter_equal(live: dict, saved: dict, atol: float = 0.0) -> None:
    assert live.keys() == saved.keys()
    for key in saved:
        torch.testing.assert_close(live[key], saved[key], atol=atol, rtol=0, msg=key)


def test_without_an_sft_adapter_the_reference_is_the_frozen_base(tmp_path, tiny_model_dir, adapters):
    _, rm = adapters
    trainer = ppo_run(tmp_path, tiny_model_dir, None, rm, total_episodes=4, learning_rate=0.05)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[1, 20, 30, 40, 50, 60]])
    with torch.no_grad():
        expected = base(input_ids=ids).logits
        reference = trainer.ref_model(input_ids=ids).logits
        policy = trainer.model.policy(input_ids=ids).logits
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=0)
    assert (policy - expected).abs().max() > 1e-3  # the policy trained; the reference did not follow it


# -- the pretraining stream ---------------------------------------------------------------------------------------
def test_pretraining_stream_reshuffles_each_pass_and_follows_its_seed(tokenizer):
    texts = Dataset.from_list([{"text": f"Sentence number {i} is about rivers and hills."} for i in range(12)])

    def draws(seed: int, count: int) -> list[tuple[int, ...]]:
        stream = PretrainingStream(texts, tokenizer, "text", 32, seed=seed)
        return [tuple(stream.sequences[stream._next_index()]) for _ in range(count)]

    first, second = draws(0, 12), draws(0, 24)[12:]
    assert (
        sorted(first)
        == sorted(second)
        == sorted(tuple(s) for s in PretrainingStream(texts, tokenizer, "text", 32).sequences)
    )
    assert first != second  # each pass is a new permutation of every sequence
    assert draws(0, 24) == draws(0, 24)  # the same seed draws the same sequence
    assert draws(0, 12) != draws(1, 12)  # another seed (another process) draws another order
    stream = PretrainingStream(texts, tokenizer, "text", 32, seed=0)
    stream.skip(5)
    assert [tuple(stream.sequences[stream._next_index()]) for _ in range(7)] == first[5:]


@pytest.mark.parametrize("stage", ["sft", "rm", "ppo"])
def test_training_stages_take_up_the_cores_the_pipeline_hands_over(
    tmp_path, tiny_model_dir, adapters, monkeypatch, stage
):
    """`make pipeline JOBS=2`: when the stage beside this one finishes, the pipeline writes this one's new thread
    count into INSTRUCTRL_THREADS_FILE, and the trainer sets it at its next step."""
    share = tmp_path / "threads"
    write_share(share, torch.get_num_threads() + 1)
    monkeypatch.setenv(THREADS_FILE_ENV, str(share))
    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)  # this test process keeps its own threads
    if stage == "sft":
        sft_run(tmp_path, tiny_model_dir, save_strategy="no")
    elif stage == "rm":
        write_demos(tmp_path)
        data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=0))
        config = rm_config(tmp_path, tiny_model_dir, data, max_steps=2, per_device_train_batch_size=2)
        rm_recipe.main(*parse_args((RewardScriptArguments, RewardConfig, ModelConfig), ["--config", str(config)]))
    else:
        ppo_run(tmp_path, tiny_model_dir, *adapters, total_episodes=4, save_strategy="no")
    assert torch.get_num_threads() + 1 in calls
