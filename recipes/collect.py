"""InstructGPT step 2 (data): sample K responses per prompt from the SFT policy and rank them with a labeler.

Run on the embedded default (after `make sft`):

    make collect
    python recipes/collect.py --config recipes/smollm2-135m/collect/config_k4.yaml

Writes `rankings/{train,test}.jsonl` (K-way rankings, what `recipes/rm.py` trains on) and `pairs/{train,test}.jsonl`
(TRL's prompt/chosen/rejected format) under `output_dir`. The labeler is chosen by name (`--labeler simulated`);
register another in `instructrl.labeler.LABELERS`. `--labeler human` (`make collect LABELER=human`) writes the
responses as tasks for people to rank in `make label` instead (see `instructrl.labeling`).
"""

import time
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig

from instructrl.cli import run_recipe
from instructrl.comparisons import distinct, rank_responses, write_comparisons
from instructrl.configs import CollectConfig, expand_path
from instructrl.data.loading import load_data, take
from instructrl.data.rows import validate_prompts
from instructrl.errors import DataError, OutputDirError
from instructrl.generation import load_policy, sample_responses
from instructrl.labeler import get_labeler
from instructrl.labeling import HUMAN, LOG_FILE, TASKS_FILE, TaskStore, write_tasks
from instructrl.runs import (
    announce,
    check_output_dir,
    finish_stage,
    overwrite_requested,
    prepare_logging,
    require_adapter,
    start_stage,
    write_json,
)


def main(args: CollectConfig, model_args: ModelConfig) -> dict:
    prepare_logging()
    output_dir = Path(expand_path(args.output_dir))
    check_output_dir(output_dir, "collect")
    protect_human_rankings(output_dir)
    human = args.labeler == HUMAN
    labeler = None if human else get_labeler(args.labeler)
    what = f"comparison prompt ('{args.prompts_dataset}', split '{args.prompts_split}')"
    prompts = validate_prompts(take(load_data(args.prompts_dataset, args.prompts_split), args.num_prompts), what)
    require_adapter(expand_path(args.sft_adapter_path), "SFT", "make sft")

    set_seed(args.seed)
    start = time.time()
    model, tokenizer = load_policy(model_args, expand_path(args.sft_adapter_path), args.trust_remote_code)
    start_stage(output_dir, "collect")
    samples = sample_responses(
        model,
        tokenizer,
        prompts["prompt"],
        num_samples=args.num_responses,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
    )
    groups = [(p, distinct(r)) for p, r in zip(prompts["prompt"], samples, strict=True)]
    if not any(len(r) >= 2 for _, r in groups):
        raise DataError(
            "Every prompt's sampled responses were identical, so there is nothing to compare. Raise `temperature` or "
            "`num_responses`."
        )
    if human:
        summary = write_tasks(
            output_dir, [p for p, _ in groups], [r for _, r in groups], args.test_fraction, args.seed
        )
        TaskStore(output_dir).write_rankings()  # empty until people rank: no stale rankings for `make rm` to read
    else:
        (output_dir / TASKS_FILE).unlink(missing_ok=True)  # tasks of an earlier human collection no longer apply
        rankings = [rank_responses(labeler, p, r) for p, r in groups if len(r) >= 2]
        summary = write_comparisons(output_dir, rankings, args.test_fraction, args.seed)
        all_scores = [s for r in rankings for s in r["scores"]]
        summary["mean_labeler_score"] = sum(all_scores) / len(all_scores)
        summary["mean_best_of_k_score"] = sum(max(r["scores"]) for r in rankings) / len(rankings)
    summary.update(
        num_responses=args.num_responses,
        prompts_without_two_distinct_responses=sum(len(r) < 2 for _, r in groups),
        labeler=args.labeler,
        seconds=round(time.time() - start, 1),
    )
    write_json(output_dir / "summary.json", summary)
    finish_stage(output_dir, "collect")
    announce("Comparison collection", output_dir, summary)
    if human:
        print(f"[instructrl] {summary['tasks']} tasks wait for people to rank them: run `make label`.", flush=True)
    return summary


def protect_human_rankings(output_dir: Path) -> None:
    """Refuse to collect over rankings people made (unless `--overwrite`): they cannot be sampled again."""
    log = output_dir / LOG_FILE
    if log.is_file() and log.stat().st_size > 0 and not overwrite_requested():
        raise OutputDirError(
            f"'{output_dir}' holds rankings made by people ('{log}'). Collecting there would replace their tasks. "
            "Choose another `output_dir`, or pass `--overwrite`."
        )


if __name__ == "__main__":
    run_recipe(main, (CollectConfig, ModelConfig))
