"""InstructGPT step 2: train a reward model on ranked comparisons, as a LoRA adapter plus score head.

Run on the embedded default (after `make sft` and `make collect`; `make rm` runs both first if needed):

    make rm
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/rm.py \
        --config recipes/smollm2-135m/rm/config_lora.yaml

The adapter sits on the same base model as the policy, so PPO can attach it to the one shared base. The K responses
of a prompt form one batch element and the loss averages its C(K,2) pairs (InstructGPT); TRL's prompt/chosen/rejected
pairs are accepted as K=2. With `init_adapter` (the SFT output) the reward adapter starts from the SFT adapter's
LoRA weights, as InstructGPT starts its reward model from the SFT model. After training the script measures held-out
pairwise accuracy against the labeler and saves `reward_normalization.json`, the bias that makes the SFT
demonstrations score mean 0.
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

from trl import ModelConfig, RewardConfig

from instructrl.cli import run_recipe
from instructrl.configs import RewardScriptArguments
from instructrl.data.loading import load_data, load_train_eval, require_columns, take
from instructrl.data.rows import tokenize_comparisons, validate_comparisons
from instructrl.divergence import DivergenceGuard
from instructrl.errors import ConfigError
from instructrl.modeling import load_base_model, load_tokenizer
from instructrl.reward import (
    BY_CRITERION_FILE,
    NORMALIZATION_FILE,
    RankingCollator,
    RankingRewardTrainer,
    flip_probe_accuracy,
    labeler_deciders,
    load_flip_probe,
    load_init_adapter,
    pairwise_accuracy,
    reward_bias,
    reward_peft_config,
    train_top_layers,
    with_replay,
)
from instructrl.runs import announce, finish_stage, prepare_run, resolve_resume, start_stage, write_json
from instructrl.sft import validate_sft_dataset
from instructrl.threads import ThreadShare


def main(script_args: RewardScriptArguments, training_args: RewardConfig, model_args: ModelConfig):
    output_dir = prepare_run(training_args, "rm")
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    train_dataset, eval_dataset = load_train_eval(script_args, validate_comparisons, "reward-model")
    if script_args.replay_dataset_name:
        what = f"replayed reward-model training data ('{script_args.replay_dataset_name}')"
        replay = validate_comparisons(
            load_data(script_args.replay_dataset_name, script_args.dataset_train_split), what
        )
        train_dataset = with_replay(train_dataset, replay, script_args.replay_rankings, training_args.seed, what)
    probe = load_flip_probe(script_args.flip_probe) if script_args.flip_probe else None
    demonstrations = None
    if script_args.normalization_dataset_name:
        demonstrations = take(load_data(script_args.normalization_dataset_name), script_args.normalization_samples)
        what = f"normalization data ('{script_args.normalization_dataset_name}')"
        require_columns(demonstrations, [("prompt", "completion")], what)
        validate_sft_dataset(demonstrations, what)
    tokenizer = load_tokenizer(
        model_args.model_name_or_path, model_args.model_revision, training_args.trust_remote_code
    )
    train_tokens = tokenize_comparisons(train_dataset, tokenizer, training_args.max_length, keep_finished=True)
    eval_tokens = (
        None if eval_dataset is None else tokenize_comparisons(eval_dataset, tokenizer, None, keep_finished=True)
    )
    peft_config = reward_peft_config(model_args, script_args.init_adapter)
    if script_args.init_adapter and peft_config is None:
        raise ConfigError("`init_adapter` starts the reward adapter from the SFT one: set `use_peft: true`.")
    if script_args.train_top_layers is not None and peft_config is None:
        raise ConfigError("`train_top_layers` chooses which LoRA layers train: set `use_peft: true` (or it to null).")
    model = load_base_model(model_args, tokenizer, task="reward", trust_remote_code=training_args.trust_remote_code)
    batch_size = training_args.per_device_eval_batch_size

    start_stage(output_dir, "rm")
    trainer = RankingRewardTrainer(
        model=model,
        args=training_args,
        data_collator=RankingCollator(tokenizer.pad_token_id),
        train_dataset=train_tokens,
        eval_dataset=eval_tokens,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[DivergenceGuard(), ThreadShare()],
        length_decorrelation=script_args.length_decorrelation,
        share_prompt=script_args.share_prompt,
        lora_bf16_compute=script_args.lora_bf16_compute,
    )
    before = {}
    if script_args.init_adapter and resume is None:
        continued = load_init_adapter(trainer.model, script_args.init_adapter)
        if continued and eval_tokens is not None:  # a reward model continued: how it did on these pairs before
            accuracy = pairwise_accuracy(trainer.model, eval_tokens, tokenizer.pad_token_id, batch_size)
            before = {f"eval_before_{k}": accuracy[k] for k in ("pairwise_accuracy", "ci95_half_width")}
            trainer.log_metrics("eval", before)
    if script_args.train_top_layers is not None:
        train_top_layers(trainer.model, script_args.train_top_layers)
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)

    if eval_tokens is not None:
        deciders = labeler_deciders(eval_dataset)  # the simulated labeler's rankings: accuracy per criterion too
        held_out = pairwise_accuracy(trainer.model, eval_tokens, tokenizer.pad_token_id, batch_size, deciders)
        by_criterion = held_out.pop("by_criterion", None)
        if by_criterion is not None:
            write_json(output_dir / BY_CRITERION_FILE, by_criterion)
        held_out = {f"eval_{k}": v for k, v in held_out.items()} | before
        trainer.log_metrics("eval", held_out)
        trainer.save_metrics("eval", held_out)
        metrics.update(held_out)
    if probe:
        flip = {f"eval_{k}": v for k, v in flip_probe_accuracy(trainer.model, tokenizer, probe, batch_size).items()}
        trainer.log_metrics("eval", flip)
        trainer.save_metrics("eval", {**held_out, **flip} if eval_tokens is not None else flip)
        metrics.update(flip)
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    if demonstrations is not None:
        normalization = reward_bias(trainer.model, tokenizer, demonstrations)
        write_json(output_dir / NORMALIZATION_FILE, normalization)
        metrics["reward_bias"] = normalization["bias"]
    finish_stage(output_dir, "rm")
    announce("Reward model", output_dir, {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)})
    return trainer


if __name__ == "__main__":
    run_recipe(main, (RewardScriptArguments, RewardConfig, ModelConfig))
