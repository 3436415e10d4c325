"""InstructGPT step 1: supervised fine-tuning of a LoRA (or QLoRA) adapter on demonstrations.

Run on the embedded default model and data:

    make sft
    accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/sft.py \
        --config recipes/smollm2-135m/sft/config_qlora.yaml

Any model (built-in name, local directory or Hub id) and data (built-in name, json/jsonl/parquet/csv file or Hub id)
work through `--model_name_or_path` and `--dataset_name`. Prompt/completion rows train on the completion only.
"""

import instructrl  # noqa: F401  # first: keeps bitsandbytes from fetching Hub kernels (hub_kernels.py)

# isort: split

import math

from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from instructrl.cli import run_recipe
from instructrl.configs import ScriptArguments
from instructrl.divergence import DivergenceGuard
from instructrl.modeling import keep_trainable_weights_fp32, load_base_model, load_tokenizer
from instructrl.runs import announce, finish_stage, prepare_run, resolve_resume, start_stage
from instructrl.sft import load_sft_datasets
from instructrl.threads import ThreadShare


def main(script_args: ScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> SFTTrainer:
    output_dir = prepare_run(training_args, "sft")
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    # Everything a user can get wrong is checked before the model loads and before anything is written.
    train_dataset, eval_dataset = load_sft_datasets(script_args)
    tokenizer = load_tokenizer(
        model_args.model_name_or_path, model_args.model_revision, training_args.trust_remote_code
    )
    model = load_base_model(model_args, tokenizer, trust_remote_code=training_args.trust_remote_code)

    start_stage(output_dir, "sft")
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[DivergenceGuard(), ThreadShare()],
    )
    keep_trainable_weights_fp32(trainer.model)  # TRL makes QLoRA adapters bf16; ours stay fp32
    train_result = trainer.train(resume_from_checkpoint=resume)
    metrics = dict(train_result.metrics)
    if eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 50.0))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    trainer.save_state()
    finish_stage(output_dir, "sft")
    announce("SFT", output_dir, {k: round(v, 4) for k, v in metrics.items() if "loss" in k or "perplexity" in k})
    return trainer


if __name__ == "__main__":
    run_recipe(main, (ScriptArguments, SFTConfig, ModelConfig))
