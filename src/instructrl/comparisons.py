"""InstructGPT step 2's data: sample K responses per prompt, rank them with a labeler, write rankings and pairs.

Outputs (JSON lines, one directory per format, each with `train.jsonl` and `test.jsonl` split by prompt):

- `rankings/`: `{"prompt", "responses" (K), "scores" (K, higher is better), "ranking" (indices, best first),
  "labeler"}`, what the reward model trains on (all C(K,2) pairs of a prompt in one batch element);
- `pairs/`: TRL's standard preference format `{"prompt", "chosen", "rejected"}`, the C(K,2) pairs of each ranking
  (tied pairs left out), for tools that take pairs.
"""

import json
import os
import random
from itertools import combinations
from pathlib import Path

from .data.loading import message_text
from .labeler import Labeler


def distinct(responses: list[str]) -> list[str]:
    """The responses without repeats (same text up to surrounding space), in sampling order.

    Sampling K answers can repeat one; a ranking states each distinct response once (the reward model's data check
    refuses repeats), so a prompt left with fewer than two distinct responses yields no comparison.
    """
    seen: set[str] = set()
    kept = []
    for response in responses:
        if response.strip() not in seen:
            seen.add(response.strip())
            kept.append(response)
    return kept


def rank_responses(labeler: Labeler, prompt, responses: list[str]) -> dict:
    """Score and rank one prompt's responses (best first; ties keep sampling order)."""
    prompt_text = message_text(prompt)
    scores = [float(labeler.score(prompt_text, r)) for r in responses]
    ranking = sorted(range(len(responses)), key=lambda i: (-scores[i], i))
    return {"prompt": prompt, "responses": responses, "scores": scores, "ranking": ranking, "labeler": labeler.name}


def ranking_to_pairs(row: dict) -> list[dict]:
    """The C(K,2) preference pairs of a ranking, leaving out ties (they state no preference)."""
    pairs = []
    for i, j in combinations(row["ranking"], 2):
        if row["scores"][i] > row["scores"][j]:
            chosen, rejected = row["responses"][i], row["responses"][j]
            pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected})
    return pairs


def split_by_prompt(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = round(len(rows) * test_fraction)
    test = set(order[:n_test])
    return [r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_comparisons(output_dir: Path, rankings: list[dict], test_fraction: float, seed: int) -> dict:
    """Write rankings and pairs, split by prompt, and return counts."""
    train, test = split_by_prompt(rankings, test_fraction, seed)
    counts = {}
    for split, rows in (("train", train), ("test", test)):
        pairs = [p for row in rows for p in ranking_to_pairs(row)]
        write_jsonl(output_dir / "rankings" / f"{split}.jsonl", rows)
        write_jsonl(output_dir / "pairs" / f"{split}.jsonl", pairs)
        counts[f"{split}_prompts"], counts[f"{split}_pairs"] = len(rows), len(pairs)
    return counts
