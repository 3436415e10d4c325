"""InstructGPT step 2 (data): sample K responses per prompt from the SFT policy and rank them with a labeler.

Run on the embedded default (after `make sft`):

    make collect
    python recipes/collect.py --config recipes/smollm2-135m/collect/config_k4.yaml

Writes `rankings/{train,test}.jsonl` (K-way rankings, what `recipes/rm.py` trains on) and `pairs/{train,test}.jsonl`
(TRL's prompt/chosen/rejected format) under `output_dir`. The labeler is chosen by name (`--labeler simulated`);
register another in `instructrl.labeler.LABELERS`.
"""

import time
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig

from instructrl.cli import run_recipe
from instructrl.comparisons import distinct, rank_responses, write_comparisons
from instructrl.configs import CollectConfig, expand_path
from instructrl.data.loading import load_data, take
from instructrl.errors import DataError
from instructrl.generation import load_policy, require_adapter, sample_responses
from instructrl.labeler import get_labeler
from instructrl.reward import validate_prompts
from instructrl.runs import announce, check_output_dir, finish_stage, prepare_logging, start_stage, write_json


def main(args: CollectConfig, model_args: ModelConfig) -> dict:
    prepare_logging()
    output_dir = Path(expand_path(args.output_dir))
    check_output_dir(output_dir, "collect")
    labeler = get_labeler(args.labeler)
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
    rankings = [rank_responses(labeler, p, r) for p, r in groups if len(r) >= 2]
    if not rankings:
        raise DataError(
            "Every prompt's sampled responses were identical, so there is nothing to compare. Raise `temperature` or "
            "`num_responses`."
        )
    counts = write_comparisons(output_dir, rankings, args.test_fraction, args.seed)
    best = [max(r["scores"]) for r in rankings]
    all_scores = [s for r in rankings for s in r["scores"]]
    summary = {
        **counts,
        "num_responses": args.num_responses,
        "prompts_without_two_distinct_responses": len(groups) - len(rankings),
        "labeler": args.labeler,
        "mean_labeler_score": sum(all_scores) / len(all_scores),
        "mean_best_of_k_score": sum(best) / len(best),
        "seconds": round(time.time() - start, 1),
    }
    write_json(output_dir / "summary.json", summary)
    finish_stage(output_dir, "collect")
    announce("Comparison collection", output_dir, summary)
    return summary


if __name__ == "__main__":
    run_recipe(main, (CollectConfig, ModelConfig))
