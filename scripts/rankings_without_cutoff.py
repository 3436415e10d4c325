"""Experiment (not a pipeline option): rankings without the responses that `make collect` cut off at its
`max_new_tokens`, to see whether the reward model's brevity preference comes from them (docs/measurements.md,
"2026-12-04").

```bash
python scripts/rankings_without_cutoff.py ~/.cache/instructrl/outputs/smollm2-135m/comparisons/rankings /tmp/fin
python recipes/rm.py --config recipes/smollm2-135m/rm/config_lora.yaml --dataset_name /tmp/fin/train_set \
    --output_dir /tmp/rm_fin          # trains on the filtered rankings, held-out metrics on all held-out pairs
python recipes/rm_eval.py --config recipes/smollm2-135m/rm_eval/config_default.yaml \
    --reward_model_path /tmp/rm_fin --dataset_name /tmp/fin/finished_only   # metrics on finished pairs only
```

Writes three datasets of `train.jsonl` / `test.jsonl` rankings: `train_set` (the training rankings without cut-off
responses, the held-out ones unchanged, so the RM stage's held-out accuracy stays comparable with the default's),
`finished_only` (both splits without cut-off responses: the pairs PPO's reward model has to order, since a
cut-off rollout is PPO's `missing_eos_penalty`'s business) and `flagged` (every ranking, with the `finished` flags
that `make collect` now writes itself, for rankings collected before it did: `length_decorrelation` and the
finished-pair metrics read them). The rankings do not record whether a response ended;
a response counts as cut off when it re-tokenizes to at least `--max_tokens` tokens (the collection's 64 less a
margin for re-tokenization). A ranking left with fewer than two responses, or with all of them tied, is dropped.
"""

import argparse
import json
from pathlib import Path

from instructrl.modeling import load_embedded_tokenizer


def without_cutoff(row: dict, finished: list[bool]) -> dict | None:
    """`row` (a ranking) without its responses not `finished`; `None` when it no longer ranks."""
    keep = [i for i, ended in enumerate(finished) if ended]
    scores = [row["scores"][i] for i in keep]
    if len(keep) < 2 or len(set(scores)) < 2:
        return None
    order = sorted(range(len(keep)), key=lambda j: (-scores[j], j))
    return {**row, "responses": [row["responses"][i] for i in keep], "scores": scores, "ranking": order}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rankings", type=Path, help="a rankings directory of `make collect` (train.jsonl, test.jsonl)")
    parser.add_argument("output", type=Path)
    parser.add_argument("--max_tokens", type=int, default=62)
    args = parser.parse_args()
    tokenizer = load_embedded_tokenizer()

    def token_count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    for split in ("train", "test"):
        rows = [json.loads(line) for line in (args.rankings / f"{split}.jsonl").read_text().splitlines() if line]
        # A response ended when it re-tokenizes to fewer than `max_tokens` tokens: counted once, used twice.
        flags = [[token_count(text) < args.max_tokens for text in row["responses"]] for row in rows]
        kept = [r for r in (without_cutoff(row, f) for row, f in zip(rows, flags, strict=True)) if r is not None]
        flagged = [{"finished": f, **row} for row, f in zip(rows, flags, strict=True)]
        outputs = (("train_set", kept if split == "train" else rows), ("finished_only", kept), ("flagged", flagged))
        for name, chosen in outputs:
            (args.output / name).mkdir(parents=True, exist_ok=True)
            (args.output / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chosen))
        print(f"{split}: {len(kept)} of {len(rows)} rankings keep two or more untied finished responses")


if __name__ == "__main__":
    main()
