"""Evaluation in the spirit of InstructGPT section 4, with the simulated labeler standing in for human raters.

For a set of policies (the base model, SFT, PPO, PPO-ptx, or any adapters a user names) on held-out prompts:

- the labeler's score of the responses sampled for each prompt (one or more: `samples_per_prompt`), and the reward
  model's score of the same responses; intervals treat the prompt as the unit, since one prompt's samples are not
  independent of each other;
- the win rate against a reference policy (SFT by default), judged by the labeler and by the reward model; a tie
  counts one half, as InstructGPT counts "equally good";
- a Monte-Carlo estimate of KL(policy || reference) on the policy's own samples;
- perplexity on held-out pretraining text, whose increase over the reference is the "alignment tax";
- response length and repetition (distinct-n).

The arithmetic lives in small pure functions (`mean_ci`, `win_rate`, `distinct_n`, `sequence_logprobs`,
`heldout_nll`) tested on hand-made inputs; `EvalModels` loads every adapter on one base model.
"""

import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.experimental.utils import get_reward

from .batching import pad_left, pad_right
from .data.rows import encode_prompt, encode_response
from .errors import ConfigError
from .labeler import words
from .shared_base import AdapterView, ScalarModel, add_adapter_from_dir, score_head_from_dir
from .stats import mean_ci, prompt_groups, prompt_mean_ci, win_rate

