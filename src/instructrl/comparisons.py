"""InstructGPT step 2's data: sample K responses per prompt, rank them with a labeler, write rankings and pairs.

Outputs (JSON lines, one directory per format, each with `train.jsonl` and `test.jsonl` split by prompt):

- `rankings/`: `{"prompt", "responses" (K), "scores" (K, higher is better), "ranking" (indices, best first),
  "labeler"}`, what the reward model trains on (all C(K,2) pairs of a prompt in one batch element);
- `pairs/`: TRL's standard preference format `{"prompt", "chosen", "rejected"}`, the C(K,2) pairs of each ranking
  (tied pairs left out), for tools that take pairs;
- `probes/flip.jsonl`: the instruction-flip probe (`flip_probe`), two prompts on one topic and two responses such
  that the labeler prefers the first response under the first prompt and the second under the second.

Three ways to teach a reward model that what is better depends on the instruction (RRM, Liu et al. 2024; LIFT,
Yuan et al. 2024) reuse responses already sampled: `sibling_rankings` ranks one prompt's responses again under
other prompts about the same topic with other instructions, `count_rankings` ranks them again under the same prompt
with only its stated count changed (about N words, N sentences, N bullet points...), and `flip_rankings` adds
flip-probe-like items built from the training prompts (two responses whose order the two instructions reverse, so
nothing in a response alone decides them); the probe on held-out topics measures whether the model learned it.
Prompts are siblings when they share their topic words (`instructrl.labeler.topic_words`: content words without the
task words and explicit constraints); the labeler decides every order, no label is made by hand.
"""

import json
import os
import random
from collections import defaultdict
from itertools import combinations, permutations
from pathlib import Path

from .data.loading import message_text
from .errors import DataError, MissingStageError
from .labeler import Labeler, count_targets, restate_count, topic_words

# A flip-probe pair needs the labeler to prefer each response under its prompt by at least this much.
FLIP_MARGIN = 0.05


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


def topic_groups(prompts: list) -> list[list[int]]:
    """Indices of `prompts` grouped by topic (same topic words), groups of two or more distinct prompts only."""
    by_topic: dict[tuple[str, ...], list[int]] = defaultdict(list)
    seen: set[str] = set()
    for index, prompt in enumerate(prompts):
        text = message_text(prompt)
        key = tuple(sorted(topic_words(text)))
        if key and text not in seen:
            seen.add(text)
            by_topic[key].append(index)
    return [indices for _, indices in sorted(by_topic.items()) if len(indices) >= 2]


def sibling_rankings(labeler: Labeler, groups: list[tuple], per_prompt: int, seed: int) -> list[dict]:
    """Ranks each prompt's responses again under up to `per_prompt` sibling prompts (same topic, other instruction).

    `groups` are `(prompt, responses)`; rows whose responses all score alike are left out. Each row records the prompt
    its responses were sampled for as `sampled_for`.
    """
    rng = random.Random(seed)
    rows = []
    for indices in topic_groups([prompt for prompt, _ in groups]):
        for i in indices:
            prompt, responses = groups[i]
            if len(responses) < 2:
                continue
            siblings = [j for j in indices if j != i]
            for j in sorted(rng.sample(siblings, min(per_prompt, len(siblings)))):
                row = rank_responses(labeler, groups[j][0], responses)
                if len(set(row["scores"])) > 1:
                    rows.append({**row, "sampled_for": prompt})
    return rows


def restated_prompt(prompt, number: int):
    """`prompt` (a string or messages) with its count instruction restated to `number` (`labeler.restate_count`, in
    the last user message); `None` if it states no count or already states that one."""
    if isinstance(prompt, str):
        restated = restate_count(prompt, number)
        return restated if restated not in (None, prompt) else None
    users = [i for i, m in enumerate(prompt) if m.get("role") == "user"]
    if not users or (text := restated_prompt(str(prompt[users[-1]].get("content") or ""), number)) is None:
        return None
    return [{**m, "content": text} if i == users[-1] else m for i, m in enumerate(prompt)]


def count_rankings(labeler: Labeler, groups: list[tuple], per_prompt: int, seed: int) -> list[dict]:
    """Ranks each prompt's responses again under up to `per_prompt` restatements of the prompt that change only the
    number its count instruction states, each number one of the responses' own counts (`labeler.count_targets`), so
    that each restatement is the instruction some sampled response meets exactly and the order follows the number.

    `groups` are `(prompt, responses)`; prompts without a count instruction give nothing, nor do restatements under
    which the responses all score alike. Each row records the prompt its responses were sampled for as
    `sampled_for`, as sibling re-rankings do.
    """
    rng = random.Random(seed)
    rows = []
    for prompt, responses in groups:
        if len(responses) < 2:
            continue
        numbers = sorted(set(count_targets(message_text(prompt), responses)))
        restated = [p for n in numbers if (p := restated_prompt(prompt, n)) is not None]
        for other in rng.sample(restated, min(per_prompt, len(restated))):
            row = rank_responses(labeler, other, responses)
            if len(set(row["scores"])) > 1:
                rows.append({**row, "sampled_for": prompt})
    return rows


