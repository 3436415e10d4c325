"""Experiment (not a pipeline option yet): the reward model reads the user's instruction a second time, after the
response, and its score is read at the end of that restatement instead of at the response's end-of-turn token.

Run from the repository root after `make sft` and `make collect` (the RM stage's own config and overrides):

```bash
python scripts/rm_restate_instruction.py --config recipes/smollm2-135m/rm/config_lora.yaml \
    --output_dir /tmp/rm_restate --report_to none
```

Each training and held-out sequence becomes `prompt + response + <eos>` followed by the tokens of
`"\\n<|im_start|>user\\nThe instruction was: {last user message}<|im_end|>"` (SmolLM2's chat markers), and the flip
probe is scored the same way; everything else is `recipes/rm.py` unchanged: the RM stage's held-out accuracy, length
preference and flip probe come out in `eval_results.json` as usual (`reward_normalization.json` is still read
without the restatement: ignore it). The idea: in a causal model the response tokens
cannot see what the instruction will be checked against, and the end-of-turn token has to carry both; restated
after the response, the instruction's own tokens (a number of words, a word to include, a phrase to begin with) can
attend back to the response. PPO and the evaluation still score `prompt + response` only, so an adapter trained here
is for reading its metrics, not for `make ppo` (README, "2026-12-03 07:30 UTC").
"""

import importlib.util
from pathlib import Path

from trl import ModelConfig, RewardConfig

import instructrl.reward as reward
from instructrl.cli import run_recipe
from instructrl.configs import RewardScriptArguments
from instructrl.data.rows import encode_prompt, encode_response

RM_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "rm.py"


def restatement(tokenizer, prompt) -> list[int]:
    """Token ids of the instruction restated after the response (the last user message, or the whole text prompt)."""
    text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    restated = f"\n<|im_start|>user\nThe instruction was: {text}<|im_end|>"
    return tokenizer(restated, add_special_tokens=False)["input_ids"]


def tokenize_restated(dataset, tokenizer, max_length):
    """`instructrl.data.rows.tokenize_comparisons` with the restatement appended to every response."""
    pairs = "chosen" in dataset.column_names

    def tokenize(row):
        responses = [row["chosen"], row["rejected"]] if pairs else row["responses"]
        scores = [1.0, 0.0] if pairs else [float(s) for s in row["scores"]]
        prompt_ids, suffix = encode_prompt(tokenizer, row["prompt"]), restatement(tokenizer, row["prompt"])
        sequences = [prompt_ids + encode_response(tokenizer, r) + suffix for r in responses]
        if max_length is not None:
            kept = [(s, c) for s, c in zip(sequences, scores, strict=True) if len(s) <= max_length]
            sequences, scores = [s for s, _ in kept], [c for _, c in kept]
        return {"sequences": sequences, "scores": scores}

    tokenized = dataset.map(tokenize, remove_columns=dataset.column_names, desc="Tokenizing restated comparisons")
    return tokenized.filter(lambda row: len(row["sequences"]) >= 2 and len(set(row["scores"])) > 1)


def restated_flip_probe(tokenizer, items):
    """`instructrl.reward.flip_probe_sequences` with each prompt's restatement after the response."""
    return [
        (encode_prompt(tokenizer, prompt), encode_response(tokenizer, response) + restatement(tokenizer, prompt))
        for item in items
        for prompt in item["prompts"]
        for response in item["responses"]
    ]


def main() -> None:
    spec = importlib.util.spec_from_file_location("rm_recipe", RM_RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    recipe.tokenize_comparisons = tokenize_restated
    reward.flip_probe_sequences = restated_flip_probe
    run_recipe(recipe.main, (RewardScriptArguments, RewardConfig, ModelConfig))


if __name__ == "__main__":
    main()
