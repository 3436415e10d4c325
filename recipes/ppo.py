"""InstructGPT step 3: PPO (or PPO-ptx) of the SFT policy against the reward model, on one shared base model.

Run on the embedded default (after `make sft` and `make rm`):

    make ppo                      # PPO-ptx, the InstructGPT recipe (gamma = 27.8, 8 pretraining sequences/episode)
    make ppo PPO_VARIANT=ppo      # plain PPO, the ablation
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/ppo.py \
        --config recipes/smollm2-135m/ppo/config_ppo_ptx.yaml

Policy, reference, reward and value are LoRA adapters of one base model (4-bit with `load_in_4bit: true`): the
policy starts from the SFT adapter, the reference is the frozen SFT adapter (KL penalty `kl_coef`), the reward is the
RM adapter with its score head and normalization bias, and the value function starts from the reward model. With
`reward_adapters` the reward is a conservative ensemble of several reward models, each one more adapter of the base.
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import json
import logging

from trl import ModelConfig, get_peft_config

from instructrl.cli import run_recipe
from instructrl.configs import PPOScriptArguments, expand_path
from instructrl.data.loading import load_data, load_train_eval
from instructrl.data.rows import encode_prompt, validate_prompts
from instructrl.errors import MissingStageError
from instructrl.gold import GoldScorer
from instructrl.labeler import get_labeler
from instructrl.modeling import load_base_model, load_tokenizer
from instructrl.ppo import InstructPPOConfig, InstructPPOTrainer
from instructrl.ptx import PretrainingStream
from instructrl.report import HELDOUT_SUMMARIES, describe_heldout
from instructrl.runs import (
    announce,
    finish_stage,
    prepare_run,
    require_adapter,
    resolve_resume,
    start_stage,
    write_json,
)
from instructrl.shared_base import SharedBase
from instructrl.stats import linear_trend
from instructrl.threads import ThreadShare

logger = logging.getLogger("instructrl")


# Curves whose trend over training is summarized (slope per 1000 episodes with a 95% interval).
TRENDS = ("objective/scores", "gold/labeler_score", "objective/kl")


def summarize(log_history: list[dict]) -> dict:
    """First and last values of the curves users watch (RM score, gold score, KL, ptx loss, rollouts cut off at
    `response_length`), and their trends."""
    steps = [log for log in log_history if "objective/scores" in log]
    summary = {"updates": len(steps)}
    for key in (*TRENDS, "objective/rlhf_reward", "ptx/lm_loss", "loss/value_avg", "rollouts/truncated_share"):
        values = [log[key] for log in steps if key in log]
        if values:
            head = values[: max(1, len(values) // 4)]
            tail = values[-max(1, len(values) // 4) :]
            summary[key] = {
                "first_quarter_mean": sum(head) / len(head),
                "last_quarter_mean": sum(tail) / len(tail),
                "max": max(values),
            }
        points = [(log["episode"] / 1000, log[key]) for log in steps if key in log and "episode" in log]
        if key in TRENDS and points:
            summary[key]["slope_per_1000_episodes"] = linear_trend(*zip(*points, strict=True))
    return summary


def main(script_args: PPOScriptArguments, training_args: InstructPPOConfig, model_args: ModelConfig):
    output_dir = prepare_run(training_args, "ppo")
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    if training_args.gradient_checkpointing:
        logger.warning(
            "Gradient checkpointing is off for PPO: with adapters sharing one base it gives wrong gradients."
        )
        training_args.gradient_checkpointing = False
    sft_adapter = require_adapter(expand_path(training_args.sft_model_path), "SFT", "make sft")
    if not training_args.reward_model_path:
        raise MissingStageError("`reward_model_path` is not set: point it at the output of `make rm`.")
    reward_adapter = require_adapter(expand_path(training_args.reward_model_path), "reward-model", "make rm")
    more_rewards = [
        require_adapter(expand_path(p), "reward-model", "make rm") for p in training_args.reward_adapters or []
    ]
    prompts, eval_prompts = load_train_eval(script_args, validate_prompts, "PPO prompt")
    labeler = get_labeler(training_args.gold_labeler) if training_args.gold_labeler else None
    ptx_data = None
    if training_args.ptx_coef > 0:
        ptx_data = load_data(training_args.ptx_dataset_name, training_args.ptx_dataset_split)

    tokenizer = load_tokenizer(
        model_args.model_name_or_path, model_args.model_revision, training_args.trust_remote_code, padding_side="left"
    )
    ptx_stream = None
    if ptx_data is not None:
        # Seeded per process by the trainer (seed + process index).
        ptx_stream = PretrainingStream(ptx_data, tokenizer, training_args.ptx_text_field, training_args.ptx_max_length)

    def tokenize(dataset):
        return dataset.map(
            lambda row: {"input_ids": encode_prompt(tokenizer, row["prompt"])}, remove_columns=dataset.column_names
        )

    train_dataset = tokenize(prompts)
    eval_dataset = tokenize(eval_prompts if eval_prompts is not None else prompts.select(range(min(8, len(prompts)))))
    base = load_base_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)
    shared = SharedBase(
        base,
        reward_adapter,
        sft_adapter,
        policy_lora=get_peft_config(model_args),
        more_reward_adapters=more_rewards,
        ensemble_method=training_args.reward_ensemble,
        ensemble_coef=training_args.reward_ensemble_coef,
        value_head_init=training_args.value_head_init,
        top_layers=training_args.train_top_layers,
    )

    gold_scorer = None if labeler is None else GoldScorer(labeler, tokenizer, prompts["prompt"])

    start_stage(output_dir, "ppo")
    trainer = InstructPPOTrainer(
        args=training_args,
        shared=shared,
        ptx_stream=ptx_stream,
        gold_scorer=gold_scorer,
        processing_class=tokenizer,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        callbacks=[ThreadShare()],  # cores handed over by `make pipeline JOBS=2` when the stage beside it finishes
    )
    if resume is not None:
        trainer.resume_from(resume)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    summary = summarize(trainer.state.log_history)
    if trainer.length_correction is not None:
        summary["length_correction"] = trainer.length_correction.to_dict()
    if training_args.score_heldout:
        held_out = list(eval_prompts["prompt"] if eval_prompts is not None else [])
        if held_out:
            logger.info(
                "Scoring greedy responses of the SFT and trained policies to %d held-out prompts", len(held_out)
            )
            summary["heldout_rm_score"] = trainer.score_heldout(held_out)
            if training_args.heldout_samples:
                logger.info("... and %d sampled responses per prompt of each", training_args.heldout_samples)
                summary["heldout_rm_score_sampled"] = trainer.score_heldout(held_out, training_args.heldout_samples)
        else:
            logger.warning("No evaluation prompts (`dataset_test_split`): the held-out RM score is skipped.")
    write_json(output_dir / "ppo_summary.json", summary)
    (output_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    finish_stage(output_dir, "ppo")
    extra = {k: v for k, v in summary.items() if k != "updates" and k not in HELDOUT_SUMMARIES}
    for key, responses in HELDOUT_SUMMARIES.items():
        if key in summary:
            label = "held-out RM score" + (", sampled" if responses == "sampled" else "")
            extra[label] = describe_heldout(summary[key], responses)
    announce("PPO" + ("-ptx" if training_args.ptx_coef > 0 else ""), output_dir, extra)
    return trainer


if __name__ == "__main__":
    run_recipe(main, (PPOScriptArguments, InstructPPOConfig, ModelConfig))