def flip_probe(labeler: Labeler, groups: list[tuple], max_items: int, seed: int, per_pair: int = 2) -> list[dict]:
    """The instruction-flip probe: `{"prompts": [a, b], "responses": [x, y]}` rows where the labeler prefers x to y
    under prompt a and y to x under prompt b, both by at least `FLIP_MARGIN`.

    Prompts a and b are siblings in `groups` (`(prompt, responses)`); x and y come from either prompt's responses.
    At most `per_pair` rows per pair of prompts and `max_items` in all, drawn with `seed`.
    """
    rng = random.Random(seed)
    items = []
    for indices in topic_groups([prompt for prompt, _ in groups]):
        for i, j in combinations(indices, 2):
            (prompt_a, responses_a), (prompt_b, responses_b) = groups[i], groups[j]
            pool = distinct(list(responses_a) + list(responses_b))
            text_a, text_b = message_text(prompt_a), message_text(prompt_b)
            under_a = [labeler.score(text_a, r) for r in pool]
            under_b = [labeler.score(text_b, r) for r in pool]
            found = [
                (x, y)
                for x, y in permutations(range(len(pool)), 2)
                if under_a[x] - under_a[y] >= FLIP_MARGIN and under_b[y] - under_b[x] >= FLIP_MARGIN
            ]
            for x, y in rng.sample(found, min(per_pair, len(found))):
                items.append({"prompts": [prompt_a, prompt_b], "responses": [pool[x], pool[y]]})
    rng.shuffle(items)
    return items[:max_items]


def flip_rankings(labeler: Labeler, groups: list[tuple], max_items: int, seed: int) -> list[dict]:
    """Up to `max_items` flip items (`flip_probe`) from `groups`, each as two K=2 rankings: the same two responses
    ranked by the labeler under each of the two sibling prompts, in opposite orders. Each row records the other
    prompt of its item as `flipped_with`.
    """
    rows = []
    for item in flip_probe(labeler, groups, max_items, seed):
        first, second = item["prompts"]
        rows.append({**rank_responses(labeler, first, item["responses"]), "flipped_with": second})
        rows.append({**rank_responses(labeler, second, item["responses"]), "flipped_with": first})
    return rows


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


def mark_finished(rows: list[dict], cut_off: set[str]) -> list[dict]:
    """The ranking rows with `finished`: for each response, whether it ended (its text, stripped, is not among the
    `cut_off` ones sampling stopped at `max_new_tokens`). The RM stage reports its accuracy and length preference on
    pairs of finished responses from it: the pairs PPO's reward has to order, as a cut-off rollout is
    `missing_eos_penalty`'s business."""
    return [{**row, "finished": [message_text(r).strip() not in cut_off for r in row["responses"]]} for row in rows]


def read_sampled(collection_dir: Path) -> tuple[list[tuple], list[tuple], set[str] | None]:
    """The responses an earlier `make collect` sampled, from its `rankings/`: `(train groups, test groups, cut-off
    texts)`, groups as `(prompt, responses)` of the prompts they were sampled for (re-rankings under sibling,
    restated or flipped prompts left out), the cut-off texts from the rows' `finished` flags (`None` where the rows
    have none), so that `rank_and_write` can rank them again without sampling."""
    groups: dict[str, list[tuple]] = {}
    cut_off: set[str] = set()
    flagged = False
    for split in ("train", "test"):
        path = collection_dir / "rankings" / f"{split}.jsonl"
        if not path.is_file():
            raise MissingStageError(
                f"No '{path}': `responses_from` must point at the output folder of an earlier `make collect` "
                "(it holds rankings/train.jsonl and rankings/test.jsonl)."
            )
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"Line {number} of '{path}' is not JSON ({err.msg}): fix or drop that line.") from None
            row = row if isinstance(row, dict) else {}
            responses = row.get("responses")
            finished = row.get("finished", responses)
            lists = isinstance(responses, list) and isinstance(finished, list)
            if "prompt" not in row or not lists or len(finished) != len(responses):
                raise DataError(
                    f"Line {number} of '{path}' is not a ranking row (`prompt`, a `responses` list and, if any, one "
                    "`finished` flag per response): `responses_from` reads what `make collect` wrote."
                )
            if row.get("sampled_for") or row.get("flipped_with"):
                continue
            rows.append((row["prompt"], responses))
            if "finished" in row:
                flagged = True
                cut_off.update(message_text(r).strip() for r, end in zip(responses, finished, strict=True) if not end)
        groups[split] = rows
    if not groups["train"]:
        raise DataError(f"'{collection_dir}' holds no training rankings to rank again.")
    return groups["train"], groups["test"], cut_off if flagged else None


def write_comparisons(output_dir: Path, train: list[dict], test: list[dict]) -> dict:
    """Write the train and test rankings and their pairs; return counts."""
    counts = {}
    for split, rows in (("train", train), ("test", test)):
        pairs = [p for row in rows for p in ranking_to_pairs(row)]
        write_jsonl(output_dir / "rankings" / f"{split}.jsonl", rows)
        write_jsonl(output_dir / "pairs" / f"{split}.jsonl", pairs)
        counts[f"{split}_prompts"], counts[f"{split}_pairs"] = len(rows), len(pairs)
    return counts
