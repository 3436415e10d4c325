"""Score reward models, one or the ensemble PPO would use, on held-out comparisons and the instruction-flip probe.

Run on the embedded default (after `make rm`; another RM output, e.g. `make rm` with another seed, joins as an
ensemble member):

    make rm-eval
    make rm-eval REWARD_ADAPTERS="~/.cache/instructrl/outputs/smollm2-135m/rm_seed7"
    python recipes/rm_eval.py --config recipes/smollm2-135m/rm_eval/config_default.yaml --reward_adapters DIR [DIR ...]

Prints and writes (`rm_eval.json`, `rm_eval.md` under `output_dir`) each member's held-out pairwise accuracy and
flip-probe accuracy and, with several members, the same for their conservative combination (`reward_ensemble`,
`reward_ensemble_coef`, as in the PPO config) and how the members' rewards correlate: the validation signals by which
to decide whether `reward_adapters` pays before PPO spends its time on it. Where the rankings record which responses
ended (`finished`, as `make collect` writes them), each row also gives the accuracy and length preference over pairs
of two finished responses: the pairs PPO's reward has to order. With `labeler: simulated` (the default config), a
second table gives each member's accuracy over the pairs each labeler criterion decides (word count, format,
keywords...): which parts of the instructions the reward model has learned to judge and which it orders by chance.
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

from pathlib import Path

import torch
from trl import ModelConfig

from instructrl.cli import run_recipe
from instructrl.configs import expand_path
from instructrl.data.loading import load_data
from instructrl.data.rows import validate_comparisons
from instructrl.errors import ConfigError, MissingStageError
from instructrl.labeler import get_labeler
from instructrl.modeling import load_base_model, load_tokenizer
from instructrl.reward import load_flip_probe, pair_deciders
from instructrl.reward_eval import (
    ENSEMBLE,
    RewardEvalConfig,
    RewardMembers,
    comparison_finished,
    comparison_groups,
    criterion_markdown,
    markdown,
    member_correlation,
    score_flip_probe,
    validation_table,
)
from instructrl.runs import (
    announce,
    check_output_dir,
    finish_stage,
    prepare_logging,
    require_adapter,
    start_stage,
    write_json,
)


def main(args: RewardEvalConfig, model_args: ModelConfig) -> dict:
    prepare_logging()
    output_dir = Path(expand_path(args.output_dir))
    check_output_dir(output_dir, "rm_eval")
    if not args.reward_model_path:
        raise MissingStageError("`reward_model_path` is not set: point it at the output of `make rm`.")
    if not args.dataset_name:
        raise ConfigError("`dataset_name` is not set: point it at held-out comparisons (`make collect`'s rankings).")
    paths = [args.reward_model_path, *args.reward_adapters]
    adapter_dirs = [require_adapter(expand_path(p), "reward-model", "make rm") for p in paths]
    what = f"held-out comparisons ('{args.dataset_name}', split '{args.dataset_split}')"
    dataset = validate_comparisons(load_data(args.dataset_name, args.dataset_split), what)
    probe = load_flip_probe(args.flip_probe) if args.flip_probe else []
    labeler = get_labeler(args.labeler) if args.labeler else None
    if labeler is not None and not hasattr(labeler, "deciding_criterion"):
        raise ConfigError(f"`labeler` {args.labeler!r} has no criteria to break the accuracy down by: set it to null.")
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision, args.trust_remote_code)
    base = load_base_model(model_args, tokenizer, trust_remote_code=args.trust_remote_code)
    members = RewardMembers(base, adapter_dirs)

    start_stage(output_dir, "rm_eval")
    pairs, scores, sizes = comparison_groups(dataset, tokenizer)
    rewards = members.score(pairs, tokenizer.pad_token_id, args.batch_size)
    flip = score_flip_probe(members, tokenizer, probe, args.batch_size)
    lengths = torch.tensor([len(response) for _, response in pairs])
    table = validation_table(
        rewards,
        scores,
        sizes,
        flip,
        members.names,
        args.reward_ensemble,
        args.reward_ensemble_coef,
        lengths,
        comparison_finished(dataset),
        pair_deciders(labeler, dataset, length_detail=True) if labeler is not None else None,
    )
    labels = dict(zip(members.names, paths, strict=True))
    labels[ENSEMBLE] = f"ensemble ({args.reward_ensemble}, coef {args.reward_ensemble_coef:g})"
    result = {
        "members": labels,
        "rows": table,
        "member_correlation": member_correlation(rewards),
        "dataset": args.dataset_name,
        "flip_probe": args.flip_probe,
    }
    write_json(output_dir / "rm_eval.json", result)
    text = markdown(table, labels)
    by_criterion = criterion_markdown(table, labels)
    if by_criterion:
        text += (
            "\nHeld-out accuracy by the labeler criterion that decides the pair (length by the prompt's length "
            "instruction):\n\n" + by_criterion
        )
    (output_dir / "rm_eval.md").write_text(text)
    finish_stage(output_dir, "rm_eval")
    print(text, flush=True)
    if len(paths) > 1:
        print(f"Correlation of the members' rewards on the held-out responses: {result['member_correlation']}")
    announce("Reward-model validation", output_dir)
    return result


if __name__ == "__main__":
    run_recipe(main, (RewardEvalConfig, ModelConfig))
