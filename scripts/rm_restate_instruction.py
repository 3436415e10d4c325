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
is for reading its metrics, not for `make ppo` (docs/measurements.md, "2026-12-03 08:30 UTC").
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import importlib.util
from functools import partial
from pathlib import Path

from trl import ModelConfig, RewardConfig

import instructrl.reward as reward
from instructrl.cli import run_recipe
from instructrl.configs import RewardScriptArguments
from instructrl.data.rows import tokenize_comparisons

RM_RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "rm.py"


def restatement(tokenizer, prompt) -> list[int]:
    """Token ids of the instruction restated after the response (the last user message, or the whole text prompt)."""
    text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
    restated = f"\n<|im_start|>user\nThe instruction was: {text}<|im_end|>"
    return tokenizer(restated, add_special_tokens=False)["input_ids"]


def main() -> None:
    spec = importlib.util.spec_from_file_location("rm_recipe", RM_RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    recipe.tokenize_comparisons = lambda dataset, tokenizer, max_length: tokenize_comparisons(
        dataset, tokenizer, max_length, after_response=partial(restatement, tokenizer)
    )
    flip_probe_sequences = reward.flip_probe_sequences
    reward.flip_probe_sequences = lambda tokenizer, items: flip_probe_sequences(
        tokenizer, items, after_response=partial(restatement, tokenizer)
    )
    run_recipe(recipe.main, (RewardScriptArguments, RewardConfig, ModelConfig))


if __name__ == "__main__":
    main()
