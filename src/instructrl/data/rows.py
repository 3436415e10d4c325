"""Rows as the recipes read them: prompts, responses and comparisons, validated and tokenized.

Where the reward is read is fixed here for every stage: a response is tokenized as its text followed by the
end-of-turn token (`tokenizer.eos_token`, `<|im_end|>` for SmolLM2), the token the reward model scores in training,
evaluation and PPO alike (see `instructrl.reward`).
"""

import math
from collections.abc import Callable
from typing import Any

from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from ..errors import DataError
from .loading import check_rows, message_text, non_empty, require_columns

RANKING_COLUMNS = ("prompt", "responses", "scores")
PAIR_COLUMNS = ("prompt", "chosen", "rejected")


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str | list[dict]) -> list[int]:
    """Token ids of a prompt as the policy sees it: the chat template with the generation prompt, or raw text."""
    if isinstance(prompt, list):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str | list[dict]) -> list[int]:
    """Token ids of a response closed by the end-of-turn token, the token the reward is read at."""
    ids = tokenizer(message_text(response).strip(), add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


def validate_prompts(dataset: Dataset, what: str) -> Dataset:
    """Raise `DataError` unless every row has a non-empty `prompt` (chat messages or text)."""
    if len(dataset) == 0:
        raise DataError(f"The {what} data is empty.")
    require_columns(dataset, [("prompt",)], f"{what} data")
    check_rows(dataset, "prompt", non_empty, f"{what} data")
    return dataset


def validate_comparisons(dataset: Dataset, what: str) -> Dataset:
    """Raise `DataError` unless the rows are rankings (prompt/responses/scores) or pairs (prompt/chosen/rejected)."""
    if len(dataset) == 0:
        raise DataError(f"The {what} is empty.")
    columns = require_columns(dataset, (RANKING_COLUMNS, PAIR_COLUMNS), what)
    check_rows(dataset, "prompt", non_empty, what)
    if columns == PAIR_COLUMNS:
        check_rows(dataset, "chosen", non_empty, what)
        check_rows(dataset, "rejected", non_empty, what)
        rows = zip(dataset["chosen"], dataset["rejected"], strict=True)
        problems = ("chosen and rejected are the same response" if same_text(c, r) else None for c, r in rows)
    else:
        problems = map(ranking_problem, dataset["responses"], dataset["scores"])
        if "finished" in dataset.column_names:  # optional: written by `make collect`
            problems = (
                problem or finished_problem(responses, finished)
                for problem, responses, finished in zip(
                    problems, dataset["responses"], dataset["finished"], strict=True
                )
            )
    for index, problem in enumerate(problems):
        if problem is not None:
            raise DataError(f"Row {index} of the {what}: {problem}. Fix or drop that row.")
    return dataset


def same_text(a, b) -> bool:
    return message_text(a).strip() == message_text(b).strip()


def ranking_problem(responses, scores) -> str | None:
    """What is wrong with one ranking row (`None` if nothing): K responses, one finite number each, no duplicates."""
    if not isinstance(responses, list) or not 2 <= len(responses) <= 9:
        return "'responses' must be a list of 2 to 9 responses"
    if not isinstance(scores, list) or len(scores) != len(responses):
        return "'scores' must hold one number per response"
    for i, score in enumerate(scores):
        if isinstance(score, bool) or not isinstance(score, int | float):
            return f"score {i} is {score!r}, not a number"
        if not math.isfinite(score):
            return f"score {i} is {score}: scores must be finite numbers"
    for i, response in enumerate(responses):
        if non_empty(response) is not None:
            return f"response {i} is empty or not text ({non_empty(response)})"
    texts = [message_text(r).strip() for r in responses]
    for i, text in enumerate(texts):
        if text in texts[:i]:
            return f"response {i} repeats response {texts.index(text)}: rank each distinct response once"
    return None


def finished_problem(responses: list, finished) -> str | None:
    """What is wrong with a ranking row's optional `finished` (`None` if nothing or absent): one true/false per
    response, saying whether it ended or was cut off at the sampling limit."""
    if finished is None:
        return None
    if not isinstance(finished, list) or len(finished) != len(responses):
        return "'finished' must hold one true/false per response (whether it ended), or be left out"
    if not all(isinstance(flag, bool) for flag in finished):
        return f"'finished' is {finished!r}: use true or false for each response"
    return None


def ranked_responses(row: dict[str, Any]) -> tuple[list[str], list[float]]:
    """A comparison row's responses and their scores (higher is better): a ranking's own, or a pair as (chosen 1,
    rejected 0)."""
    if "responses" in row:
        return row["responses"], [float(s) for s in row["scores"]]
    return [row["chosen"], row["rejected"]], [1.0, 0.0]


def tokenize_comparisons(
    dataset: Dataset,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int | None,
    after_response: Callable[[Any], list[int]] | None = None,
    keep_finished: bool = False,
) -> Dataset:
    """Turn ranking or pair rows into `sequences` (one token list per response) and `scores` (higher is better).

    Groups whose sequences exceed `max_length` are dropped; groups left with fewer than two responses are dropped.
    `keep_finished` also keeps rankings' `finished` flags (aligned with the sequences kept; `None` where a row has
    none), for the held-out metrics on finished pairs and `length_decorrelation` over finished responses.
    `after_response(prompt)`, if given, returns token ids appended after every response of that prompt (an
    experiment's input layout, `scripts/rm_restate_instruction.py`); by default nothing follows the end-of-turn token.
    """
    with_finished = keep_finished and "finished" in dataset.column_names

    def tokenize(row: dict[str, Any]) -> dict[str, Any]:
        responses, scores = ranked_responses(row)
        prompt_ids = encode_prompt(tokenizer, row["prompt"])
        suffix = after_response(row["prompt"]) if after_response else []
        sequences = [prompt_ids + encode_response(tokenizer, r) + suffix for r in responses]
        finished = row.get("finished")
        if max_length is not None:
            kept = [i for i, sequence in enumerate(sequences) if len(sequence) <= max_length]
            sequences, scores = [sequences[i] for i in kept], [scores[i] for i in kept]
            finished = None if finished is None else [finished[i] for i in kept]
        return {"sequences": sequences, "scores": scores} | ({"finished": finished} if with_finished else {})

    tokenized = dataset.map(tokenize, remove_columns=dataset.column_names, desc="Tokenizing comparisons")
    return tokenized.filter(lambda row: len(row["sequences"]) >= 2 and len(set(row["scores"])) > 1)
