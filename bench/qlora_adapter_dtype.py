"""Benchmark: QLoRA SFT with fp32 LoRA weights (this project) against bf16 ones (TRL's `SFTTrainer`), side by side.

    python bench/qlora_adapter_dtype.py                         # the QLoRA config as shipped (meant for a GPU)
    python bench/qlora_adapter_dtype.py --max_steps 10          # a short smoke run (a 4-bit base is slow on a CPU)

TRL casts a quantized model's trainable weights to bf16 before training; the SFT recipe casts them back to fp32
(`instructrl.modeling.keep_trainable_weights_fp32`). This runs the recipe with `config_qlora.yaml` twice in this
process, same data and seed: as shipped, and with that cast skipped (TRL's behaviour). For each it prints the
held-out loss and perplexity on the demonstrations' test split, the last logged training loss, the seconds of
training, and how far the LoRA weights moved from their initialization (relative L2 norm of the change).
"""

import argparse
import importlib.util
import json
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "recipes/smollm2-135m/sft/config_qlora.yaml"


def load_sft_recipe():
    spec = importlib.util.spec_from_file_location("recipe_sft", ROOT / "recipes" / "sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(recipe, adapters: str, config: Path, max_steps: int | None) -> dict:
    from instructrl.configs import ScriptArguments, parse_args

    original, trainer_cls = recipe.keep_trainable_weights_fp32, recipe.SFTTrainer
    if adapters == "bf16":  # leave TRL's cast in place
        recipe.keep_trainable_weights_fp32 = lambda model: 0
    initial: dict[str, torch.Tensor] = {}
    try:
        with tempfile.TemporaryDirectory(prefix=f"instructrl-qlora-{adapters}-") as out:
            argv = ["--config", str(config), "--output_dir", out, "--report_to", "none", "--save_strategy", "no"]
            if max_steps:
                argv += ["--max_steps", str(max_steps)]
            args = parse_args((ScriptArguments, recipe.SFTConfig, recipe.ModelConfig), argv)
            # Record the LoRA weights as training starts (after any cast), through the trainer's own hook.
            from transformers import TrainerCallback

            class Snapshot(TrainerCallback):
                def on_train_begin(self, args, state, control, model=None, **kwargs):
                    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
                    initial.update({n: p.detach().float().clone() for n, p in lora.items()})

            class WithSnapshot(trainer_cls):
                def __init__(self, *a, **kw):
                    kw["callbacks"] = [*kw.get("callbacks", []), Snapshot()]
                    super().__init__(*a, **kw)

            recipe.SFTTrainer = WithSnapshot
            start = time.time()
            trainer = recipe.main(*args)
            seconds = time.time() - start
            eval_metrics = json.loads((Path(out) / "eval_results.json").read_text())
    finally:
        recipe.keep_trainable_weights_fp32 = original
        recipe.SFTTrainer = trainer_cls
    lora = {n: p.detach().float() for n, p in trainer.model.named_parameters() if "lora_" in n}
    moved = torch.stack([(lora[n] - initial[n]).norm() for n in lora]).norm()
    size = torch.stack([initial[n].norm() for n in lora]).norm()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for n, p in trainer.model.named_parameters() if "lora_" in n})
    return {
        "adapters": adapters,
        "trained_dtype": "/".join(dtypes),
        "eval_loss": eval_metrics["eval_loss"],
        "eval_perplexity": eval_metrics["eval_perplexity"],
        "last_train_loss": losses[-1] if losses else float("nan"),
        "seconds": seconds,
        "lora_moved": (moved / size).item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--max_steps", type=int, default=None, help="Stop after N optimizer steps (default: 1 epoch).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    args = parser.parse_args()
    recipe = load_sft_recipe()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    rows = [run(recipe, adapters, args.config, args.max_steps) for adapters in ("fp32", "bf16")]
    print(f"QLoRA SFT ({args.config.name}) on {device}:")
    header = f"{'LoRA weights':<14}{'trained in':>11}{'eval loss':>11}{'eval ppl':>10}{'last loss':>11}"
    print(f"{header}{'moved':>8}{'s':>7}")
    for row in rows:
        print(
            f"{row['adapters']:<14}{row['trained_dtype']:>11}{row['eval_loss']:>11.4f}{row['eval_perplexity']:>10.3f}"
            f"{row['last_train_loss']:>11.4f}{row['lora_moved']:>8.3f}{row['seconds']:>7.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