REWARD_ADAPTER = "reward"


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams in `texts` (Li et al. 2016); 0 when there are none."""
    total, unique = 0, set()
    for text in texts:
        tokens = [w.lower() for w in words(text)]
        grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


@torch.no_grad()
def sequence_logprobs(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    pad_token_id: int,
    batch_size: int = 16,
) -> list[tuple[float, int]]:
    """Per sequence, the summed log-probability of its tokens from index `starts[i]` on, and how many there were.

    `starts[i]` is the first scored position (a prompt's length to score its response; 1 to score a whole text).
    """
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for begin in range(0, len(sequences), batch_size):
        chunk = sequences[begin : begin + batch_size]
        input_ids, attention_mask = pad_right(chunk, pad_token_id)
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        logprobs = F.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        positions = torch.arange(1, input_ids.shape[1], device=device)
        for row, start in enumerate(starts[begin : begin + batch_size]):
            scored = (positions >= max(start, 1)) & attention_mask[row, 1:].bool()
            results.append((float(logprobs[row][scored].sum()), int(scored.sum())))
    return results


def heldout_nll(
    model: nn.Module, texts: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 16
) -> tuple[float, int]:
    """Total next-token negative log-likelihood of tokenized texts and the number of predicted tokens."""
    scored = sequence_logprobs(model, texts, [1] * len(texts), pad_token_id, batch_size)
    return -sum(lp for lp, _ in scored), sum(n for _, n in scored)


def perplexity(nll: float, tokens: int) -> float:
    return math.exp(nll / tokens) if tokens else float("nan")


@torch.no_grad()
def reward_scores(
    reward_model: ScalarModel,
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 16,
) -> list[float]:
    """Reward of each (prompt, response), read by TRL's PPO code (`get_reward`) at the response's end-of-turn token.

    Prompts are left-padded to a common context and responses right-padded, exactly the layout PPO scores.
    """
    device = next(reward_model.parameters()).device
    rewards: list[float] = []
    for begin in range(0, len(prompts), batch_size):
        batch_prompts, batch_responses = prompts[begin : begin + batch_size], responses[begin : begin + batch_size]
        queries, _ = pad_left(batch_prompts, pad_token_id)
        answers, _ = pad_right(batch_responses, pad_token_id)
        context = queries.shape[1]
        after = torch.full((len(batch_prompts), 1), pad_token_id, dtype=torch.long)  # a pad after every response
        query_responses = torch.cat((queries, answers, after), dim=1)
        _, scores, _ = get_reward(reward_model, query_responses.to(device), pad_token_id, context)
        rewards.extend(scores.reshape(-1).float().cpu().tolist())
    return rewards


def mean_reward_per_prompt(
    reward_model: ScalarModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence,
    responses: Sequence[Sequence[str]],
    batch_size: int = 16,
) -> list[float]:
    """The reward model's mean score of each prompt's responses (`sample_responses`' layout: one list per prompt)."""
    prompt_ids = [encode_prompt(tokenizer, p) for p, answers in zip(prompts, responses, strict=True) for _ in answers]
    response_ids = [encode_response(tokenizer, r) for answers in responses for r in answers]
    scores = iter(reward_scores(reward_model, prompt_ids, response_ids, tokenizer.pad_token_id, batch_size))
    return [sum(next(scores) for _ in answers) / len(answers) for answers in responses]


def mean_response_tokens(tokenizer: PreTrainedTokenizerBase, responses: Sequence[Sequence[str]]) -> float:
    """Mean length in tokens of every response (`sample_responses`' layout), each re-encoded without special tokens;
    a prompt with several responses counts each of them."""
    texts = [text for answers in responses for text in answers]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    return sum(lengths) / max(len(lengths), 1)


def parse_policies(entries: Sequence[str]) -> dict[str, Path | None]:
    """`["base", "sft=~/out/sft"]` -> `{"base": None, "sft": Path(...)}`; a bare name (or `name=`) is the base model.

    Raises:
        ConfigError: a name is repeated or not a plain identifier (it becomes a PEFT adapter name).
    """
    policies: dict[str, Path | None] = {}
    for entry in entries:
        name, _, path = entry.partition("=")
        name = name.strip()
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name == REWARD_ADAPTER:
            raise ConfigError(
                f"Policy name '{name}' in `policies` must be a letter followed by letters, digits or '_' (and not "
                f"'{REWARD_ADAPTER}'). Write entries as 'name=adapter_dir', or just 'name' for the base model."
            )
        if name in policies:
            raise ConfigError(f"Policy '{name}' appears twice in `policies`.")
        policies[name] = Path(path.strip()).expanduser() if path.strip() else None
    if not policies:
        raise ConfigError("`policies` is empty: list at least one 'name=adapter_dir' (or 'base').")
    return policies


class EvalModels:
    """Every policy adapter and the reward adapter on one base model; policies without an adapter are the base.

    Args:
        base (`PreTrainedModel`):
            The causal LM, loaded once.
        policies (`dict[str, Path | None]`):
            Policy name -> adapter directory (`None`: the base model itself).
        reward_adapter (`Path`, *optional*):
            A reward-model adapter from `make rm` (LoRA, score head and normalization bias).
    """

    def __init__(self, base: PreTrainedModel, policies: dict[str, Path | None], reward_adapter: Path | None = None):
        shared: PreTrainedModel | PeftModel = base
        for name, adapter in policies.items():
            if adapter is not None:
                shared = add_adapter_from_dir(shared, name, adapter)
        self.reward_head = None
        if reward_adapter is not None:
            shared = add_adapter_from_dir(shared, REWARD_ADAPTER, reward_adapter)
            self.reward_head = score_head_from_dir(reward_adapter, base.config.hidden_size)
            self.reward_head.to(next(base.parameters()).device)
        self.shared = shared.eval()
        self.shared.requires_grad_(False)
        self.policies = policies

    def policy(self, name: str) -> nn.Module:
        if not isinstance(self.shared, PeftModel):
            return self.shared
        return AdapterView(self.shared, name if self.policies[name] is not None else None)

    def reward_model(self) -> ScalarModel | None:
        if self.reward_head is None:
            return None
        return ScalarModel(self.shared, REWARD_ADAPTER, self.reward_head)


def evaluate_policy(
    models: EvalModels,
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[Sequence[int]],
    responses: Sequence[str],
    response_ids: Sequence[Sequence[int]],
    labeler_scores: Sequence[float],
    reference: str | None,
    heldout: Sequence[Sequence[int]],
    batch_size: int,
    labeler_criteria: Sequence[dict[str, float]] | None = None,
    samples_per_prompt: int = 1,
) -> dict:
    """Per-response scores and corpus-level statistics of one policy's samples (win rates are added later).

    The responses (and their `prompt_ids`) come prompt by prompt, `samples_per_prompt` consecutive ones per prompt;
    means and intervals are over prompts (`prompt_mean_ci`). `labeler_criteria` (one dict per response, as
    `SimulatedLabeler.criteria` returns) adds each criterion's mean. Returns a dict whose `per_response` entry keeps
    the per-response values, in the same order, that win rates need.
    """
    pad = tokenizer.pad_token_id
    full = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids, strict=True)]
    # The KL estimate scores the closing end-of-turn token too: when to stop is part of what RLHF changes (PPO
    # policies answer shorter). A response cut off at `max_new_tokens` did not sample that token, which biases its
    # term slightly; keep `max_new_tokens` above the policies' usual length.
    starts = [len(p) for p in prompt_ids]
    per_prompt = samples_per_prompt  # short: it goes into every statistic below
    result: dict = {
        "labeler_score": prompt_mean_ci(labeler_scores, per_prompt),
        "response_words": prompt_mean_ci([len(words(r)) for r in responses], per_prompt),
        "response_tokens": prompt_mean_ci([len(r) - 1 for r in response_ids], per_prompt),
        "distinct_1": distinct_n(responses, 1),
        "distinct_2": distinct_n(responses, 2),
        "empty_responses": sum(not r.strip() for r in responses),
    }
    per_response: dict[str, list] = {"labeler": list(labeler_scores)}
    if labeler_criteria is not None:
        per_response["criteria"] = list(labeler_criteria)
        result["labeler_criteria"] = criterion_means(labeler_criteria, per_prompt)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    reward_model = models.reward_model()
    if reward_model is not None:
        per_response["rm"] = reward_scores(reward_model, prompt_ids, response_ids, pad, batch_size)
        result["rm_score"] = prompt_mean_ci(per_response["rm"], per_prompt)
        seconds["rm"], clock = time.perf_counter() - clock, time.perf_counter()
    if reference is not None and reference != name:
        own = sequence_logprobs(models.policy(name), full, starts, pad, batch_size)
        ref = sequence_logprobs(models.policy(reference), full, starts, pad, batch_size)
        result["kl_to_reference"] = prompt_mean_ci(
            [a - b for (a, _), (b, _) in zip(own, ref, strict=True)], per_prompt
        )
        seconds["kl"], clock = time.perf_counter() - clock, time.perf_counter()
    if heldout:
        nll, tokens = heldout_nll(models.policy(name), heldout, pad, batch_size)
        result["heldout_nll_per_token"] = nll / tokens if tokens else float("nan")
        result["heldout_perplexity"] = perplexity(nll, tokens)
        result["heldout_tokens"] = tokens
        seconds["heldout"] = time.perf_counter() - clock
    result["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    result["per_response"] = per_response
    return result


def win_rates_by_kind(
    kinds: Sequence[Sequence[str]], scores: Sequence[float], baseline: Sequence[float], samples_per_prompt: int = 1
) -> dict:
    """`win_rate` over the prompts of each kind (a prompt of several kinds counts in each), kinds in first-seen order.

    `kinds[i]` are the kinds of prompt `i` (e.g. its explicit constraints, `instructrl.labeler.instruction_kinds`);
    `scores` and `baseline` hold `samples_per_prompt` consecutive values per prompt, as `win_rate` reads them.
    """
    members: dict[str, list[int]] = {}
    for index, prompt_kinds in enumerate(kinds):
        for kind in prompt_kinds:
            members.setdefault(kind, []).append(index)

    def rows(values: Sequence[float], prompts: list[int]) -> list[float]:
        groups = prompt_groups(values, samples_per_prompt)
        return [value for p in prompts for value in groups[p]]

    return {
        kind: {
            "prompts": len(idx),
            **win_rate(rows(scores, idx), rows(baseline, idx), samples_per_prompt=samples_per_prompt),
        }
        for kind, idx in members.items()
    }


def _per_prompt_ci(values: dict[str, dict[int, list[float]]]) -> dict:
    """`{name: {prompt: [values]}}` -> `{name: mean_ci}` of the per-prompt means (`n` counts prompts)."""
    return {name: mean_ci([sum(v) / len(v) for v in prompts.values()]) for name, prompts in values.items()}


def criterion_means(criteria: Sequence[dict[str, float]], samples_per_prompt: int = 1) -> dict:
    """Mean of each labeler criterion over the prompts where it applies to a response (each prompt's mean over its
    `samples_per_prompt` consecutive responses), with its interval; criteria in first-seen order."""
    values: dict[str, dict[int, list[float]]] = {}
    for index, scores in enumerate(criteria):
        for name, value in scores.items():
            values.setdefault(name, {}).setdefault(index // samples_per_prompt, []).append(value)
    return _per_prompt_ci(values)


def criterion_changes(
    criteria: Sequence[dict[str, float]], baseline: Sequence[dict[str, float]], samples_per_prompt: int = 1
) -> dict:
    """Paired change of each labeler criterion against the baseline's response to the same prompt.

    `criteria[i]` and `baseline[i]` score the two policies' `i`-th responses (`SimulatedLabeler.criteria`), stored
    prompt by prompt with `samples_per_prompt` of each; a criterion counts where it applies to both, and a prompt's
    change is the mean over its samples. Returns `{criterion: mean_ci of the per-prompt changes}`: where a policy
    gains or loses the labeler's score, criterion by criterion.
    """
    if len(criteria) != len(baseline):
        raise ValueError(f"criterion_changes needs paired responses; got {len(criteria)} and {len(baseline)}.")
    diffs: dict[str, dict[int, list[float]]] = {}
    for index, (own, ref) in enumerate(zip(criteria, baseline, strict=True)):
        for name, value in own.items():
            if name in ref:
                diffs.setdefault(name, {}).setdefault(index // samples_per_prompt, []).append(value - ref[name])
    return _per_prompt_ci(diffs)


def add_comparisons(
    results: dict[str, dict],
    reference: str | None,
    kinds: Sequence[Sequence[str]] | None = None,
    samples_per_prompt: int = 1,
) -> None:
    """Win rates against the reference (labeler and RM) and the alignment tax (perplexity increase), in place.

    Each policy's `per_response` values come prompt by prompt, `samples_per_prompt` per prompt. With `kinds` (one
    list per prompt), the labeler win rate is also broken down by kind of instruction.
    """
    if reference is None or reference not in results:
        return
    ref = results[reference]
    for name, result in results.items():
        if name == reference:
            continue
        for judge in ("labeler", "rm"):
            if judge in result["per_response"] and judge in ref["per_response"]:
                result[f"win_rate_{judge}"] = win_rate(
                    result["per_response"][judge], ref["per_response"][judge], samples_per_prompt=samples_per_prompt
                )
        if "criteria" in result["per_response"] and "criteria" in ref["per_response"]:
            result["labeler_criteria_change"] = criterion_changes(
                result["per_response"]["criteria"], ref["per_response"]["criteria"], samples_per_prompt
            )
        if kinds is not None:
            result["win_rate_labeler_by_instruction"] = win_rates_by_kind(
                kinds, result["per_response"]["labeler"], ref["per_response"]["labeler"], samples_per_prompt
            )
        if "heldout_perplexity" in result and "heldout_perplexity" in ref:
            result["perplexity_increase"] = result["heldout_perplexity"] - ref["heldout_perplexity"]
