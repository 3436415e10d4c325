"""Validate a reward model, or the conservative ensemble PPO would use (`reward_adapters`), on held-out comparisons.

A user without a gold labeler chooses reward models by validation: held-out pairwise accuracy and the
instruction-flip probe (`instructrl.reward`). `make rm` reports both for the one model it trains; `make rm-eval`
scores every member of an ensemble and their combination on the same held-out rankings and probe, so that whether an
ensemble orders held-out responses better than its best member is known before a PPO run is spent on it. Each reward
is read as PPO reads it: the member's adapter on one shared base, its score head and normalization bias, TRL's
`get_reward` at the end-of-turn token.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data.rows import encode_prompt, encode_response, ranked_responses
from .evaluation import reward_scores
from .reward import (
    accuracy_by_criterion,
    check_ensemble,
    ensemble_reward,
    finished_pairs_metrics,
    flip_probe_counts,
    flip_probe_sequences,
    length_preference,
    ranked_pairs_correct,
)
from .shared_base import REWARD, ScalarModel, add_adapter_from_dir, score_head_from_dir

ENSEMBLE = "ensemble"


@dataclass
class RewardEvalConfig:
    """Settings of `recipes/rm_eval.py`.

    Args:
        output_dir (`str`):
            Where `rm_eval.json` and `rm_eval.md` go.
        reward_model_path (`str`):
            A reward-model output of `make rm` (LoRA adapter, score head, `reward_normalization.json`).
        reward_adapters (`list[str]`):
            More reward-model outputs; with any, the ensemble of all of them is scored too, combined as PPO combines
            them (`reward_ensemble`, `reward_ensemble_coef`).
        reward_ensemble (`str`, *optional*, defaults to `"mean_minus_std"`):
            `mean_minus_std` or `min` (`instructrl.reward.ENSEMBLE_REWARDS`).
        reward_ensemble_coef (`float`, *optional*, defaults to `1.0`):
            How many standard deviations `mean_minus_std` subtracts.
        dataset_name, dataset_split:
            Held-out comparisons: rankings (`prompt`, `responses`, `scores`) or pairs (`prompt`, `chosen`,
            `rejected`), as `make collect` writes them.
        flip_probe (`str`, *optional*):
            The instruction-flip probe `make collect` writes; `None` skips it.
        labeler (`str`, *optional*):
            The simulated labeler the comparisons were ranked by (`simulated`): adds each member's held-out accuracy
            by the labeler criterion that decides each pair (`accuracy_by_criterion`). `None` (rankings by people,
            or a labeler without criteria) skips it.
        batch_size (`int`, *optional*, defaults to `16`):
            Sequences per scoring forward.
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run code shipped with the model.
    """

    output_dir: str = field(default="~/.cache/instructrl/outputs/rm_eval")
    reward_model_path: str | None = field(default=None)
    reward_adapters: list[str] = field(default_factory=list)
    reward_ensemble: str = field(default="mean_minus_std")
    reward_ensemble_coef: float = field(default=1.0)
    dataset_name: str | None = field(default=None)
    dataset_split: str = field(default="test")
    flip_probe: str | None = field(default=None)
    labeler: str | None = field(default=None)
    batch_size: int = field(default=16)
    trust_remote_code: bool = field(default=False)

    def __post_init__(self):
        check_ensemble(self.reward_ensemble, self.reward_ensemble_coef)


class RewardMembers:
    """Reward-model outputs as frozen adapters (+ score heads) on one base, scored as PPO scores them.

    Args:
        base (`PreTrainedModel`):
            The causal LM the reward models were trained on, loaded once.
        adapter_dirs (`list[Path]`):
            Reward-model outputs of `make rm`.
    """

    def __init__(self, base: PreTrainedModel, adapter_dirs: list[Path]):
        self.names = [REWARD if i == 0 else f"{REWARD}_{i}" for i in range(len(adapter_dirs))]
        shared: PreTrainedModel | PeftModel = base
        for name, adapter_dir in zip(self.names, adapter_dirs, strict=True):
            shared = add_adapter_from_dir(shared, name, adapter_dir)
        self.shared = shared.eval().requires_grad_(False)
        device = next(base.parameters()).device
        heads = [score_head_from_dir(d, base.config.hidden_size).to(device) for d in adapter_dirs]
        self.models = [ScalarModel(self.shared, n, h) for n, h in zip(self.names, heads, strict=True)]

    def score(self, pairs: list[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 16) -> torch.Tensor:
        """Every member's reward of each `(prompt ids, response ids)`: `[len(pairs), members]`."""
        if not pairs:
            return torch.zeros(0, len(self.models))
        prompts, responses = [p for p, _ in pairs], [r for _, r in pairs]
        columns = [reward_scores(m, prompts, responses, pad_token_id, batch_size) for m in self.models]
        return torch.tensor(columns, dtype=torch.float).T


