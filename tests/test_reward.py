"""Reward model: ranking loss on hand-computed tensors, the scored token, and the recipe end-to-end."""

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from helpers import load_recipe, write_config, write_jsonl
from instructrl.comparisons import rank_responses, ranking_to_pairs
from instructrl.configs import RewardScriptArguments, parse_args
from instructrl.data.rows import encode_prompt, encode_response, tokenize_comparisons
from instructrl.errors import ConfigError, DataError
from instructrl.labeler import SimulatedLabeler
from instructrl.reward import (
    RankingCollator,
    RankingRewardTrainer,
    finished_pairs_metrics,
    flip_probe_accuracy,
    length_preference,
    ranking_loss,
    sequence_rewards,
    shared_prefix_length,
    within_group_length_correlation,
)
from instructrl.runs import finish_stage

rm_recipe = load_recipe("rm")


def test_ranking_loss_matches_hand_computation():
    # One group of K=3 with scores ranking b > a > c, one group of K=2 with a tie (no pair).
    rewards = torch.tensor([0.5, 1.5, -1.0, 0.3, 0.3], requires_grad=True)
    scores = torch.tensor([0.6, 0.9, 0.1, 0.5, 0.5])
    loss, correct, pairs = ranking_loss(rewards, scores, torch.tensor([3, 2]))

    def nls(x):
        return -math.log(1 / (1 + math.exp(-x)))

    expected = (nls(1.5 - 0.5) + nls(0.5 - -1.0) + nls(1.5 - -1.0)) / 3  # 1/C(3,2); the tied group drops out
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert (int(correct), int(pairs)) == (3, 3)
    loss.backward()
    assert rewards.grad[3:].abs().sum() == 0  # tied pair contributes nothing
    # Swapping the model's preference for one pair makes it incorrect.
    _, correct, _ = ranking_loss(torch.tensor([1.6, 1.5, -1.0]), torch.tensor([0.6, 0.9, 0.1]), torch.tensor([3]))
    assert int(correct) == 2


def test_ranking_loss_of_two_groups_averages_per_group():
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.0, 1.0])
    scores = torch.tensor([1.0, 0.0, 3.0, 2.0, 1.0])
    loss, _, pairs = ranking_loss(rewards, scores, torch.tensor([2, 3]))
    g1 = -torch.nn.functional.logsigmoid(torch.tensor(1.0))
    g2 = -torch.nn.functional.logsigmoid(torch.tensor([2.0, 1.0, -1.0])).mean()
    assert loss.item() == pytest.approx(((g1 + g2) / 2).item(), rel=1e-6)
    assert int(pairs) == 4


def test_within_group_length_correlation_on_hand_made_tensors():
    # One group: against torch's own Pearson correlation.
    rewards, lengths = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([1, 2, 4])
    expected = torch.corrcoef(torch.stack([rewards, lengths.float()]))[0, 1]
    got = within_group_length_correlation(rewards, lengths, torch.tensor([3]))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # Each prompt's mean comes out: across two groups longer answers score higher, within each they score lower.
    rewards, lengths = torch.tensor([3.0, 2.0, 1.0, 103.0, 102.0, 101.0]), torch.tensor([10, 20, 30, 110, 120, 130])
    assert within_group_length_correlation(rewards, lengths, torch.tensor([3, 3])).item() == pytest.approx(-1.0)
    assert torch.corrcoef(torch.stack([rewards, lengths.float()]))[0, 1] > 0.9
    # Opposite preferences under two prompts cancel; no spread in length, or groups of one, give 0.
    lengths = torch.tensor([10, 20, 10, 20])
    assert within_group_length_correlation(torch.tensor([1.0, 0.0, 0.0, 1.0]), lengths, torch.tensor([2, 2])) == 0
    assert within_group_length_correlation(torch.tensor([1.0, 0.0]), torch.tensor([5, 5]), torch.tensor([2])) == 0
    assert within_group_length_correlation(torch.tensor([1.0, 2.0]), torch.tensor([5, 6]), torch.tensor([1, 1])) == 0
    # `keep`: only the kept (finished) responses count; here the cut-off one is the longest and the worst.
    rewards, lengths = torch.tensor([1.0, 0.0, -5.0, 0.0, 1.0, 2.0]), torch.tensor([10, 20, 64, 10, 15, 30])
    keep = torch.tensor([True, True, False, True, True, True])
    subset = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0]), torch.tensor([10, 20, 10, 15, 30]), torch.tensor([2, 3])
    got = within_group_length_correlation(rewards, lengths, torch.tensor([3, 3]), keep)
    assert got.item() == pytest.approx(within_group_length_correlation(*subset).item())
    assert got.item() != pytest.approx(within_group_length_correlation(rewards, lengths, torch.tensor([3, 3])).item())


