"""Load a policy (base model plus an optional LoRA adapter) and sample responses from it in batches."""

import logging

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from .data.rows import encode_prompt
from .modeling import load_base_model, load_tokenizer
from .runs import require_adapter

logger = logging.getLogger(__name__)


def load_policy(
    model_args: ModelConfig, adapter_path: str | None, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model with the adapter (if any; merged into fp32 weights), in eval mode; a left-padding tokenizer."""
    adapter = require_adapter(adapter_path, "SFT", "make sft")
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision, trust_remote_code, "left")
    model = load_base_model(model_args, tokenizer, trust_remote_code=trust_remote_code)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
        # Merged, sampling does one matmul per layer instead of two; but only into fp32 weights: rounded to bf16 (or
        # 4-bit), a LoRA update much smaller than the weight it is added to would be mostly lost.
        full_precision = next(model.get_base_model().parameters()).dtype == torch.float32
        if full_precision and not getattr(model, "is_loaded_in_4bit", False):
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


@torch.no_grad()
def sample_responses(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    do_sample: bool = True,
) -> list[list[str]]:
    """`num_samples` responses per prompt, generation stopping at the end-of-turn token.

    Returns one list of `num_samples` decoded responses (special tokens removed) per prompt.
    """
    device = next(model.parameters()).device
    results: list[list[str]] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention_mask[row, width - len(ids) :] = 1
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=0 if do_sample else None,
            num_return_sequences=num_samples,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        texts = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
        for row in range(len(encoded)):
            results.append([t.strip() for t in texts[row * num_samples : (row + 1) * num_samples]])
        logger.info("Sampled %d/%d prompts", min(start + batch_size, len(prompts)), len(prompts))
    return results
