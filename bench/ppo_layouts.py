"""Benchmark: PPO updates in instructrl's shared-base layout vs TRL's default layout, side by side.

    python bench/ppo_layouts.py                # the embedded default, after `make sft` and `make rm`
    python bench/ppo_layouts.py --updates 3 --load-in-4bit
    python bench/ppo_layouts.py --shape 360m --dtype bfloat16   # a larger shape, random weights (no download)

Shared layout: one base (4-bit if asked) with policy/reference/reward/value LoRA adapters (`instructrl.shared_base`).
TRL's default layout: the policy is the base with a LoRA adapter (`peft_config`, reference = adapters off), and the
reward and value models are separate full sequence classifiers (the RM adapter merged in), the value trained in full.

Each layout runs in its own process on the same model, prompts, batch and seed; the script prints peak memory (GPU
allocated memory on CUDA, peak resident set size on CPU, both minus the process's footprint before any model loads),
seconds per PPO update (after one warm-up update) and the ratios, and the memory model's prediction for the same
workload (`instructrl.memory`) beside the measured peak.

`--shape` builds a SmolLM2-family model of that size from its architecture alone, with random weights and random SFT
and reward adapters (speed and memory do not depend on what the weights are), so larger shapes need no download.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_OUTPUTS = Path("~/.cache/instructrl/outputs/smollm2-135m").expanduser()
# SmolLM2 family architectures (the published configs; vocabulary 49152, tied embeddings, head_dim 64).
SHAPES = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    ),  # a smoke test of the benchmark itself
    "135m": dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536
    ),
    "360m": dict(
        hidden_size=960, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5, intermediate_size=2560
    ),
    "1.7b": dict(
        hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32, intermediate_size=8192
    ),
}


def build_random_model(shape: str, workdir: Path) -> tuple[Path, Path, Path]:
    """A random-weight model of `shape` with random SFT and reward adapters; returns (model, sft, rm) directories."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig

    from instructrl.modeling import load_embedded_tokenizer
    from instructrl.reward import NORMALIZATION_FILE

    root = workdir / f"random-{shape}"
    model_dir, sft_dir, rm_dir = root / "model", root / "sft", root / "rm"
    if (rm_dir / NORMALIZATION_FILE).is_file():
        return model_dir, sft_dir, rm_dir
    tokenizer = load_embedded_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        head_dim=64,
        tie_word_embeddings=True,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **SHAPES[shape],
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    lora = dict(r=16, lora_alpha=32, target_modules="all-linear")
    sft = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **lora))
    sft.save_pretrained(sft_dir)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    rm = get_peft_model(classifier, LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora))
    rm.save_pretrained(rm_dir)
    (rm_dir / NORMALIZATION_FILE).write_text(json.dumps({"bias": 0.0, "scored_token": tokenizer.eos_token}))
    return model_dir, sft_dir, rm_dir


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_layout(args: argparse.Namespace) -> dict:
    import torch
    from peft import PeftModel
    from transformers import TrainerCallback
    from trl import ModelConfig
    from trl.experimental.ppo import PPOTrainer

    from instructrl.data.loading import load_data
    from instructrl.data.rows import encode_prompt
    from instructrl.modeling import load_base_model, load_tokenizer
    from instructrl.ppo import InstructPPOConfig, InstructPPOTrainer
    from instructrl.shared_base import SharedBase

    os.environ.setdefault("WANDB_MODE", "disabled")
    cuda = torch.cuda.is_available()
    before = torch.cuda.memory_allocated() / 2**20 if cuda else peak_rss_mb()
    model_args = ModelConfig(
        model_name_or_path=args.model,
        dtype=args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32"),
        load_in_4bit=args.load_in_4bit,
        bnb_4bit_quant_type="nf4",
        use_peft=True,
        lora_r=16,
        lora_alpha=32,
        lora_target_modules=["all-linear"],
    )
    tokenizer = load_tokenizer(args.model, padding_side="left")
    prompts = load_data("builtin:prompts", "ppo").select(range(args.batch * (args.updates + 1)))
    dataset = prompts.map(lambda r: {"input_ids": encode_prompt(tokenizer, r["prompt"])}, remove_columns=["prompt"])
    config = InstructPPOConfig(
        output_dir=str(Path(args.workdir) / args.layout),
        total_episodes=args.batch * (args.updates + 1),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        num_mini_batches=1,
        local_rollout_forward_batch_size=args.batch,
        response_length=args.response_length,
        stop_token="eos",
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        bf16=cuda,
        learning_rate=1e-5,
        gradient_checkpointing=False,
        seed=0,
        logging_steps=1,
    )
    rm_dir, sft_dir = Path(args.rm).expanduser(), Path(args.sft).expanduser()

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter())

    clock = Clock()
    if args.layout == "shared":
        base = load_base_model(model_args, tokenizer)
        shared = SharedBase(base, rm_dir, sft_dir)
        trainer = InstructPPOTrainer(
            args=config,
            shared=shared,
            processing_class=tokenizer,
            train_dataset=dataset,
            eval_dataset=dataset,
            callbacks=[clock],
        )
    else:
        policy = PeftModel.from_pretrained(load_base_model(model_args, tokenizer), sft_dir).merge_and_unload()
        reward = PeftModel.from_pretrained(load_base_model(model_args, tokenizer, task="reward"), rm_dir)
        reward = reward.merge_and_unload()
        value = PeftModel.from_pretrained(load_base_model(model_args, tokenizer, task="reward"), rm_dir)
        value = value.merge_and_unload().requires_grad_(True)  # TRL trains the value model in full
        from trl import get_peft_config

        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=None,
            reward_model=reward,
            value_model=value,
            train_dataset=dataset,
            eval_dataset=dataset,
            peft_config=get_peft_config(model_args),
            callbacks=[clock],
        )
    start = time.perf_counter()
    trainer.train()
    marks = [start] + clock.times
    per_update = [b - a for a, b in zip(marks, marks[1:], strict=False)][1:]  # drop the warm-up update
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else peak_rss_mb()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    from instructrl.memory import Shape, Workload, estimate
    from instructrl.modeling import load_model_config

    prompt_length = max(len(ids) for ids in dataset["input_ids"])
    work = Workload(args.batch, args.batch, prompt_length, args.response_length, 16, args.batch)
    dtype = str(model_args.dtype).replace("torch.", "")
    predicted = estimate(Shape.from_config(load_model_config(args.model)), args.layout, dtype, args.load_in_4bit, work)
    return {
        "layout": args.layout,
        "dtype": dtype,
        "predicted_mb": predicted["peak"] / 2**20,
        "peak_mb": peak - before,
        "sec_per_update": sum(per_update) / len(per_update),
        "updates_timed": len(per_update),
        "trainable_params": trainable,
        "device": "cuda" if cuda else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--sft", default=str(DEFAULT_OUTPUTS / "sft"))
    parser.add_argument("--rm", default=str(DEFAULT_OUTPUTS / "rm"))
    parser.add_argument("--updates", type=int, default=3, help="timed updates (one more runs first as warm-up)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--response-length", type=int, default=32)
    parser.add_argument("--load-in-4bit", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random-weight model of this size (no download)")
    parser.add_argument("--layouts", nargs="+", default=["shared", "trl"], choices=["shared", "trl"])
    parser.add_argument("--workdir", default="/tmp/instructrl-bench")
    parser.add_argument("--layout", choices=["shared", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.shape:
        model, sft, rm = build_random_model(args.shape, Path(args.workdir))
        args.model, args.sft, args.rm = str(model), str(sft), str(rm)
    if args.layout:
        print("RESULT " + json.dumps(run_layout(args)), flush=True)
        return
    results = {}
    for layout in args.layouts:
        cmd = [sys.executable, __file__, "--layout", layout, "--model", args.model, "--sft", args.sft, "--rm", args.rm]
        cmd += [a for a in sys.argv[1:] if a not in ("--shape", args.shape, "--layouts", *args.layouts)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode != 0 or not lines:
            sys.exit(f"{layout} layout failed:\n{out.stderr[-3000:]}")
        results[layout] = json.loads(lines[-1][len("RESULT ") :])
    rows = list(results.values())
    print(
        f"model={args.shape or args.model} 4bit={args.load_in_4bit} batch={args.batch} "
        f"response_length={args.response_length} device={rows[0]['device']}"
    )
    print(f"{'layout':<8} {'dtype':<9} {'peak MB':>10} {'model MB':>9} {'s/update':>10} {'trainable':>12}")
    for row in rows:
        print(
            f"{row['layout']:<8} {row['dtype']:<9} {row['peak_mb']:>10.0f} {row['predicted_mb']:>9.0f} "
            f"{row['sec_per_update']:>10.2f} {row['trainable_params']:>12,}"
        )
    if len(rows) == 2:
        shared, trl = results["shared"], results["trl"]
        print(
            f"ratio shared/trl: peak memory {shared['peak_mb'] / trl['peak_mb']:.2f}, "
            f"time per update {shared['sec_per_update'] / trl['sec_per_update']:.2f}"
        )


if __name__ == "__main__":
    main()