def test_length_decorrelation_gradient_takes_the_length_preference_out():
    lengths = torch.tensor([10, 20, 30, 40, 12, 25, 31, 44])
    sizes = torch.tensor([4, 4])
    rewards = torch.tensor([2.0, 1.5, 0.2, -1.0, 0.5, 1.0, 0.0, -0.5], requires_grad=True)
    before = within_group_length_correlation(rewards, lengths, sizes)
    before.square().backward()
    assert torch.isfinite(rewards.grad).all()
    after = within_group_length_correlation(rewards.detach() - 0.5 * rewards.grad, lengths, sizes)
    assert before.item() < -0.5 and abs(after.item()) < abs(before.item())
    equal = torch.zeros(4, requires_grad=True)  # every reward equal: the gradient stays finite
    within_group_length_correlation(equal, lengths[:4], sizes[:1]).square().backward()
    assert torch.isfinite(equal.grad).all()


def test_reward_trainer_adds_the_weighted_length_penalty_and_logs_the_correlation():
    # compute_loss as the trainer runs it, on a stand-in model whose rewards prefer the shorter answer.
    rewards = torch.tensor([1.0, 0.0, 0.5, 2.0, 1.0, 0.0])
    mask = torch.zeros(6, 8, dtype=torch.long)
    for row, length in enumerate([3, 6, 4, 4, 5, 8]):
        mask[row, :length] = 1
    inputs = {
        "input_ids": torch.zeros(6, 8, dtype=torch.long),
        "attention_mask": mask,
        "scores": torch.tensor([0.0, 1.0, 0.5, 1.0, 0.5, 0.0]),
        "group_sizes": torch.tensor([3, 3]),
    }

    def model(input_ids, attention_mask, use_cache):
        return SimpleNamespace(logits=rewards[:, None])

    model.training = True
    losses = {}
    for weight in (0.0, 2.0):
        trainer = SimpleNamespace(
            model=model,
            length_decorrelation=weight,
            share_prompt=False,
            lora_bf16_compute=False,
            accelerator=SimpleNamespace(gather_for_metrics=lambda x: x),
            _metrics={"train": defaultdict(list)},
        )
        losses[weight] = RankingRewardTrainer.compute_loss(trainer, model, inputs)
        logged = trainer._metrics["train"]["length_correlation"]
    correlation = within_group_length_correlation(rewards, mask.sum(-1), inputs["group_sizes"])
    assert losses[0.0] == pytest.approx(ranking_loss(rewards, inputs["scores"], inputs["group_sizes"])[0].item())
    assert (losses[2.0] - losses[0.0]).item() == pytest.approx(2.0 * correlation.item() ** 2, rel=1e-5)
    assert logged == [pytest.approx(correlation.item())] and correlation < -0.5
    # With the rankings' `finished` flags, only the finished responses count (the longest one here was cut off).
    inputs["finished"] = torch.tensor([True, True, True, True, True, False])
    trainer.length_decorrelation = 1.0
    with_flags = RankingRewardTrainer.compute_loss(trainer, model, inputs)
    among_finished = within_group_length_correlation(rewards, mask.sum(-1), inputs["group_sizes"], inputs["finished"])
    assert (with_flags - losses[0.0]).item() == pytest.approx(among_finished.item() ** 2, rel=1e-5)
    assert among_finished.item() != pytest.approx(correlation.item())


def test_collator_carries_finished_flags_where_rows_have_them():
    collate = RankingCollator(pad_token_id=0)
    rows = [
        {"sequences": [[5, 6], [7]], "scores": [1.0, 0.0], "finished": [True, False]},
        {"sequences": [[8], [9], [4]], "scores": [2.0, 1.0, 0.0], "finished": None},
    ]
    assert collate(rows)["finished"].tolist() == [True, False, True, True, True]
    assert "finished" not in collate([{"sequences": [[5], [6]], "scores": [1.0, 0.0]}])


def test_length_decorrelation_must_not_be_negative():
    with pytest.raises(ConfigError, match="length_decorrelation"):
        RewardScriptArguments(length_decorrelation=-0.1)


