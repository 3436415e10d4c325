"""Where does PPO's proxy gain go? The RM score change of trained policies against SFT, by prompts and decoding.

    python bench/proxy_transfer.py --run ~/.cache/instructrl/outputs/smollm2-135m
    python bench/proxy_transfer.py --sft DIR --rm DIR --policy ppo=DIR --policy ppo_ptx=DIR --num-prompts 64

PPO's training curve (`objective/scores`) is the RM score of *sampled* responses (the rollouts' temperature) to
*training* prompts; its held-out check (`ppo_summary.json`) is the RM score of *greedy* responses to *held-out*
prompts. When the first rises and the second does not, this script says which of the two differences the gain is
lost in: for each policy, the paired per-prompt RM score change against the SFT policy (mean, 95% interval, RM win
rate, and both policies' mean response length in tokens) in the four cells {training prompts (`ppo` split),
held-out prompts (`eval` split)} x {greedy, sampled}. Sampled cells average `--samples` responses per prompt, each
policy sampling from the same random state. Only the reward model judges here: no labeler, so it is a validation
signal a user without a gold labeler has too.
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import argparse
import json
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig

from instructrl.data.loading import load_data, take
from instructrl.evaluation import EvalModels, mean_response_tokens, mean_reward_per_prompt
from instructrl.generation import sample_responses
from instructrl.modeling import load_base_model, load_tokenizer
from instructrl.stats import mean_ci, win_rate
from policy_args import add_policy_args, resolve_run

PROMPT_SETS = {"training": "ppo", "held-out": "eval"}


def rm_scores(models: EvalModels, tokenizer, name: str, prompts: list, args: argparse.Namespace, greedy: bool):
    """One RM score per prompt (of the greedy response, or the mean over `args.samples` sampled ones), and the
    responses' mean length in tokens."""
    set_seed(args.seed)
    responses = sample_responses(
        models.policy(name),
        tokenizer,
        prompts,
        num_samples=1 if greedy else args.samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        do_sample=not greedy,
    )
    scores = mean_reward_per_prompt(models.reward_model(), tokenizer, prompts, responses, args.batch_size)
    return scores, mean_response_tokens(tokenizer, responses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_policy_args(parser, "a pipeline output root: its sft, rm, ppo and ppo_ptx directories")
    parser.add_argument("--policy", action="append", default=[], help="name=adapter_dir (repeatable)")
    parser.add_argument("--samples", type=int, default=2)
    args = parser.parse_args()
    policies = dict(entry.split("=", 1) for entry in args.policy)
    if args.run is not None:
        policies = policies or {name: str(args.run / name) for name in ("ppo", "ppo_ptx")}
    if not policies:
        parser.error("give --run, or at least one --policy name=dir")
    resolve_run(parser, args)

    tokenizer = load_tokenizer(args.model, None, False, "left")
    base = load_base_model(ModelConfig(model_name_or_path=args.model, dtype="auto"), tokenizer)
    models = EvalModels(base, {"sft": args.sft, **{k: Path(v) for k, v in policies.items()}}, args.rm)
    results: dict = {}
    print(
        "| policy | prompts | decoding | RM change vs SFT (95% CI) | RM win rate | tokens, SFT -> policy |\n"
        "|---|---|---|---|---|---|"
    )
    for prompt_set, split in PROMPT_SETS.items():
        prompts = list(take(load_data("builtin:prompts", split), args.num_prompts)["prompt"])
        for decoding in ("greedy", "sampled"):
            sft, sft_tokens = rm_scores(models, tokenizer, "sft", prompts, args, decoding == "greedy")
            for name in policies:
                scores, tokens = rm_scores(models, tokenizer, name, prompts, args, decoding == "greedy")
                change = mean_ci([a - b for a, b in zip(scores, sft, strict=True)])
                won = win_rate(scores, sft)
                results[f"{name}/{prompt_set}/{decoding}"] = {
                    "change": change,
                    "win_rate": won,
                    "response_tokens": {"sft": sft_tokens, name: tokens},
                }
                print(
                    f"| {name} | {prompt_set} | {decoding} | {change['mean']:+.3f} ± {change['ci95']:.3f} | "
                    f"{won['rate']:.2f} | {sft_tokens:.1f} -> {tokens:.1f} |",
                    flush=True,
                )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
