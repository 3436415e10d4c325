"""Helpers shared by the tests: load a recipe module, write data and YAML configs, compare sampling paths."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def load_recipe(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_config(path: Path, **values) -> Path:
    path.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return path


def assert_shared_prefill_is_generate(model, tokenizer, prompts, num_samples: int, max_new_tokens: int, tol: float):
    """Greedy `generate_sharing_prompts` gives the plain `generate`'s tokens over repeated prompts, and its logits at
    every step within `tol` (tokens alone could hide a wrong position of the cached prompt)."""
    import torch

    from instructrl.batching import pad_left
    from instructrl.data.rows import encode_prompt
    from instructrl.generation import generate_sharing_prompts

    input_ids, attention_mask = pad_left([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id)
    scored = dict(max_new_tokens=max_new_tokens, do_sample=False, output_logits=True, return_dict_in_generate=True)
    scored.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        shared = generate_sharing_prompts(model, input_ids, attention_mask, num_samples, **scored)
        plain = model.generate(
            input_ids=input_ids.repeat_interleave(num_samples, dim=0),
            attention_mask=attention_mask.repeat_interleave(num_samples, dim=0),
            **scored,
        )
    assert torch.equal(shared.sequences, plain.sequences)
    for got, want in zip(shared.logits, plain.logits, strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
