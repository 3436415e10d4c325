"""Evaluate policies on held-out prompts: labeler score, win rate against SFT, KL, alignment tax, length, repetition.

Run on the embedded default (after `make ppo` for both variants; missing policies are an error):

    make eval
    python recipes/eval.py --config recipes/smollm2-135m/eval/config_default.yaml

Any model and prompts work: list the policies as `name=adapter_dir` (a bare name is the base model), point
`reward_model_path` at an RM adapter (or leave it empty to skip RM scores), and set `prompts_dataset`. Writes
`metrics.json`, `metrics.md` and `samples.jsonl` under `output_dir`; with `ppo_runs` set it also draws the plots and
writes `report.md` (see `instructrl.report`).
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import json
import time
from dataclasses import asdict
from pathlib import Path

from transformers import set_seed
from trl import ModelConfig

from instructrl.cli import run_recipe
from instructrl.configs import EvalConfig, expand_path
from instructrl.data.loading import load_data, message_text, take
from instructrl.data.rows import encode_prompt, encode_response, validate_prompts
from instructrl.errors import ConfigError
from instructrl.evaluation import EvalModels, add_comparisons, evaluate_policy, parse_policies
from instructrl.generation import sample_responses, sampling_workers
from instructrl.labeler import get_labeler, instruction_kinds
from instructrl.modeling import load_base_model, load_tokenizer
from instructrl.ptx import PretrainingStream
from instructrl.report import markdown_table, write_report
from instructrl.reward import BY_CRITERION_FILE
from instructrl.runs import (
    announce,
    check_output_dir,
    finish_stage,
    prepare_logging,
    require_adapter,
    start_stage,
    write_json,
)

# The command that trains each policy of the default `policies` list (others: the user's own stages).
MAKE_TARGETS = {"sft": "make sft", "ppo": "make ppo PPO_VARIANT=ppo", "ppo_ptx": "make ppo"}


def main(args: EvalConfig, model_args: ModelConfig) -> dict:
    prepare_logging()
    output_dir = Path(expand_path(args.output_dir))
    check_output_dir(output_dir, "eval")
    policies = parse_policies(args.policies)
    for name, adapter in policies.items():
        require_adapter(str(adapter) if adapter else None, f"'{name}' policy", MAKE_TARGETS.get(name))
    reward_adapter = require_adapter(expand_path(args.reward_model_path), "reward-model", "make rm")
    if args.reference is not None and args.reference not in policies:
        raise ConfigError(f"`reference` '{args.reference}' is not one of `policies` ({', '.join(policies)}).")
    labeler = get_labeler(args.labeler)
    what = f"evaluation prompt ('{args.prompts_dataset}', split '{args.prompts_split}')"
    prompts = validate_prompts(take(load_data(args.prompts_dataset, args.prompts_split), args.num_prompts), what)
    tokenizer = load_tokenizer(
        model_args.model_name_or_path, model_args.model_revision, args.trust_remote_code, "left"
    )
    heldout_ids: list[list[int]] = []
    if args.ptx_dataset_name:
        heldout = take(load_data(args.ptx_dataset_name, args.ptx_dataset_split), args.num_ptx_texts)
        # Tokenized exactly as PPO-ptx reads its pretraining text (column check, truncation, too-short dropped).
        heldout_ids = PretrainingStream(heldout, tokenizer, args.ptx_text_field, args.ptx_max_length).sequences

    base = load_base_model(model_args, tokenizer, trust_remote_code=args.trust_remote_code)
    models = EvalModels(base, policies, reward_adapter)
    start_stage(output_dir, "eval")
    per_prompt = args.samples_per_prompt
    # Every policy's responses come prompt by prompt, `per_prompt` consecutive ones for each prompt.
    prompt_rows = [p for p in prompts["prompt"] for _ in range(per_prompt)]
    prompt_ids = [encode_prompt(tokenizer, p) for p in prompt_rows]

    results, samples = {}, []
    workers = sampling_workers(args.sampling_workers, base)
    for name in policies:
        set_seed(args.seed)  # every policy answers the same prompts from the same seeds (`seed=` seeds each batch)
        clock = time.perf_counter()
        responses = [
            response
            for own in sample_responses(
                models.policy(name),
                tokenizer,
                prompts["prompt"],
                num_samples=per_prompt,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                top_p=args.top_p,
                batch_size=args.batch_size,
                seed=args.seed,
                workers=workers,
            )
            for response in own
        ]
        sampling_seconds = time.perf_counter() - clock
        scores = [labeler.score(message_text(p), r) for p, r in zip(prompt_rows, responses, strict=True)]
        # Per-criterion scores where the labeler has criteria (the simulated one): where a policy gains or loses.
        criteria = (
            [labeler.criteria(message_text(p), r) for p, r in zip(prompt_rows, responses, strict=True)]
            if hasattr(labeler, "criteria")
            else None
        )
        response_ids = [encode_response(tokenizer, r) for r in responses]
        results[name] = evaluate_policy(
            models,
            name,
            tokenizer,
            prompt_ids,
            responses,
            response_ids,
            scores,
            args.reference,
            heldout_ids,
            args.batch_size,
            criteria,
            per_prompt,
        )
        results[name]["seconds"] = {"sampling": round(sampling_seconds, 1), **results[name]["seconds"]}
        samples += [
            {"policy": name, "prompt": p, "sample": i % per_prompt, "response": r, "labeler_score": s}
            for i, (p, r, s) in enumerate(zip(prompt_rows, responses, scores, strict=True))
        ]
        timing = ", ".join(f"{k} {v:.0f}s" for k, v in results[name]["seconds"].items())
        score = results[name]["labeler_score"]["mean"]
        print(f"[instructrl] eval: {name}: labeler score {score:.3f} ({timing})", flush=True)
    kinds = [instruction_kinds(message_text(p)) for p in prompts["prompt"]]
    add_comparisons(results, args.reference, kinds, per_prompt)

    metrics = {
        "config": asdict(args),
        "num_prompts": len(prompts),
        "samples_per_prompt": per_prompt,
        "reference": args.reference,
        "policies": {name: {k: v for k, v in r.items() if k != "per_response"} for name, r in results.items()},
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "metrics.json", metrics)
    (output_dir / "metrics.md").write_text(markdown_table(metrics["policies"], args.reference))
    (output_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    outputs = {"metrics": str(output_dir / "metrics.json")}
    if args.ppo_runs:
        rm_results = Path(str(reward_adapter)) / "eval_results.json" if reward_adapter else None
        by_criterion = Path(str(reward_adapter)) / BY_CRITERION_FILE if reward_adapter else None
        comparisons = Path(expand_path(args.comparisons_path)) / "summary.json" if args.comparisons_path else None
        report = write_report(output_dir, metrics, args.ppo_runs, rm_results, comparisons, by_criterion)
        outputs["report"] = str(report)
    finish_stage(output_dir, "eval")
    print(markdown_table(metrics["policies"], args.reference), flush=True)
    announce("Evaluation", output_dir, outputs)
    return metrics


if __name__ == "__main__":
    run_recipe(main, (EvalConfig, ModelConfig))
