"""Reward model: K-way ranking loss, tokenization that fixes the scored token, normalization and accuracy.

InstructGPT trains on all C(K,2) comparisons among the K ranked responses of one prompt as a single batch element:
each response goes through the model once and the pairwise loss is averaged over the prompt's pairs. Pairwise data
(TRL's prompt/chosen/rejected format) is the K=2 case of the same thing.

The reward is read at one position everywhere: the end-of-turn token (`tokenizer.eos_token`, `<|im_end|>` for
SmolLM2) that closes the response. Training sequences are `prompt + response + <eos>` with nothing after it, the
classifier reads the right-most non-pad token, and PPO truncates generations after the same stop token, so RM training,
RM evaluation and PPO all score the same token.
"""

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset, concatenate_datasets
from peft import LoraConfig, PeftModel
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import SequenceClassifierOutput
from trl import ModelConfig, RewardTrainer, get_peft_config

from .adapters import adapter_tensors, has_adapter, load_lora_weights
from .batching import pad_right
from .configs import expand_path
from .data.loading import load_data, message_text
from .data.rows import encode_prompt, encode_response, ranked_responses, tokenize_comparisons
from .errors import ConfigError, DataError
from .labeler import LABELERS
from .modeling import lora_bf16_compute, returned_cache
from .stats import proportion_ci

NORMALIZATION_FILE = "reward_normalization.json"
# Held-out accuracy by the labeler criterion deciding each pair (`accuracy_by_criterion`), for a labeler with criteria.
BY_CRITERION_FILE = "eval_by_criterion.json"