def comparison_groups(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[tuple[list[int], list[int]]], torch.Tensor, torch.Tensor]:
    """Validated comparison rows as `(prompt ids, response ids)` of every response, the labeler's scores in the same
    order and each row's number of responses (`ranking_loss`' layout); pairs are rankings of two."""
    pairs, scores, sizes = [], [], []
    for row in dataset:
        responses, row_scores = ranked_responses(row)
        prompt = encode_prompt(tokenizer, row["prompt"])
        pairs.extend((prompt, encode_response(tokenizer, r)) for r in responses)
        scores.extend(row_scores)
        sizes.append(len(responses))
    return pairs, torch.tensor(scores, dtype=torch.float), torch.tensor(sizes, dtype=torch.long)


def criterion_markdown(table: dict[str, dict], labels: dict[str, str]) -> str:
    """The `by_criterion` entries of `validation_table`'s rows as one markdown table (empty without them)."""
    rows = {name: row["by_criterion"] for name, row in table.items() if "by_criterion" in row}
    if not rows:
        return ""
    first = next(iter(rows.values()))
    lines = [
        "| deciding criterion | pairs (share) | " + " | ".join(labels.get(name, name) for name in rows) + " |",
        "|---|---|" + "---|" * len(rows),
    ]
    for criterion, stats in first.items():
        cells = [
            f"{r[criterion]['pairwise_accuracy']:.3f} ± {r[criterion]['ci95_half_width']:.3f}" for r in rows.values()
        ]
        lines.append(f"| {criterion} | {stats['pairs']} ({stats['share']:.0%}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_finished(dataset: Dataset) -> list | None:
    """Each comparison row's `finished` flags (`comparison_groups`' order; `None` for a row without them), or `None`
    when no row has the column (pairs, or rankings written before `make collect` recorded it)."""
    if "finished" not in dataset.column_names:
        return None
    return [row.get("finished") if "responses" in row else None for row in dataset]


def validation_table(
    rewards: torch.Tensor,
    scores: torch.Tensor,
    group_sizes: torch.Tensor,
    flip_rewards: torch.Tensor | None,
    names: list[str],
    method: str = "mean_minus_std",
    coef: float = 1.0,
    lengths: torch.Tensor | None = None,
    finished: list | None = None,
    deciders: list[list[str]] | None = None,
) -> dict[str, dict]:
    """Held-out pairwise accuracy and flip-probe statistics of each member and, with two or more, their ensemble.

    Args:
        rewards (`torch.Tensor`):
            `[responses, members]` rewards of the held-out comparisons' responses (`comparison_groups`' order).
        scores, group_sizes (`torch.Tensor`):
            The labeler's scores of those responses and each comparison's number of responses.
        flip_rewards (`torch.Tensor`, *optional*):
            `[items * 4, members]` rewards of the flip probe (`flip_probe_sequences`' order); `None`: no probe.
        names (`list[str]`):
            One row name per member.
        method, coef:
            How the ensemble combines the members (`instructrl.reward.ensemble_reward`).
        lengths (`torch.Tensor`, *optional*):
            The held-out responses' lengths in tokens: adds `instructrl.reward.length_preference` to every row.
        finished (`list`, *optional*):
            Per comparison, whether each response ended (`comparison_finished`); with `lengths`, adds the accuracy
            and length preference over pairs of two finished responses (`instructrl.reward.finished_pairs_metrics`).
        deciders (`list[list[str]]`, *optional*):
            The labeler criterion deciding each held-out pair (`pair_deciders`): adds `by_criterion`
            (`accuracy_by_criterion`) to every row.
    """
    columns = {
        name: (rewards[:, m], None if flip_rewards is None else flip_rewards[:, m]) for m, name in enumerate(names)
    }
    if len(names) > 1:
        flip = None if flip_rewards is None else ensemble_reward(flip_rewards, method, coef)
        columns[ENSEMBLE] = (ensemble_reward(rewards, method, coef), flip)
    table = {}
    for name, (held_out, flip) in columns.items():
        table[name] = ranked_pairs_correct(held_out, scores, group_sizes)
        if lengths is not None:
            table[name].update(length_preference(held_out, scores, lengths, group_sizes))
            if finished is not None:
                groups = [values.split(group_sizes.tolist()) for values in (held_out, scores, lengths)]
                table[name].update(finished_pairs_metrics(*groups, finished))
        if flip is not None:
            table[name].update(flip_probe_counts(flip.view(-1, 4)))
        if deciders is not None:
            table[name]["by_criterion"] = accuracy_by_criterion(held_out, scores, group_sizes, deciders)
    return table


def member_correlation(rewards: torch.Tensor) -> list[list[float]]:
    """Pearson correlation between members' rewards of the same responses (`[responses, members]`)."""
    members = rewards.shape[1]
    if members < 2 or rewards.shape[0] < 2:  # off the diagonal, one response has no spread to correlate
        return [[1.0 if i == j else float("nan") for j in range(members)] for i in range(members)]
    return torch.corrcoef(rewards.T).tolist()


def markdown(table: dict[str, dict], labels: dict[str, str]) -> str:
    """`validation_table` as a markdown table, rows labelled by `labels` (row name -> what it is)."""
    lines = [
        "| reward | held-out pairwise accuracy | pairs | flip probe | flip: both orders right | prefers the shorter "
        "(labels) | finished pairs: accuracy, prefers the shorter (labels) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        flip, both, shorter, finished = "", "", "", ""
        if "rm_prefers_shorter" in row:
            shorter = f"{row['rm_prefers_shorter']:.2f} ({row['labels_prefer_shorter']:.2f})"
        if row.get("finished_pairs"):
            finished = f"{row['finished_pairwise_accuracy']:.3f} ± {row['finished_ci95_half_width']:.3f}"
            finished += f" of {row['finished_pairs']}"
            if row.get("finished_length_pairs"):
                finished += f", {row['finished_rm_prefers_shorter']:.2f} ({row['finished_labels_prefer_shorter']:.2f})"
        if "flip_probe_accuracy" in row:
            flip = f"{row['flip_probe_accuracy']:.3f} ± {row['flip_probe_ci95_half_width']:.3f}"
            both = f"{row['flip_probe_both_right']:.0%}"
        accuracy = f"{row['pairwise_accuracy']:.3f} ± {row['ci95_half_width']:.3f}"
        lines.append(
            f"| {labels.get(name, name)} | {accuracy} | {row['pairs']} | {flip} | {both} | {shorter} | {finished} |"
        )
    return "\n".join(lines) + "\n"


def score_flip_probe(
    members: RewardMembers, tokenizer: PreTrainedTokenizerBase, items: list[dict], batch_size: int
) -> torch.Tensor | None:
    """Every member's rewards of the flip probe (`None` without items)."""
    if not items:
        return None
    return members.score(flip_probe_sequences(tokenizer, items), tokenizer.pad_token_id, batch_size)
