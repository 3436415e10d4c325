"""The SFT recipe end-to-end through its parser and `main` on the tiny model."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import load_recipe, write_config, write_jsonl
from instructrl.configs import ScriptArguments, parse_args
from instructrl.errors import ConfigError, DataError, ModelLoadError
from instructrl.runs import COMPLETE, finish_stage

sft_recipe = load_recipe("sft")


def demo_rows(n: int) -> list[dict]:
    topics = ["tea", "rain", "bicycles", "the moon", "bread", "rivers"]
    return [
        {
            "prompt": [{"role": "user", "content": f"Describe {topics[i % 6]} in one sentence."}],
            "completion": [{"role": "assistant", "content": f"{topics[i % 6].capitalize()} is a fine topic."}],
        }
        for i in range(n)
    ]


def sft_config(tmp_path: Path, model_dir: Path, data: Path, **overrides) -> Path:
    values = dict(
        model_name_or_path=str(model_dir),
        dataset_name=str(data),
        output_dir=str(tmp_path / "out"),
        use_peft=True,
        lora_r=4,
        lora_alpha=8,
        lora_target_modules=["q_proj", "v_proj"],
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_length=64,
        gradient_checkpointing=False,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        dataset_num_proc=None,
    )
    values.update(overrides)
    return write_config(tmp_path / "sft.yaml", **values)


def run(config: Path, *extra: str):
    return sft_recipe.main(
        *parse_args((ScriptArguments, sft_recipe.SFTConfig, sft_recipe.ModelConfig), ["--config", str(config), *extra])
    )


def test_sft_trains_lora_only_and_saves(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(16))
    trainer = run(sft_config(tmp_path, tiny_model_dir, data))
    out = tmp_path / "out"
    assert (out / "adapter_config.json").is_file() and (out / "tokenizer.json").is_file()
    assert (out / "train_results.json").is_file()
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [t for name, t in adapter.items() if "lora_B" in name]
    assert lora_b and all(t.abs().sum() > 0 for t in lora_b), "LoRA B starts at zero; training must move it"
    original = load_file(tiny_model_dir / "model.safetensors")
    trained = {n: p for n, p in trainer.model.named_parameters() if "lora_" not in n}
    for name, param in trained.items():
        assert not param.requires_grad, f"base weight {name} must stay frozen"
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        torch.testing.assert_close(param.detach(), original[key], rtol=0, atol=0)
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]


def test_sft_completion_only_loss(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(4))
    trainer = run(sft_config(tmp_path, tiny_model_dir, data, max_steps=1))
    batch = trainer.data_collator([trainer.train_dataset[0]])
    labels, ids = batch["labels"][0], batch["input_ids"][0]
    supervised = trainer.processing_class.decode(ids[labels != -100])
    assert supervised.startswith("Tea is a fine topic.")
    assert "Describe" not in supervised


@pytest.mark.parametrize(
    "rows, message",
    [
        ([{"question": "hi", "answer": "yo"}], "needs (prompt, completion) or (messages) or (text)"),
        (
            [{"prompt": [{"role": "user", "content": "hi"}], "completion": [{"role": "assistant", "content": " "}]}],
            "Row 0",
        ),
    ],
)
def test_sft_bad_data_is_one_clear_error_and_output_survives(tmp_path, tiny_model_dir, rows, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    finish_stage(out, "sft")  # an earlier SFT run, which a new one may replace, but not with bad data
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(sft_config(tmp_path, tiny_model_dir, data))
    assert (out / "keep.txt").read_text() == "earlier result"
    assert sorted(p.name for p in out.iterdir()) == [COMPLETE, "keep.txt"]


def test_sft_wrong_paths_and_unknown_keys(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(4))
    with pytest.raises(DataError, match="missing.jsonl"):
        run(sft_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl"))
    with pytest.raises(ModelLoadError, match="not a directory on this machine"):
        run(sft_config(tmp_path, tmp_path / "no-such-model", data))
    with pytest.raises(ConfigError, match="did you mean 'learning_rate'"):
        run(sft_config(tmp_path, tiny_model_dir, data, learnig_rate=1.0))
    with pytest.raises(ConfigError, match="does not exist"):
        run(tmp_path / "nope.yaml")


def test_sft_rejects_a_tokenizer_from_another_model(tmp_path, tiny_model_dir, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = LlamaConfig(
        vocab_size=1000,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    model_dir = tmp_path / "small-vocab"
    LlamaForCausalLM(small).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(4))
    with pytest.raises(ModelLoadError, match="does not belong to this model"):
        run(sft_config(tmp_path, model_dir, data))


def test_qlora_sft_keeps_the_lora_weights_fp32(tmp_path, tiny_model_dir):
    """TRL casts a 4-bit model's LoRA weights to bf16; the recipe casts them back before the optimizer exists."""
    data = write_jsonl(tmp_path / "demos.jsonl", demo_rows(16))
    trainer = run(sft_config(tmp_path, tiny_model_dir, data, load_in_4bit=True, dtype="float32", max_steps=2))
    lora = {name: param for name, param in trainer.model.named_parameters() if "lora_" in name}
    assert lora and all(param.requires_grad and param.dtype == torch.float32 for param in lora.values())
    assert {p.dtype for group in trainer.optimizer.param_groups for p in group["params"]} == {torch.float32}
    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert saved and {t.dtype for t in saved.values()} == {torch.float32}