@dataclass
class RankingCollator:
    """Flattens K-response groups into one right-padded batch, remembering which rows belong to which prompt.

    Besides the whole sequences (`input_ids`, `attention_mask`) it splits each group at the tokens all its sequences
    share (the prompt): `prefix_ids`/`prefix_mask` hold each group's shared part once, `suffix_ids`/`suffix_mask` each
    sequence's rest, right-padded, for `sequence_rewards`' shared-prompt forward. Every suffix keeps at least one
    token, the one the reward is read at.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [s for ex in examples for s in ex["sequences"]]
        input_ids, attention_mask = pad_right(sequences, self.pad_token_id)
        shared = [shared_prefix_length(ex["sequences"]) for ex in examples]
        prefixes = [ex["sequences"][0][:n] for ex, n in zip(examples, shared, strict=True)]
        suffixes = [s[n:] for ex, n in zip(examples, shared, strict=True) for s in ex["sequences"]]
        prefix_ids, prefix_mask = pad_right(prefixes, self.pad_token_id)
        suffix_ids, suffix_mask = pad_right(suffixes, self.pad_token_id)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "prefix_ids": prefix_ids,
            "prefix_mask": prefix_mask,
            "suffix_ids": suffix_ids,
            "suffix_mask": suffix_mask,
            "scores": torch.tensor([s for ex in examples for s in ex["scores"]], dtype=torch.float),
            "group_sizes": torch.tensor([len(ex["sequences"]) for ex in examples]),
        }
        if any(ex.get("finished") is not None for ex in examples):
            # Which responses ended (a row without flags: all of them, as nothing says otherwise).
            flags = [f for ex in examples for f in (ex.get("finished") or [True] * len(ex["sequences"]))]
            batch["finished"] = torch.tensor(flags, dtype=torch.bool)
        return batch


def shared_prefix_length(sequences: list[list[int]]) -> int:
    """How many leading tokens all `sequences` share, leaving each at least its last token."""
    limit = min(len(s) for s in sequences) - 1
    n = 0
    while n < limit and all(s[n] == sequences[0][n] for s in sequences):
        n += 1
    return n


def _full_rewards(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    return logits.squeeze(-1)


def _classifier_parts(model: Any) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(transformer body, score head) of a sequence classifier (LoRA-wrapped or not) whose body takes a cache and
    explicit positions with the eager or SDPA attention; `None` for anything else."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    body = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = getattr(base, "score", None)
    if body is None or head is None or getattr(base, "is_gradient_checkpointing", False):
        return None
    if getattr(base.config, "_attn_implementation", None) not in ("eager", "sdpa"):
        return None
    if not {"position_ids", "use_cache"} <= inspect.signature(body.forward).parameters.keys():
        return None
    return body, head


def _shared_prompt_rewards(
    body: torch.nn.Module, head: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> torch.Tensor | None:
    prefix_mask, suffix_mask = batch["prefix_mask"], batch["suffix_mask"]
    prefix = body(input_ids=batch["prefix_ids"], attention_mask=prefix_mask, use_cache=True)
    cache_key, cache = returned_cache(prefix)
    if not hasattr(cache, "batch_select_indices"):
        return None
    rows = torch.repeat_interleave(
        torch.arange(len(batch["group_sizes"]), device=prefix_mask.device), batch["group_sizes"].to(prefix_mask.device)
    )
    cache.batch_select_indices(rows)  # each group's keys and values once per sequence (indexing keeps the gradient)
    prompt_lengths = prefix_mask.sum(dim=-1)[rows]
    positions = prompt_lengths[:, None] + torch.arange(suffix_mask.shape[1], device=suffix_mask.device)[None, :]
    hidden = body(
        input_ids=batch["suffix_ids"],
        # The padding after shorter prompts stays masked, so each suffix sees exactly its own prompt.
        attention_mask=torch.cat([prefix_mask[rows], suffix_mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **{cache_key: cache},
    ).last_hidden_state
    last = suffix_mask.sum(dim=-1) - 1
    return head(hidden[torch.arange(len(last), device=last.device), last]).squeeze(-1)


def sequence_rewards(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], share_prompt: bool = True
) -> torch.Tensor:
    """The reward of every sequence of a `RankingCollator` batch, read at its last token.

    With `share_prompt`, each group's shared prompt goes through the model once and its keys and values serve all of
    the group's responses (positions continue from the prompt's own length), instead of once per response: the same
    function (to float rounding) in fewer tokens, as InstructGPT's K responses of one prompt share it. Models this does
    not apply to (no cache or explicit positions, other attention kernels, gradient checkpointing) run whole.
    """
    parts = _classifier_parts(model) if share_prompt and "prefix_ids" in batch else None
    if parts is not None and batch["prefix_ids"].shape[1] > 0:
        rewards = _shared_prompt_rewards(*parts, batch)
        if rewards is not None:
            return rewards
    return _full_rewards(model, batch)


def ordered_pairs(scores: torch.Tensor) -> tuple[list[int], list[int]]:
    """(better, worse) indices of the pairs of one group's `scores` that the scores strictly order; ties left out."""
    better, worse = [], []
    for i, j in combinations(range(len(scores)), 2):
        if scores[i] > scores[j]:
            better.append(i), worse.append(j)
        elif scores[j] > scores[i]:
            better.append(j), worse.append(i)
    return better, worse


