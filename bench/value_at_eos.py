"""What does a value function that starts as the reward model pay for ending a response?

    python bench/value_at_eos.py --run ~/.cache/instructrl/outputs/smollm2-135m
    python bench/value_at_eos.py --sft DIR --rm DIR --num-prompts 64

InstructGPT, and PPO's default here (`value_head_init: reward`), start the value function as the reward model: its
value of a partial response is the reward model's score of that unfinished text. This script samples the SFT
policy's responses to training prompts as PPO's rollouts are sampled (its temperature and length) and reads the
reward model at every position of each finished response: the score at the end-of-turn token (the reward PPO gets),
at the token before it (the value of the state in which the policy chooses to end), and the mean over all prefixes.
The difference between the first two is the temporal-difference error, and so about the advantage, of the
end-of-turn token at PPO's first update. When it is large and positive in nearly every response, ending is what the
first updates reinforce everywhere, whatever the response says. Only the reward model and the SFT policy are used.
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import argparse
import json

import torch
from transformers import set_seed
from trl import ModelConfig
from trl.experimental.utils import get_reward

from instructrl.data.loading import load_data, take
from instructrl.data.rows import encode_prompt, encode_response
from instructrl.evaluation import EvalModels
from instructrl.generation import sample_responses
from instructrl.modeling import load_base_model, load_tokenizer
from instructrl.stats import mean_ci
from policy_args import add_policy_args, resolve_run


@torch.no_grad()
def scores_along(reward_model, prompt_ids: list[int], response_ids: list[int], pad_token_id: int) -> torch.Tensor:
    """The reward model's score after each token of `response_ids` (the last one is the end-of-turn token)."""
    ids = torch.tensor([prompt_ids + response_ids + [pad_token_id]], device=next(reward_model.parameters()).device)
    per_position, _, _ = get_reward(reward_model, ids, pad_token_id, len(prompt_ids))
    start = len(prompt_ids)
    return per_position[0, start : start + len(response_ids), 0].float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_policy_args(parser, "a pipeline output root: its sft and rm directories")
    parser.add_argument("--split", default="ppo", help="prompt split of builtin:prompts (PPO's: ppo)")
    args = parser.parse_args()
    resolve_run(parser, args)

    tokenizer = load_tokenizer(args.model, None, False, "left")
    base = load_base_model(ModelConfig(model_name_or_path=args.model, dtype="auto"), tokenizer)
    models = EvalModels(base, {"sft": args.sft}, args.rm)
    prompts = list(take(load_data("builtin:prompts", args.split), args.num_prompts)["prompt"])
    set_seed(args.seed)
    responses = sample_responses(
        models.policy("sft"),
        tokenizer,
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
    )
    at_end, before_end, prefixes, jumps, lengths, cut_off = [], [], [], [], [], 0
    for prompt, (text,) in zip(prompts, responses, strict=True):
        response_ids = encode_response(tokenizer, text)
        if len(response_ids) > args.max_new_tokens:  # reached the limit: it has no end-of-turn token of its own
            cut_off += 1
            continue
        scores = scores_along(
            models.reward_model(), encode_prompt(tokenizer, prompt), response_ids, tokenizer.pad_token_id
        )
        at_end.append(scores[-1].item())
        before_end.append(scores[-2].item() if len(scores) > 1 else float("nan"))
        prefixes.append(scores[:-1].mean().item() if len(scores) > 1 else float("nan"))
        jumps.append(at_end[-1] - before_end[-1])
        lengths.append(len(response_ids))
    if not jumps:
        raise SystemExit("No sampled response ended within --max-new-tokens: raise it.")
    jump = mean_ci(jumps)
    results = {
        "responses": len(prompts),
        "cut_off": cut_off,
        "response_tokens": sum(lengths) / len(lengths),
        "score_at_end": mean_ci(at_end),
        "score_before_end": mean_ci(before_end),
        "score_over_prefixes": mean_ci(prefixes),
        "jump_at_end": jump,
        "jump_positive_share": sum(j > 0 for j in jumps) / len(jumps),
    }
    print(
        f"{len(jumps)} finished SFT samples ({cut_off} of {len(prompts)} cut off at {args.max_new_tokens} tokens), "
        f"{results['response_tokens']:.1f} tokens on average\n"
        f"RM score at the end-of-turn token (the reward): {results['score_at_end']['mean']:+.3f}\n"
        f"RM score at the token before it (the initial value of ending): {results['score_before_end']['mean']:+.3f}\n"
        f"RM score over all unfinished prefixes: {results['score_over_prefixes']['mean']:+.3f}\n"
        f"jump at the end-of-turn token: {jump['mean']:+.3f} ± {jump['ci95']:.3f}, positive in "
        f"{results['jump_positive_share']:.0%} of responses"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
