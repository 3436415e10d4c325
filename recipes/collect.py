"""InstructGPT step 2 (data): sample K responses per prompt from the SFT policy and rank them with a labeler.

Run on the embedded default (after `make sft`):

    make collect
    python recipes/collect.py --config recipes/smollm2-135m/collect/config_k4.yaml

Writes `rankings/{train,test}.jsonl` (K-way rankings, what `recipes/rm.py` trains on), `pairs/{train,test}.jsonl`
(TRL's prompt/chosen/rejected format) and the instruction-flip probe `probes/flip.jsonl` under `output_dir`; the
summary gives the share of comparison pairs each labeler criterion decides. The labeler is chosen by name
(`--labeler simulated`); register another in `instructrl.labeler.LABELERS`. `--labeler human`
(`make collect LABELER=human`) writes the responses as tasks for people to rank in `make label` instead (see
`instructrl.labeling`).
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import time
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig

from instructrl.cli import run_recipe
from instructrl.comparisons import (
    count_rankings,
    distinct,
    flip_probe,
    flip_rankings,
    mark_finished,
    rank_responses,
    read_sampled,
    sibling_rankings,
    split_by_prompt,
    write_comparisons,
    write_jsonl,
)
from instructrl.configs import CollectConfig, expand_path
from instructrl.data.loading import load_data, message_text, take
from instructrl.data.rows import validate_prompts
from instructrl.errors import DataError, OutputDirError
from instructrl.generation import load_policy, sample_responses_with_ends, sampling_workers
from instructrl.labeler import SimulatedLabeler, decided_by, get_labeler
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
    if human:
        warn_programmatic_only(args)
    start = time.time()
    if args.responses_from:
        train_groups, test_groups, cut_off = rerank_source(args, output_dir)
        start_stage(output_dir, "collect")
    else:
        train_groups, test_groups, cut_off = sample_groups(args, model_args, output_dir)
    groups = train_groups + test_groups
    if human:
        summary = write_tasks(
            output_dir, [p for p, _ in groups], [r for _, r in groups], args.test_fraction, args.seed
        )
        TaskStore(output_dir).write_rankings()  # empty until people rank: no stale rankings for `make rm` to read
        write_jsonl(output_dir / "probes" / "flip.jsonl", [])  # the probe needs a programmatic labeler
    else:
        (output_dir / TASKS_FILE).unlink(missing_ok=True)  # tasks of an earlier human collection no longer apply
        summary = rank_and_write(args, labeler, train_groups, test_groups, output_dir, cut_off)
    summary.update(
        num_responses=max(len(r) for _, r in groups) if args.responses_from else args.num_responses,
        responses_from=args.responses_from,
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


def sample_groups(args: CollectConfig, model_args: ModelConfig, output_dir: Path) -> tuple[list, list, set[str]]:
    """Samples K responses for every comparison and test prompt with the SFT policy: `(train groups, test groups,
    cut-off texts)`, groups as `(prompt, distinct responses)`."""
    what = f"comparison prompt ('{args.prompts_dataset}', split '{args.prompts_split}')"
    prompts = validate_prompts(take(load_data(args.prompts_dataset, args.prompts_split), args.num_prompts), what)
    test_prompts = []
    if args.test_prompts_split:
        what = f"test prompt ('{args.prompts_dataset}', split '{args.test_prompts_split}')"
        data = take(load_data(args.prompts_dataset, args.test_prompts_split), args.num_test_prompts)
        test_prompts = list(validate_prompts(data, what)["prompt"])
    require_adapter(expand_path(args.sft_adapter_path), "SFT", "make sft")

    set_seed(args.seed)
    model, tokenizer = load_policy(model_args, expand_path(args.sft_adapter_path), args.trust_remote_code)
    start_stage(output_dir, "collect")
    all_prompts = list(prompts["prompt"]) + test_prompts
    sampled = sample_responses_with_ends(
        model,
        tokenizer,
        all_prompts,
        num_samples=args.num_responses,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        workers=sampling_workers(args.sampling_workers, model),
    )
    groups = [(p, distinct(r)) for p, (r, _) in zip(all_prompts, sampled, strict=True)]
    cut_off = {text for texts, ended in sampled for text, end in zip(texts, ended, strict=True) if not end}
    if not any(len(r) >= 2 for _, r in groups):
        raise DataError(
            "Every prompt's sampled responses were identical, so there is nothing to compare. Raise `temperature` or "
            "`num_responses`."
        )
    return groups[: len(prompts)], groups[len(prompts) :], cut_off


def rerank_source(args: CollectConfig, output_dir: Path) -> tuple[list, list, set[str] | None]:
    """The responses of the earlier collection `responses_from` names, to rank again without sampling (its train and
    test prompts as they were split); never the folder being written, whose rankings would be replaced while read."""
    source = Path(expand_path(args.responses_from))
    if source.resolve() == output_dir.resolve():
        raise OutputDirError(
            f"`responses_from` and `output_dir` are the same folder ('{source}'): ranking again there would replace "
            "the rankings it reads. Write to another `output_dir`."
        )
    return read_sampled(source)


def rank_and_write(
    args: CollectConfig,
    labeler,
    train_groups: list,
    test_groups: list,
    output_dir: Path,
    cut_off: set[str] | None = None,
) -> dict:
    """Ranks the sampled responses, adds the sibling and count re-rankings and the flip probe, writes them; returns
    counts. With `cut_off` (the texts of the responses sampling cut off at `max_new_tokens`), every ranking row says
    which of its responses ended (`mark_finished`)."""
    rankings = [rank_responses(labeler, p, r) for p, r in train_groups if len(r) >= 2]
    if test_groups:
        train, test = rankings, [rank_responses(labeler, p, r) for p, r in test_groups if len(r) >= 2]
    else:
        train, test = split_by_prompt(rankings, args.test_fraction, args.seed)
        test_groups = [(row["prompt"], row["responses"]) for row in test]
    originals = train + test
    train_prompts = {message_text(row["prompt"]) for row in train}
    own = [(p, r) for p, r in train_groups if message_text(p) in train_prompts]
    reranked = sibling_rankings(labeler, own, args.sibling_reranks, args.seed) if args.sibling_reranks else []
    recounted = count_rankings(labeler, own, args.count_reranks, args.seed) if args.count_reranks else []
    flipped = flip_rankings(labeler, own, args.flip_pairs, args.seed) if args.flip_pairs else []
    written = train + reranked + recounted + flipped
    if cut_off is not None:
        written, test = mark_finished(written, cut_off), mark_finished(test, cut_off)
    summary = write_comparisons(output_dir, written, test)
    if cut_off is not None:
        summary["cut_off_responses"] = sum(
            not flag for row in mark_finished(originals, cut_off) for flag in row["finished"]
        )
    probe = flip_probe(labeler, test_groups, args.flip_probe_size, args.seed) if args.flip_probe_size else []
    write_jsonl(output_dir / "probes" / "flip.jsonl", probe)
    all_scores = [s for r in originals for s in r["scores"]]
    summary.update(
        sibling_rankings=len(reranked),
        count_rankings=len(recounted),
        flip_training_items=len(flipped) // 2,
        flip_probe_items=len(probe),
        mean_labeler_score=sum(all_scores) / len(all_scores),
        mean_best_of_k_score=sum(max(r["scores"]) for r in originals) / len(originals),
        # Prompts whose sampled responses the labeler scores all alike: sampled, but no pair to learn from.
        tied_prompts=sum(len(set(r["scores"])) == 1 for r in originals),
    )
    if isinstance(labeler, SimulatedLabeler):
        texts = [{**row, "prompt": message_text(row["prompt"])} for row in originals]
        summary["pairs_decided_by"] = {k: round(v, 4) for k, v in decided_by(labeler, texts).items()}
    return summary


def warn_programmatic_only(args: CollectConfig) -> None:
    """People rank each prompt's own responses; the settings that need a labeler to re-rank are skipped, said once."""
    names = ("sibling_reranks", "count_reranks", "flip_pairs", "flip_probe_size")
    skipped = [f"{name}: {getattr(args, name)}" for name in names if getattr(args, name)]
    if skipped:
        print(
            f"[instructrl] With `labeler: human` these settings are skipped ({', '.join(skipped)}): sibling "
            "and count re-rankings, flip items and the flip probe need a programmatic labeler to order every pair. "
            "People rank each prompt's own responses.",
            flush=True,
        )


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