def ranking_loss(
    rewards: torch.Tensor, scores: torch.Tensor, group_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InstructGPT's K-way ranking loss.

    For each group (prompt) with responses ranked by `scores`, every pair (i, j) with scores[i] > scores[j]
    contributes -log sigmoid(r_i - r_j); pairs are averaged within a group (1 / C(K,2) without ties) and groups are
    averaged over the batch. Tied pairs carry no preference and are left out.

    Args:
        rewards (`torch.Tensor`): `[N]` model rewards, the groups' responses concatenated.
        scores (`torch.Tensor`): `[N]` labeler scores in the same order; higher is better.
        group_sizes (`torch.Tensor`): `[G]` number of responses of each group; sums to N.

    Returns:
        `(loss, correct, pairs)`: the scalar loss, and the number of correctly ordered and of all compared pairs.
    """
    losses, correct, total = [], rewards.new_zeros(()), rewards.new_zeros(())
    for group_rewards, group_scores in zip(
        rewards.split(group_sizes.tolist()), scores.split(group_sizes.tolist()), strict=True
    ):
        better, worse = ordered_pairs(group_scores)
        if not better:
            continue
        margin = group_rewards[better] - group_rewards[worse]
        losses.append(-F.logsigmoid(margin).mean())
        correct = correct + (margin > 0).sum().detach()
        total = total + len(better)
    if not losses:
        return rewards.sum() * 0.0, correct, total
    return torch.stack(losses).mean(), correct, total


def within_group_length_correlation(
    rewards: torch.Tensor, lengths: torch.Tensor, group_sizes: torch.Tensor, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Pearson correlation of rewards with lengths after taking each group's (prompt's) mean out of both, in
    `ranking_loss`' layout: how much of the reward's spread among one prompt's responses is their length. 0 when no
    group has two responses of different lengths. Differentiable in `rewards`: `length_decorrelation` penalizes its
    square, after ODIN (Chen et al. 2024), which keeps the reward's length part out of what PPO optimizes; here it is
    one head, so the penalty asks the reward to carry no length preference *on average over instructions*, while an
    instruction that asks for a length can still move it either way. `keep` (bool, one per response) restricts it to
    those responses: the finished ones, among which the labels have no length preference of their own, whereas a
    response cut off at the sampling limit is rightly worse, and longer."""
    sizes = group_sizes.tolist()
    if keep is None:
        keep = torch.ones_like(rewards, dtype=torch.bool)
    groups = zip(rewards.split(sizes), lengths.to(rewards.dtype).split(sizes), keep.split(sizes), strict=True)
    centered = [(r[k] - r[k].mean(), n[k] - n[k].mean()) for r, n, k in groups if k.sum() > 1]
    if not centered:
        return rewards.sum() * 0.0
    r, n = torch.cat([c[0] for c in centered]), torch.cat([c[1] for c in centered])
    length_spread = n.square().sum()
    if length_spread == 0:
        return rewards.sum() * 0.0
    # eps: the square root's gradient stays finite when every reward in a group is equal.
    return (r * n).sum() / ((r.square().sum() + 1e-12).sqrt() * length_spread.sqrt())


def _mean_minus_std(scores: torch.Tensor, coef: float) -> torch.Tensor:
    # Population std (the members are the whole ensemble, not a sample): two members a, b give mean - coef*|a-b|/2.
    return scores.mean(dim=-1) - coef * scores.std(dim=-1, correction=0)


def _minimum(scores: torch.Tensor, coef: float) -> torch.Tensor:
    return scores.min(dim=-1).values


# Conservative combinations of a reward-model ensemble's scores (Coste et al. 2023, "Reward Model Ensembles Help
# Mitigate Overoptimization"): uncertainty-weighted (mean - coef x std across members) and worst-case (minimum).
ENSEMBLE_REWARDS = {"mean_minus_std": _mean_minus_std, "min": _minimum}


def ensemble_reward(scores: torch.Tensor, method: str = "mean_minus_std", coef: float = 1.0) -> torch.Tensor:
    """One conservative reward from the members' scores on the last axis (`[..., members]` -> `[...]`).

    Args:
        scores (`torch.Tensor`):
            Each member's reward, members on the last axis.
        method (`str`, *optional*, defaults to `"mean_minus_std"`):
            A key of `ENSEMBLE_REWARDS`.
        coef (`float`, *optional*, defaults to `1.0`):
            How many standard deviations `mean_minus_std` subtracts (unused by `min`).
    """
    return ENSEMBLE_REWARDS[method](scores, coef)


def check_ensemble(method: str, coef: float) -> None:
    """Raise `ConfigError` unless `method` is a key of `ENSEMBLE_REWARDS` and `coef` is a number >= 0."""
    if method not in ENSEMBLE_REWARDS:
        raise ConfigError(f"`reward_ensemble` is '{method}'; choose one of {', '.join(ENSEMBLE_REWARDS)}.")
    if not coef >= 0:  # also refuses NaN
        raise ConfigError(f"`reward_ensemble_coef` is {coef} but must be >= 0. Fix it in the config or command line.")


def reward_peft_config(model_args: ModelConfig, init_adapter: str | None = None) -> LoraConfig | None:
    """LoRA for a sequence classifier: the score head is trained in full and saved with the adapter.

    Args:
        model_args (`ModelConfig`):
            `use_peft` and the `lora_*` settings.
        init_adapter (`str`, *optional*):
            An adapter (the SFT stage's output) the reward model will start from: its rank, alpha and target modules
            replace `lora_r`, `lora_alpha` and `lora_target_modules`, so that its weights fit (`load_init_adapter`).
    """
    model_args.lora_task_type = "SEQ_CLS"
    config = get_peft_config(model_args)
    if config is not None:
        config.modules_to_save = sorted(set(config.modules_to_save or []) | {"score"})
        if init_adapter:
            source = read_init_adapter_config(init_adapter)
            config.r, config.lora_alpha, config.target_modules = source.r, source.lora_alpha, source.target_modules
            config.use_rslora = source.use_rslora
    return config


def read_init_adapter_config(path: str) -> LoraConfig:
    """The LoRA config of the adapter at `path`, checked to be one the reward model can start from."""
    directory = Path(expand_path(path))
    if not has_adapter(directory):
        raise ConfigError(
            f"`init_adapter`: '{path}' holds no LoRA adapter (adapter_config.json and {SAFETENSORS_WEIGHTS_NAME}); "
            "point it at the SFT stage's output directory (run `make sft` first), or set it to null to start the "
            "reward model from the base model."
        )
    config = LoraConfig.from_pretrained(str(directory))
    if not isinstance(config, LoraConfig) or config.use_dora:
        raise ConfigError(f"`init_adapter`: '{path}' is not a plain LoRA adapter, the kind the reward model takes.")
    return config


SCORE_HEAD_KEY = "base_model.model.score.weight"  # how a saved reward adapter names its trained score head


def load_init_adapter(model: PeftModel, path: str) -> bool:
    """Copy the LoRA weights of the adapter at `path` into `model`'s adapter (InstructGPT starts its reward model
    from the SFT model). Returns whether `path` was a reward model (its score head copied too).

    From an SFT adapter the score head keeps its fresh initialization. From a reward model (`make rm`'s output, which
    saves its score head with the adapter) the score head is copied too, so training continues that reward model:
    InstructGPT's iterated collection, where comparisons of the current policy's samples update the RM. The reward
    adapter stays a separate adapter on the one shared base: only its starting values come from `path`.
    """
    directory = Path(expand_path(path))
    fix = "`init_adapter` must be the SFT adapter (or a reward model) of the same base model."
    load_lora_weights(model, directory, model.active_adapter, ConfigError, fix)
    head = adapter_tensors(directory).get(SCORE_HEAD_KEY)
    if head is None:
        return False
    target = model.get_base_model().score.modules_to_save[model.active_adapter].weight
    if head.shape != target.shape:
        raise ConfigError(
            f"`init_adapter`: the score head in '{path}' has shape {tuple(head.shape)}, this model's "
            f"{tuple(target.shape)}; {fix}"
        )
    with torch.no_grad():
        target.copy_(head.to(target.dtype))
    return True


def with_replay(train: Dataset, replay: Dataset, count: int | None, seed: int, what: str) -> Dataset:
    """`train` followed by `count` rows of `replay` drawn at random with `seed` (`None`: as many as `train` has, or
    all of `replay` if it has fewer): the rankings of an earlier collection trained on again beside the new ones.

    Raises:
        DataError: the two hold different kinds of rows (rankings and pairs, or other columns).
    """
    count = len(train) if count is None else count
    picked = replay.shuffle(seed=seed).select(range(min(count, len(replay))))
    if set(picked.column_names) != set(train.column_names):
        raise DataError(
            f"The {what} has the columns {sorted(picked.column_names)}, the new comparisons "
            f"{sorted(train.column_names)}: replay comparisons of the same kind (both `make collect` rankings)."
        )
    return concatenate_datasets([train, picked.cast(train.features)])


def train_top_layers(model: PeftModel, top: int, adapters: tuple[str, ...] | None = None) -> list[torch.nn.Parameter]:
    """Freeze the LoRA weights of `model`'s transformer layers below its top `top`, so that training moves only the
    top layers' adapter weights and the score head, and back-propagation stops at the lowest trainable layer (a
    shorter backward pass: the lower layers' activations need no gradient). Returns the frozen parameters.

    The frozen weights keep their values (the SFT adapter's where the reward adapter starts from it) and are saved
    with the adapter as before. `adapters` limits it to the LoRA weights of the named adapters (PPO's `policy` and
    `value` on its shared base); `None` takes every adapter of `model`.
    """
    layers = model.get_base_model().config.num_hidden_layers
    indexed = [
        (re.search(r"\.layers\.(\d+)\.", n), param)
        for n, param in model.named_parameters()
        if ".lora_" in n and (adapters is None or any(f".{adapter}." in n for adapter in adapters))
    ]
    if not all(match for match, _ in indexed):
        raise ConfigError(
            "`train_top_layers` needs LoRA weights inside numbered transformer layers (`...layers.<i>...`); this "
            "adapter has others. Set `train_top_layers: null`."
        )
    frozen = [param for match, param in indexed if int(match.group(1)) < layers - top]
    for param in frozen:
        param.requires_grad_(False)
    return frozen


class RankingRewardTrainer(RewardTrainer):
    """TRL's `RewardTrainer` trained on K-way rankings (pairs being K=2) with `ranking_loss`, plus
    `length_decorrelation` x the square of `within_group_length_correlation` (logged as `length_correlation` in either
    case), over the finished responses where the rankings say which ended (`finished`), else over all. With
    `lora_bf16_compute` the adapters' arithmetic runs in bf16 on a bf16 base (`modeling.lora_bf16_compute`)."""

    def __init__(
        self,
        *args,
        length_decorrelation: float = 0.0,
        share_prompt: bool = True,
        lora_bf16_compute: bool = False,
        **kwargs,
    ):
        self.length_decorrelation = length_decorrelation
        self.share_prompt = share_prompt
        self.lora_bf16_compute = lora_bf16_compute
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if "sequences" in dataset.column_names:
            return dataset
        return tokenize_comparisons(dataset, processing_class, args.max_length)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["sequences", "scores", "finished"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # Across processes the model is DDP-wrapped and its gradients are synchronized by its own forward: run whole.
        share = self.share_prompt and self.accelerator.num_processes == 1
        unwrapped = self.accelerator.unwrap_model(model) if share or self.lora_bf16_compute else model
        with lora_bf16_compute(unwrapped, self.lora_bf16_compute):
            rewards = sequence_rewards(unwrapped if share else model, inputs, share).float()
        outputs = SequenceClassifierOutput(logits=rewards[:, None])
        loss, correct, pairs = ranking_loss(rewards, inputs["scores"], inputs["group_sizes"])
        # Right-padded sequences of one group share their prompt: their lengths differ as the responses' do.
        lengths = inputs["attention_mask"].sum(dim=-1)
        length_correlation = within_group_length_correlation(
            rewards, lengths, inputs["group_sizes"], inputs.get("finished")
        )
        if self.length_decorrelation:
            loss = loss + self.length_decorrelation * length_correlation.square()
        with torch.no_grad():
            self._metrics[mode]["length_correlation"].append(length_correlation.item())
            correct = self.accelerator.gather_for_metrics(correct.reshape(1)).sum().item()
            pairs = self.accelerator.gather_for_metrics(pairs.reshape(1)).sum().item()
            self._metrics[mode]["pairs"].append(pairs)
            self._metrics[mode]["accuracy"].append(correct / max(pairs, 1))
            self._metrics[mode]["mean_reward"].append(rewards.mean().item())
        return (loss, outputs) if return_outputs else loss


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel, sequences: list[list[int]], pad_token_id: int, batch_size: int = 16
) -> torch.Tensor:
    """Rewards of token sequences (each ending at the scored token), read exactly as in training."""
    was_training = model.training
    model.eval()
    collator = RankingCollator(pad_token_id)
    device = next(model.parameters()).device
    rewards = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        batch = collator([{"sequences": chunk, "scores": [0.0] * len(chunk)}])
        rewards.append(sequence_rewards(model, {k: v.to(device) for k, v in batch.items()}).float().cpu())
    model.train(was_training)
    return torch.cat(rewards) if rewards else torch.zeros(0)


def pairwise_accuracy(
    model: PreTrainedModel,
    tokenized: Dataset,
    pad_token_id: int,
    batch_size: int = 16,
    deciders: list[list[str]] | None = None,
) -> dict:
    """Fraction of strictly ordered response pairs that the model orders like the labeler, over all groups, and how
    often the model and the labels prefer the shorter response (`length_preference`). Where the rows carry
    `finished` flags (`tokenize_comparisons(keep_finished=True)`), the same over the pairs of two finished responses
    too, keys prefixed `finished_` (`finished_pairs_metrics`). With `deciders` (one list per tokenized row, the
    deciding criterion of each of its ordered pairs: `pair_deciders`), `by_criterion` holds the accuracy over each
    criterion's pairs (`accuracy_by_criterion`)."""
    rewards = [score_sequences(model, row["sequences"], pad_token_id, batch_size) for row in tokenized]
    scores = [torch.tensor(row["scores"], dtype=torch.float) for row in tokenized]
    # Within a row every sequence shares the prompt, so the sequence lengths differ as the responses' do.
    lengths = [torch.tensor([len(sequence) for sequence in row["sequences"]]) for row in tokenized]
    metrics = group_metrics(rewards, scores, lengths)
    if "finished" in tokenized.column_names:
        metrics |= finished_pairs_metrics(rewards, scores, lengths, tokenized["finished"])
    if deciders is not None and rewards:
        sizes = torch.tensor([len(r) for r in rewards])
        metrics["by_criterion"] = accuracy_by_criterion(torch.cat(rewards), torch.cat(scores), sizes, deciders)
    return metrics


def group_metrics(rewards: list[torch.Tensor], scores: list[torch.Tensor], lengths: list[torch.Tensor]) -> dict:
    """`ranked_pairs_correct` and `length_preference` over groups given one tensor per group."""
    sizes = torch.tensor([len(r) for r in rewards])
    if not rewards:
        return ranked_pairs_correct(torch.zeros(0), torch.zeros(0), sizes)
    flat_rewards, flat_scores, flat_lengths = torch.cat(rewards), torch.cat(scores), torch.cat(lengths)
    accuracy = ranked_pairs_correct(flat_rewards, flat_scores, sizes)
    return accuracy | length_preference(flat_rewards, flat_scores, flat_lengths, sizes)


def finished_pairs_metrics(
    rewards: list[torch.Tensor], scores: list[torch.Tensor], lengths: list[torch.Tensor], finished: list
) -> dict:
    """`group_metrics` over the responses that ended (`finished`, one flag list per group, `None` where unknown),
    keys prefixed `finished_`: the pairs PPO's reward has to order, since a rollout cut off at `response_length` is
    `missing_eos_penalty`'s business. A reward model that learned "cut off = bad" as "long = bad" shows it here, as a
    length preference its labels do not have."""
    kept: tuple[list, list, list] = ([], [], [])
    for group_rewards, group_scores, group_lengths, flags in zip(rewards, scores, lengths, finished, strict=True):
        if flags is None or sum(flags) < 2:
            continue  # unknown, or fewer than two finished responses: no pair
        mask = torch.tensor(flags, dtype=torch.bool)
        for out, values in zip(kept, (group_rewards, group_scores, group_lengths), strict=True):
            out.append(values[mask])
    return {f"finished_{key}": value for key, value in group_metrics(*kept).items()}


def flip_probe_accuracy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, items: list[dict], batch_size: int = 16
) -> dict:
    """How often the model orders an instruction-flip probe's responses as the labeler does under each prompt.

    Each item (`instructrl.comparisons.flip_probe`) holds two orders: response 0 better under prompt 0, response 1
    better under prompt 1. A model that ignores the instruction gets at most one of them right, so `accuracy` near
    0.5 and `both_right` near 0 mean the preference does not follow the instruction.
    """
    sequences = [prompt + response for prompt, response in flip_probe_sequences(tokenizer, items)]
    return flip_probe_counts(score_sequences(model, sequences, tokenizer.pad_token_id, batch_size).view(-1, 4))