def test_length_preference_counts_pairs_of_different_length_and_order():
    # Group 1 (K=3): pair (0, 1) has the shorter response winning by the labels and losing by the rewards; (0, 2) is of
    # equal length (left out); (1, 2) has the shorter losing by the labels and winning by the rewards. Group 2: tied
    # labels (left out). Group 3: the longer wins by the labels, the rewards tie (one half).
    rewards = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 4.0])
    scores = torch.tensor([3.0, 2.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    lengths = torch.tensor([5, 10, 5, 3, 4, 2, 7])
    result = length_preference(rewards, scores, lengths, torch.tensor([3, 2, 2]))
    assert result["length_pairs"] == 3
    assert result["labels_prefer_shorter"] == pytest.approx(1 / 3)
    assert result["rm_prefers_shorter"] == pytest.approx((0 + 1 + 0.5) / 3)
    # A reward equal to minus the length prefers the shorter response in every pair.
    assert length_preference(-lengths.float(), scores, lengths, torch.tensor([3, 2, 2]))["rm_prefers_shorter"] == 1.0
    empty = length_preference(torch.zeros(2), torch.tensor([1.0, 0.0]), torch.tensor([4, 4]), torch.tensor([2]))
    assert empty["length_pairs"] == 0 and math.isnan(empty["rm_prefers_shorter"])


def test_finished_pairs_metrics_leave_out_cut_off_responses_and_unflagged_groups():
    """Group 1 (K=3): response 2 was cut off, so only pair (0, 1) counts: the labels prefer the longer, the rewards
    the shorter (wrong). Group 2 (K=3, all finished): 3 pairs, rewards order all of them right. Group 3 carries no
    flags (a row written before they existed) and group 4 keeps one finished response: neither counts."""
    rewards = [torch.tensor([1.0, 2.0, 9.0]), torch.tensor([3.0, 2.0, 1.0]), torch.zeros(2), torch.tensor([1.0, 0.0])]
    scores = [
        torch.tensor([2.0, 1.0, 0.0]),
        torch.tensor([3.0, 2.0, 1.0]),
        torch.tensor([1.0, 0.0]),
        torch.tensor([1.0, 0.0]),
    ]
    lengths = [torch.tensor([20, 10, 64]), torch.tensor([5, 6, 7]), torch.tensor([1, 2]), torch.tensor([3, 64])]
    finished = [[True, True, False], [True, True, True], None, [True, False]]
    metrics = finished_pairs_metrics(rewards, scores, lengths, finished)
    assert metrics["finished_pairs"] == 4
    assert metrics["finished_pairwise_accuracy"] == pytest.approx(3 / 4)
    assert metrics["finished_length_pairs"] == 4
    assert metrics["finished_labels_prefer_shorter"] == pytest.approx(3 / 4)  # group 1's pair no, group 2's yes
    assert metrics["finished_rm_prefers_shorter"] == pytest.approx(4 / 4)  # all four
    assert finished_pairs_metrics(rewards, scores, lengths, [None] * 4)["finished_pairs"] == 0


def test_tokenized_rankings_keep_their_finished_flags_aligned(tokenizer):
    from datasets import Dataset

    rows = [
        {
            "prompt": "Say hi.",
            "responses": ["hi", "hello " * 60, "hey"],
            "scores": [2.0, 1.0, 0.0],
            "finished": [True, False, True],
        },
        {"prompt": "Say bye.", "responses": ["bye", "farewell"], "scores": [1.0, 0.0], "finished": None},
    ]
    data = Dataset.from_list(rows)
    kept = tokenize_comparisons(data, tokenizer, max_length=40, keep_finished=True)
    assert kept["finished"] == [[True, True], None]  # the long response dropped with its flag
    assert [len(s) for s in kept["sequences"]] == [2, 2]
    assert "finished" not in tokenize_comparisons(data, tokenizer, max_length=40).column_names  # training: no flags


def test_scored_token_is_the_end_of_turn_token(tokenizer):
    prompt = [{"role": "user", "content": "Describe tea in one sentence."}]
    rows = [{"prompt": prompt, "responses": ["Tea is a drink.", "Tea, tea, tea"], "scores": [0.9, 0.2]}]
    from datasets import Dataset

    tokenized = tokenize_comparisons(Dataset.from_list(rows), tokenizer, None)
    batch = RankingCollator(tokenizer.pad_token_id)([tokenized[0]])
    last = batch["attention_mask"].sum(-1) - 1
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    for row, position in enumerate(last):
        assert (
            batch["input_ids"][row, position]
            == tokenizer.eos_token_id
            == tokenizer.convert_tokens_to_ids("<|im_end|>")
        )
    # The classifier reads the right-most non-pad token: that position.
    non_pad = (batch["input_ids"] != tokenizer.pad_token_id).int()
    rightmost = (torch.arange(non_pad.shape[1]) * non_pad).argmax(-1)
    assert torch.equal(rightmost, last)
    # Prompt tokens are what the policy sees at generation time.
    assert batch["input_ids"][0, : len(encode_prompt(tokenizer, prompt))].tolist() == encode_prompt(tokenizer, prompt)
    assert encode_response(tokenizer, "Tea is a drink.")[-1] == tokenizer.eos_token_id


TOPICS = ["tea", "rain", "bread", "rivers", "owls", "maps", "glass", "bees", "salt", "kites", "ice", "wool"]


def test_ensemble_reward_on_hand_made_tensors():
    from instructrl.reward import ensemble_reward

    scores = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # two responses, two members each
    # mean - coef x population std: (2 - 1, 2 - 0) with coef 1; (2 - 0.5, 2) with coef 0.5.
    torch.testing.assert_close(ensemble_reward(scores, "mean_minus_std", 1.0), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(ensemble_reward(scores, "mean_minus_std", 0.5), torch.tensor([1.5, 2.0]))
    torch.testing.assert_close(ensemble_reward(scores, "min"), torch.tensor([1.0, 2.0]))
    three = torch.tensor([0.0, 3.0, 6.0])  # mean 3, population std sqrt(6)
    torch.testing.assert_close(ensemble_reward(three, "mean_minus_std", 1.0), torch.tensor(3.0 - math.sqrt(6.0)))
    torch.testing.assert_close(ensemble_reward(three, "min"), torch.tensor(0.0))
    # One member: its own score.
    torch.testing.assert_close(ensemble_reward(torch.tensor([[0.7]]), "mean_minus_std", 2.0), torch.tensor([0.7]))


def synthetic_rankings(n: int, seed: int) -> list[dict]:
    """Rankings by the simulated labeler over responses that differ in cues a tiny model can see."""
    rng = random.Random(seed)
    labeler = SimulatedLabeler()
    rows = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        prompt = [{"role": "user", "content": f"Describe {topic} in one sentence."}]
        other = rng.choice([t for t in TOPICS if t != topic])
        candidates = [
            f"{topic.capitalize()} is common and useful in daily life.",
            f"Sure! Here is {other}, {other}, {other}, {other}",
            f"{other.capitalize()} is common. {other.capitalize()} is common. {other.capitalize()} is common.",
            f"Here is {topic}: it is, well,",
        ]
        rng.shuffle(candidates)
        rows.append(rank_responses(labeler, prompt, candidates))
    return rows


def rm_config(tmp_path, model_dir, data_dir, **overrides):
    values = dict(
        model_name_or_path=str(model_dir),
        dataset_name=str(data_dir),
        normalization_dataset_name=str(tmp_path / "demos.jsonl"),
        output_dir=str(tmp_path / "rm"),
        use_peft=True,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        num_train_epochs=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=5e-3,
        max_length=96,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=5,
        save_strategy="no",
        eval_strategy="no",
        seed=0,
    )
    values.update(overrides)
    return write_config(tmp_path / "rm.yaml", **values)


def run(config, *extra):
    return rm_recipe.main(
        *parse_args(
            (RewardScriptArguments, rm_recipe.RewardConfig, rm_recipe.ModelConfig), ["--config", str(config), *extra]
        )
    )


def write_demos(tmp_path):
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Describe {t} in one sentence."}],
            "completion": [{"role": "assistant", "content": f"{t.capitalize()} is common and useful in daily life."}],
        }
        for t in TOPICS
    ]
    return write_jsonl(tmp_path / "demos.jsonl", rows)


def with_cut_off_last(rows: list[dict]) -> list[dict]:
    """Rankings as `make collect` writes them: each says which responses ended; here the unfinished one did not."""
    return [{**row, "finished": [not r.endswith("well,") for r in row["responses"]]} for row in rows]


def test_rm_learns_the_labeler_and_saves_adapter_head_and_bias(tmp_path, tiny_model_dir):
    data = tmp_path / "comparisons" / "rankings"
    write_jsonl(data / "train.jsonl", with_cut_off_last(synthetic_rankings(160, seed=1)))
    write_jsonl(data / "test.jsonl", with_cut_off_last(synthetic_rankings(40, seed=2)))
    write_demos(tmp_path)
    trainer = run(rm_config(tmp_path, tiny_model_dir, data))
    out = tmp_path / "rm"
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    # 40 held-out prompts x C(4,2)=6 pairs; chance is 0.5.
    assert eval_metrics["eval_pairs"] == 240
    assert eval_metrics["eval_pairwise_accuracy"] >= 0.75, eval_metrics
    assert eval_metrics["eval_length_pairs"] > 0 and 0.0 <= eval_metrics["eval_rm_prefers_shorter"] <= 1.0
    # The same on the pairs of two finished responses: 40 prompts x C(3,2).
    assert eval_metrics["eval_finished_pairs"] == 120 and 0.0 <= eval_metrics["eval_finished_pairwise_accuracy"] <= 1
    # The simulated labeler ranked them: the same accuracy broken down by the criterion deciding each pair.
    by_criterion = json.loads((out / "eval_by_criterion.json").read_text())
    assert sum(c["pairs"] for c in by_criterion.values()) == 240 and "undecided" not in by_criterion
    right = sum(c["pairs"] * c["pairwise_accuracy"] for c in by_criterion.values())
    assert right == pytest.approx(240 * eval_metrics["eval_pairwise_accuracy"])
    # Training batches carry the flags too (`length_decorrelation` counts finished responses only).
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["finished"].shape == batch["scores"].shape and not batch["finished"].all()
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["task_type"] == "SEQ_CLS" and "score" in adapter_config["modules_to_save"]
    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    assert any("score" in k for k in saved) and any("lora_A" in k for k in saved)
    # The bias centres the demonstrations' rewards at 0.
    normalization = json.loads((out / "reward_normalization.json").read_text())
    assert normalization["scored_token"] == "<|im_end|>"
    from instructrl.reward import reward_bias

    demos = rm_recipe.load_data(str(tmp_path / "demos.jsonl"))
    again = reward_bias(trainer.model, trainer.processing_class, demos)
    assert again["demonstration_reward_mean"] + normalization["bias"] == pytest.approx(0.0, abs=1e-4)


def test_rm_accepts_trl_pairs(tmp_path, tiny_model_dir):
    rows = [p for r in synthetic_rankings(12, seed=3) for p in ranking_to_pairs(r)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    write_demos(tmp_path)
    trainer = run(rm_config(tmp_path, tiny_model_dir, data, num_train_epochs=1, length_decorrelation=0.5))
    assert (tmp_path / "rm" / "adapter_model.safetensors").is_file()
    # The penalty's weight reaches the trainer, and the correlation it penalizes is logged.
    assert trainer.length_decorrelation == 0.5
    assert any("length_correlation" in entry for entry in trainer.state.log_history)


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"prompt": "p", "best": "a", "worst": "b"},
            "needs (prompt, responses, scores) or (prompt, chosen, rejected)",
        ),
        ({"prompt": "p", "responses": ["a", ""], "scores": [1, 0]}, "response 1 is empty"),
        ({"prompt": "p", "chosen": "a", "rejected": ""}, "column 'rejected': the text is empty"),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1]}, "one number per response"),
        (
            {"prompt": "p", "responses": ["a", "b"], "scores": [1, 0], "finished": [True]},
            "one true/false per response",
        ),
        ({"prompt": "p", "responses": ["a", "b"], "scores": [1, 0], "finished": [1, 0]}, "use true or false"),
    ],
)
def test_rm_bad_rows_fail_before_anything_is_written(tmp_path, tiny_model_dir, row, message):
    out = tmp_path / "rm"
    out.mkdir()
    (out / "adapter_model.safetensors").write_text("an earlier adapter")
    finish_stage(out, "rm")  # an earlier RM run's output, which a new RM run may replace, but not with bad data
    data = write_jsonl(tmp_path / "bad.jsonl", [row])
    write_demos(tmp_path)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(rm_config(tmp_path, tiny_model_dir, data))
    assert (out / "adapter_model.safetensors").read_text() == "an earlier adapter"