def flip_probe_sequences(
    tokenizer: PreTrainedTokenizerBase, items: list[dict], after_response: Callable[[Any], list[int]] | None = None
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of every flip-probe item, four per item in `flip_probe_counts`' order: prompt 0 with
    responses 0 and 1, then prompt 1 with responses 0 and 1; `after_response` as in `tokenize_comparisons`."""
    return [
        (
            encode_prompt(tokenizer, prompt),
            encode_response(tokenizer, response) + (after_response(prompt) if after_response else []),
        )
        for item in items
        for prompt in item["prompts"]
        for response in item["responses"]
    ]


def flip_probe_counts(rewards: torch.Tensor) -> dict:
    """The flip probe's statistics from its rewards, `[items, 4]` in `flip_probe_sequences`' order.

    Response 0 should beat response 1 under prompt 0 and lose to it under prompt 1.
    """
    right = (rewards[:, 0] > rewards[:, 1]).int() + (rewards[:, 3] > rewards[:, 2]).int()
    correct, both, items = int(right.sum()), int((right == 2).sum()), len(rewards)
    orders = 2 * items
    return {
        "flip_probe_accuracy": correct / orders if orders else float("nan"),
        "flip_probe_ci95_half_width": proportion_ci(correct, orders),
        "flip_probe_both_right": both / items if items else float("nan"),
        "flip_probe_items": items,
    }


def ranked_pairs_correct(rewards: torch.Tensor, scores: torch.Tensor, group_sizes: torch.Tensor) -> dict:
    """Held-out pairwise accuracy of `rewards` against the labeler's `scores`, in `ranking_loss`' layout (groups of
    responses concatenated): the share of strictly ordered pairs the rewards order the same way."""
    _, correct, total = ranking_loss(rewards, scores, group_sizes)
    correct, total = int(correct), int(total)
    accuracy = correct / total if total else float("nan")
    # Normal-approximation 95% interval; pairs within a prompt are not independent, so this is optimistic.
    return {"pairwise_accuracy": accuracy, "pairs": total, "ci95_half_width": proportion_ci(correct, total)}


def pair_deciders(labeler: Any, dataset: Dataset, length_detail: bool = False) -> list[list[str]]:
    """For each comparison row, in order, the labeler criterion that decides each of its strictly ordered pairs, in
    `ordered_pairs`' order (`labeler.deciding_criterion`, e.g. `SimulatedLabeler`'s; `undecided` where the labeler's
    criteria do not order the pair as the row's scores do, e.g. rankings by another labeler). A row without an
    ordered pair (ties only) gets an empty list. With `length_detail`, `length` names the prompt's length
    instruction too (`labeler.length_instruction`: "length (about N words)"), since a length the prompt states as a
    number asks more of a reward model than "at most N words" does."""
    detail = getattr(labeler, "length_instruction", None) if length_detail else None
    deciders = []
    for row in dataset:
        responses, scores = ranked_responses(row)
        prompt = message_text(row["prompt"])
        better, worse = ordered_pairs(torch.tensor(scores))
        names = [
            labeler.deciding_criterion(prompt, responses[b], responses[w]) or "undecided"
            for b, w in zip(better, worse, strict=True)
        ]
        deciders.append([f"length ({detail(prompt)})" if n == "length" and detail else n for n in names])
    return deciders


def labeler_deciders(dataset: Dataset | None) -> list[list[str]] | None:
    """`pair_deciders` for comparison rows that one registered labeler with criteria ranked (`labeler` column: the
    simulated labeler's rankings), rows without an ordered pair left out (as `tokenize_comparisons` leaves them out
    when nothing is truncated); `None` for anything else: pairs, people's rankings, mixed labelers."""
    if dataset is None or "labeler" not in dataset.column_names:
        return None
    names = set(dataset["labeler"])
    if len(names) != 1 or (name := names.pop()) not in LABELERS:
        return None
    labeler = LABELERS[name]()
    if not hasattr(labeler, "deciding_criterion"):
        return None
    return [pairs for pairs in pair_deciders(labeler, dataset) if pairs]


def accuracy_by_criterion(
    rewards: torch.Tensor, scores: torch.Tensor, group_sizes: torch.Tensor, deciders: list[list[str]]
) -> dict[str, dict]:
    """Held-out pairwise accuracy over the pairs each labeler criterion decides, most pairs first.

    `rewards`, `scores` and `group_sizes` in `ranking_loss`' layout; `deciders[g]` names the deciding criterion of
    each of group `g`'s strictly ordered pairs (`pair_deciders`). Returns `{criterion: {pairs, share,
    pairwise_accuracy, ci95_half_width}}`: which parts of the instructions a reward model has learned to judge.
    """
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    sizes = group_sizes.tolist()
    groups = zip(rewards.split(sizes), scores.split(sizes), deciders, strict=True)
    for group_rewards, group_scores, names in groups:
        better, worse = ordered_pairs(group_scores)
        if len(better) != len(names):
            raise ValueError(f"{len(names)} deciding criteria for a group of {len(better)} ordered pairs.")
        for b, w, name in zip(better, worse, names, strict=True):
            total[name] = total.get(name, 0) + 1
            correct[name] = correct.get(name, 0) + int(group_rewards[b] > group_rewards[w])
    pairs = sum(total.values())
    return {
        name: {
            "pairs": total[name],
            "share": total[name] / pairs,
            "pairwise_accuracy": correct[name] / total[name],
            "ci95_half_width": proportion_ci(correct[name], total[name]),
        }
        for name in sorted(total, key=lambda n: (-total[n], n))
    }


def length_preference(
    rewards: torch.Tensor, scores: torch.Tensor, lengths: torch.Tensor, group_sizes: torch.Tensor
) -> dict:
    """How often the reward model, and the labels, prefer the shorter response of a pair (`ranking_loss`' layout).

    Over the held-out pairs that the labels strictly order and whose responses differ in length (`lengths`, e.g. in
    tokens): `labels_prefer_shorter` is the share whose labelled winner is the shorter response, `rm_prefers_shorter`
    the share where the rewards put the shorter one first (equal rewards count one half). An RM well above its labels
    rewards brevity for its own sake, well below them length: a shortcut that does not read the instruction, and one
    that PPO will follow (the issue "A reward model that follows the instruction").
    """
    shorter_by_labels, shorter_by_rm, total = 0, 0.0, 0
    split = group_sizes.tolist()
    for group_rewards, group_scores, group_lengths in zip(
        rewards.split(split), scores.split(split), lengths.split(split), strict=True
    ):
        for better, worse in zip(*ordered_pairs(group_scores), strict=True):
            if group_lengths[better] == group_lengths[worse]:
                continue
            short, long = (better, worse) if group_lengths[better] < group_lengths[worse] else (worse, better)
            total += 1
            shorter_by_labels += int(short == better)
            margin = float(group_rewards[short] - group_rewards[long])
            shorter_by_rm += 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0
    share = (lambda count: count / total) if total else (lambda count: float("nan"))
    return {
        "rm_prefers_shorter": share(shorter_by_rm),
        "labels_prefer_shorter": share(shorter_by_labels),
        "length_pairs": total,
    }


def load_flip_probe(path: str) -> list[dict]:
    """The flip-probe items at `path` (JSON lines of `{"prompts": [a, b], "responses": [x, y]}`)."""
    what = f"flip probe '{path}'"
    file = Path(expand_path(path))
    if file.is_file() and file.stat().st_size == 0:
        return []  # written empty when there was no programmatic labeler to decide the orders
    rows = list(load_data(str(file)))
    for index, row in enumerate(rows):
        pair = all(isinstance(row.get(k), list) and len(row[k]) == 2 for k in ("prompts", "responses"))
        if not pair:
            raise DataError(
                f"Row {index} of the {what} needs `prompts` and `responses`, two of each (as `recipes/collect.py` "
                "writes them); fix the row or set `flip_probe` to null."
            )
    return rows


def reward_bias(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, demonstrations: Dataset) -> dict:
    """The bias that makes the RM score the SFT demonstrations at mean 0 (InstructGPT's normalization)."""
    sequences = [
        encode_prompt(tokenizer, row["prompt"]) + encode_response(tokenizer, row["completion"])
        for row in demonstrations
    ]
    rewards = score_sequences(model, sequences, tokenizer.pad_token_id)
    return {
        "bias": -rewards.mean().item(),
        "demonstration_reward_mean": rewards.mean().item(),
        "demonstration_reward_std": rewards.std().item() if len(rewards) > 1 else 0.0,
        "num_demonstrations": len(rewards),
        "scored_token": tokenizer.eos_token,
    }