def save_sft_adapter(path, model_dir, tokenizer, hidden_size=32):
    """A LoRA adapter on the tiny causal LM with non-zero B matrices (a fresh one would be the identity)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from conftest import build_tiny_model

    base = AutoModelForCausalLM.from_pretrained(model_dir) if hidden_size == 32 else build_tiny_model(tokenizer, 0, 48)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    model.save_pretrained(path, safe_serialization=True)
    return path


def test_rm_starts_from_the_sft_adapter(tmp_path, tiny_model_dir, tokenizer):
    from safetensors.torch import load_file

    sft = save_sft_adapter(tmp_path / "sft", tiny_model_dir, tokenizer)
    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=4))
    write_demos(tmp_path)
    # Learning rate 0: the saved reward adapter is exactly its starting point.
    trainer = run(
        rm_config(tmp_path, tiny_model_dir, data, num_train_epochs=1, learning_rate=0.0, init_adapter=str(sft))
    )
    saved = json.loads((tmp_path / "rm" / "adapter_config.json").read_text())
    assert saved["r"] == 4 and sorted(saved["target_modules"]) == ["q_proj", "up_proj", "v_proj"]
    assert saved["task_type"] == "SEQ_CLS" and "score" in saved["modules_to_save"]
    start, reward = (
        load_file(sft / "adapter_model.safetensors"),
        load_file(tmp_path / "rm" / "adapter_model.safetensors"),
    )
    assert set(start) <= set(reward) and any("score" in k for k in reward)
    for key, value in start.items():
        torch.testing.assert_close(reward[key], value, msg=key)
    # A separate adapter on the one base: the base weights are the tiny model's own.
    base = load_file(tiny_model_dir / "model.safetensors")
    layer = "model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(
        trainer.model.get_base_model().state_dict()[layer.replace(".weight", ".base_layer.weight")], base[layer]
    )


def test_rm_continues_from_a_reward_model_with_its_score_head(tmp_path, tiny_model_dir, tokenizer):
    """Iterated collection: `init_adapter` set to a reward model's output starts from its LoRA weights and its
    trained score head (an SFT adapter has none, and the head starts fresh)."""
    from safetensors.torch import load_file

    from instructrl.reward import SCORE_HEAD_KEY

    sft = save_sft_adapter(tmp_path / "sft", tiny_model_dir, tokenizer)
    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=4))
    write_demos(tmp_path)
    first = tmp_path / "rm1"
    run(rm_config(tmp_path, tiny_model_dir, data, num_train_epochs=1, init_adapter=str(sft), output_dir=str(first)))

    def frozen_from(start: Path, name: str) -> Path:
        """A reward model started from `start` and not trained (learning rate 0), with another seed than the first."""
        settings = dict(num_train_epochs=1, learning_rate=0.0, seed=7)
        run(
            rm_config(
                tmp_path, tiny_model_dir, data, **settings, init_adapter=str(start), output_dir=str(tmp_path / name)
            )
        )
        return tmp_path / name

    # The continued reward model is exactly the first one, score head included.
    second = frozen_from(first, "rm2")
    start, continued = load_file(first / "adapter_model.safetensors"), load_file(second / "adapter_model.safetensors")
    assert SCORE_HEAD_KEY in start and set(start) == set(continued)
    for key, value in start.items():
        torch.testing.assert_close(continued[key], value, msg=key)
    bias = [json.loads((d / "reward_normalization.json").read_text())["bias"] for d in (first, second)]
    assert bias[1] == pytest.approx(bias[0], abs=1e-5)
    # From the SFT adapter, by contrast, the head is a fresh one (another seed draws another head).
    fresh = frozen_from(sft, "rm3")
    assert not torch.equal(load_file(fresh / "adapter_model.safetensors")[SCORE_HEAD_KEY], start[SCORE_HEAD_KEY])


def test_rm_replays_rankings_of_an_earlier_collection(tmp_path, tiny_model_dir, tokenizer):
    """`replay_dataset_name`: the earlier collection's training rankings join the new ones (as many as the new ones
    unless `replay_rankings` says); other kinds of rows are refused before anything is saved."""
    new = write_jsonl(tmp_path / "new.jsonl", synthetic_rankings(8, seed=4))
    earlier = synthetic_rankings(20, seed=5)
    for row in earlier:  # another wording: a replayed row is told apart by its prompt
        row["prompt"] = [{"role": "user", "content": row["prompt"][0]["content"].replace("Describe", "Explain")}]
    old = write_jsonl(tmp_path / "old.jsonl", earlier)
    write_demos(tmp_path)

    def trained_prompts(trainer) -> list[str]:
        texts = [tokenizer.decode(row["sequences"][0]) for row in trainer.train_dataset]
        return ["Explain" if "Explain" in t else "Describe" for t in texts]

    settings = dict(num_train_epochs=1, learning_rate=0.0, replay_dataset_name=str(old))
    trainer = run(rm_config(tmp_path, tiny_model_dir, new, **settings))
    assert sorted(trained_prompts(trainer)) == ["Describe"] * 8 + ["Explain"] * 8  # as many as the new ones
    trainer = run(
        rm_config(tmp_path, tiny_model_dir, new, **settings, replay_rankings=3, output_dir=str(tmp_path / "b"))
    )
    assert trained_prompts(trainer).count("Explain") == 3
    trainer = run(
        rm_config(tmp_path, tiny_model_dir, new, **settings, replay_rankings=50, output_dir=str(tmp_path / "c"))
    )
    assert trained_prompts(trainer).count("Explain") == 20  # all there are
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No."}])
    with pytest.raises(DataError, match="replay comparisons of the same kind"):
        run(
            rm_config(
                tmp_path,
                tiny_model_dir,
                new,
                **{**settings, "replay_dataset_name": str(pairs)},
                output_dir=str(tmp_path / "d"),
            )
        )
    assert not (tmp_path / "d" / "adapter_model.safetensors").exists()


def test_rm_trains_only_the_top_layers_of_its_adapter(tmp_path, tiny_model_dir, tokenizer):
    from safetensors.torch import load_file

    sft = save_sft_adapter(tmp_path / "sft", tiny_model_dir, tokenizer)
    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=4))
    write_demos(tmp_path)
    trainer = run(
        rm_config(tmp_path, tiny_model_dir, data, num_train_epochs=1, init_adapter=str(sft), train_top_layers=1)
    )
    start, reward = (
        load_file(sft / "adapter_model.safetensors"),
        load_file(tmp_path / "rm" / "adapter_model.safetensors"),
    )
    lower, top = [k for k in start if ".layers.0." in k], [k for k in start if ".layers.1." in k]
    assert lower and top
    for key in lower:  # the tiny model has two layers: layer 0 keeps the SFT adapter's values
        torch.testing.assert_close(reward[key], start[key], msg=key)
    assert all(not torch.equal(reward[key], start[key]) for key in top if "lora_B" in key)
    # Back-propagation stops above layer 0: its output needs no gradient in training.
    outputs = []
    layer = trainer.model.get_base_model().model.layers[0]

    def keep(module, args, out):
        outputs.append(out[0] if isinstance(out, tuple) else out)

    handle = layer.register_forward_hook(keep)
    trainer.model.train()
    trainer.model(input_ids=torch.tensor([[5, 6, 7]]))
    handle.remove()
    assert outputs and not outputs[0].requires_grad


def test_rm_train_top_layers_must_count_layers(tmp_path, tiny_model_dir):
    from instructrl.errors import ConfigError

    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=4))
    write_demos(tmp_path)
    with pytest.raises(ConfigError, match="counts layers from the top"):
        run(rm_config(tmp_path, tiny_model_dir, data, train_top_layers=-1))
    with pytest.raises(ConfigError, match="set `use_peft: true`"):
        run(rm_config(tmp_path, tiny_model_dir, data, train_top_layers=1, use_peft=False))
    assert not (tmp_path / "rm" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("case", ["missing", "other_base"])
def test_rm_init_adapter_that_does_not_fit_is_refused(tmp_path, tiny_model_dir, tokenizer, case):
    from instructrl.errors import ConfigError

    sft = tmp_path / "sft"
    if case == "other_base":
        save_sft_adapter(sft, tiny_model_dir, tokenizer, hidden_size=48)
    data = write_jsonl(tmp_path / "rankings.jsonl", synthetic_rankings(8, seed=4))
    write_demos(tmp_path)
    message = "holds no LoRA adapter" if case == "missing" else "does not fit this model"
    with pytest.raises(ConfigError, match=message):
        run(rm_config(tmp_path, tiny_model_dir, data, num_train_epochs=1, init_adapter=str(sft)))
    assert not (tmp_path / "rm" / "adapter_model.safetensors").exists()


class LookupRewardModel(torch.nn.Module):
    """A stand-in reward model whose reward for a sequence is looked up by its tokens (padding removed)."""

    def __init__(self, rewards: dict[tuple[int, ...], float], pad_token_id: int):
        super().__init__()
        self.rewards, self.pad = rewards, pad_token_id
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, input_ids, attention_mask, use_cache=False):
        rows = [
            tuple(t for t, m in zip(ids.tolist(), mask.tolist(), strict=True) if m)
            for ids, mask in zip(input_ids, attention_mask, strict=True)
        ]
        return type("Out", (), {"logits": torch.tensor([[self.rewards[r]] for r in rows])})()


def test_flip_probe_accuracy_counts_each_order(tokenizer):
    prompts = [_user("Describe tea in lowercase."), _user("Describe tea in one sentence.")]
    x, y = "tea is a drink.", "Tea is a drink. It is hot."
    items = [{"prompts": prompts, "responses": [x, y]}, {"prompts": prompts[::-1], "responses": [y, x]}]

    def seq(prompt, response):
        return tuple(encode_prompt(tokenizer, prompt) + encode_response(tokenizer, response))

    # The model flips with the instruction on item 1 only if x > y under the lowercase prompt and y > x under the
    # other; a model that ignores the prompt (same rewards under both) gets exactly one order of each item right.
    follows = {seq(prompts[0], x): 1.0, seq(prompts[0], y): 0.0, seq(prompts[1], x): 0.0, seq(prompts[1], y): 1.0}
    ignores = {seq(p, x): 1.0 for p in prompts} | {seq(p, y): 0.0 for p in prompts}
    pad = tokenizer.pad_token_id
    result = flip_probe_accuracy(LookupRewardModel(follows, pad), tokenizer, items, batch_size=3)
    assert (result["flip_probe_accuracy"], result["flip_probe_both_right"], result["flip_probe_items"]) == (
        1.0,
        1.0,
        2,
    )
    result = flip_probe_accuracy(LookupRewardModel(ignores, pad), tokenizer, items, batch_size=3)
    assert (result["flip_probe_accuracy"], result["flip_probe_both_right"]) == (0.5, 0.0)
    reversed_ = {k: 1.0 - v for k, v in follows.items()}
    assert flip_probe_accuracy(LookupRewardModel(reversed_, pad), tokenizer, items)["flip_probe_accuracy"] == 0.0


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_collator_splits_each_group_at_its_shared_prompt():
    rows = [
        {"sequences": [[1, 2, 3, 4], [1, 2, 5]], "scores": [1.0, 0.0]},
        {"sequences": [[7, 8], [7, 8], [7, 9, 9]], "scores": [2.0, 1.0, 0.0]},  # identical: the last token stays
    ]
    batch = RankingCollator(pad_token_id=0)(rows)
    assert [shared_prefix_length(r["sequences"]) for r in rows] == [2, 1]
    assert batch["prefix_ids"].tolist() == [[1, 2], [7, 0]]
    assert batch["prefix_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["suffix_ids"].tolist() == [[3, 4], [5, 0], [8, 0], [8, 0], [9, 9]]
    assert batch["suffix_mask"].sum(-1).tolist() == [2, 1, 1, 1, 2]
    assert shared_prefix_length([[4, 5, 6]]) == 2  # one sequence: all but the scored token


def lora_classifier(tiny_model_dir, tokenizer, attention: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1, attn_implementation=attention
    )
    base.config.pad_token_id = tokenizer.pad_token_id
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", modules_to_save=["score"], task_type="SEQ_CLS")
    model = get_peft_model(base, config)
    with torch.no_grad():  # LoRA's B starts at 0: move it so that the adapter takes part
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.2)
    return model


def ranking_batch(tokenizer):
    prompts = ["Describe tea in one sentence.", "Name three rivers, please, as a numbered list of names."]
    responses = [
        ["Tea is a drink.", "Tea, tea, tea", "Tea grows on hills in warm places."],
        ["1. Nile\n2. Rhine", "No."],
    ]
    rows = [
        {
            "sequences": [
                encode_prompt(tokenizer, [{"role": "user", "content": p}]) + encode_response(tokenizer, r)
                for r in group
            ],
            "scores": [float(i) for i in range(len(group))],
        }
        for p, group in zip(prompts, responses, strict=True)
    ]
    return RankingCollator(tokenizer.pad_token_id)(rows)


def rewards_and_gradients(model, batch, share_prompt):
    model.zero_grad()
    tokens = []
    embed = model.get_base_model().model.embed_tokens
    handle = embed.register_forward_hook(lambda module, args, out: tokens.append(args[0].numel()))
    try:
        rewards = sequence_rewards(model, batch, share_prompt)
    finally:
        handle.remove()
    (rewards * torch.linspace(-1.0, 2.0, len(rewards))).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return rewards.detach(), grads, sum(tokens)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompt_rewards_and_gradients_are_the_whole_sequences(tiny_model_dir, tokenizer, attention):
    # Two prompts of different lengths with 3 and 2 responses: each prompt's keys and values computed once.
    model = lora_classifier(tiny_model_dir, tokenizer, attention)
    batch = ranking_batch(tokenizer)
    whole, whole_grads, whole_tokens = rewards_and_gradients(model, batch, share_prompt=False)
    shared, shared_grads, shared_tokens = rewards_and_gradients(model, batch, share_prompt=True)
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    assert whole.std() > 1e-3  # the rewards differ, so a misplaced position or mask would show
    assert whole_grads.keys() == shared_grads.keys() and any("lora_A" in n for n in whole_grads)
    for name, grad in whole_grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(shared_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert whole_tokens == batch["input_ids"].numel()
    assert shared_tokens == batch["prefix_ids"].numel() + batch["suffix_ids"].numel() < whole_tokens


def test_shared_prompt_is_skipped_where_it_cannot_apply(tiny_model_dir, tokenizer):
    model = lora_classifier(tiny_model_dir, tokenizer, "sdpa")
    batch = ranking_batch(tokenizer)
    whole = sequence_rewards(model, batch, share_prompt=False).detach()
    model.get_base_model().gradient_checkpointing_enable()  # recomputation would drop the cache
    model.train()
    rewards, _, tokens = rewards_and_gradients(model, batch, share_prompt=True)
    assert tokens == batch["input_ids"].numel()
    torch.testing.assert_close(rewards, whole)
    without_split = {k: v for k, v in batch.items() if not k.startswith(("prefix", "suffix"))}
    torch.testing.assert_close(sequence_rewards(model, without_split).detach(), whole)
