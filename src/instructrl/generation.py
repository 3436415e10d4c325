"""Load a policy (base model plus an optional LoRA adapter) and sample responses from it in batches."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import torch
from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from .batching import pad_left
from .data.rows import encode_prompt
from .modeling import compute_dtype, load_base_model, load_tokenizer, returned_cache
from .runs import require_adapter

logger = logging.getLogger(__name__)
_torch_multinomial = torch.multinomial


def inverse_cdf_sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` (non-negative, not necessarily normalized), drawn by inverting its CDF.

    The same distribution as `torch.multinomial(probs, 1)`, from one uniform number per row instead of one per token:
    on CPU, `multinomial` draws an exponential variate for every entry of the vocabulary (49152 for the default
    model), and for a batch of 32 that is ~60 ms of a ~300 ms decoding step, spent in the random number generator.
    The CDF is summed in float64 so that its rounding is far below any probability that matters.

    Args:
        probs (`torch.Tensor`):
            `(rows, vocabulary)` probabilities.
        generator (`torch.Generator`, *optional*):
            Source of the uniform numbers, as `torch.multinomial`'s.

    Returns:
        `torch.Tensor`: `(rows, 1)` token indices (int64).
    """
    cdf = probs.double().cumsum(-1)
    uniform = torch.rand(probs.shape[0], 1, dtype=torch.float64, device=probs.device, generator=generator)
    # `right=True`: the first entry whose cumulative mass exceeds the draw, so a zero-probability token is never hit.
    chosen = torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)
    return chosen.clamp_(max=probs.shape[-1] - 1)


def _multinomial(input, num_samples, replacement=False, *, generator=None, out=None):
    """`torch.multinomial`, with single draws from CPU probability rows done by `inverse_cdf_sample`."""
    if num_samples == 1 and out is None and input.dim() == 2 and input.device.type == "cpu" and input.numel():
        totals = input.sum(-1)
        # Invalid rows (NaN, inf, negative, all zero) go to torch's own kernel, which rejects them with its error.
        if bool(torch.isfinite(totals).all() and (totals > 0).all() and input.min() >= 0):
            return inverse_cdf_sample(input, generator)
    return _torch_multinomial(input, num_samples, replacement, generator=generator, out=out)


@contextmanager
def fast_cpu_sampling() -> Iterator[None]:
    """Within this block, `torch.multinomial`'s single draws on CPU (what `generate(do_sample=True)` makes at every
    decoding step) use `inverse_cdf_sample`: the same distribution, without one random number per vocabulary entry.
    Everything else, and everything on a GPU, goes to torch's own `multinomial`; what was there is restored on exit."""
    with mock.patch.object(torch, "multinomial", _multinomial):
        yield


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
        full_precision = compute_dtype(model) == torch.float32
        if full_precision and not getattr(model, "is_loaded_in_4bit", False):
            model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


_WARMED_UP: set[str] = set()  # device types whose first `generate` of this process has run


@torch.no_grad()
def warm_up_generation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """Run one greedy 4-token `generate` the first time this process generates on the model's kind of device.

    Observed on a 2-core Xeon in bf16 (AMX), the SFT and reward adapters held on one base as `make eval` holds them:
    the first sampling call of a process gave other responses than every later call with the same seed in 8 of 21
    processes, at random (not tied to `PYTHONHASHSEED`; the later calls always agreed), so `make eval` runs of one
    config could differ in their first policy's samples: the reference, on which every win rate rests. With this
    warm-up first, 0 of 8 processes differed (docs/measurements.md, 2026-12-04 09:20). The cause is not known (a first
    plain forward is exact), so this is a cheap guard, not an explanation. No random number is drawn, so the caller's
    seeded state is untouched. Returns whether it ran now.
    """
    device = next(model.parameters()).device
    if device.type in _WARMED_UP:
        return False
    _WARMED_UP.add(device.type)
    prompt = [{"role": "user", "content": "Hello."}]
    input_ids, attention_mask = pad_left([encode_prompt(tokenizer, prompt)], tokenizer.pad_token_id)
    model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        max_new_tokens=4,
        do_sample=False,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return True


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
    sampled = sample_responses_with_ends(
        model, tokenizer, prompts, num_samples, max_new_tokens, temperature, top_p, batch_size, do_sample
    )
    return [texts for texts, _ in sampled]


@torch.no_grad()
def generate_sharing_prompts(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    num_samples: int,
    **generate_kwargs,
) -> torch.Tensor:
    """`model.generate` of `num_samples` sequences per left-padded prompt, each prompt's prefill computed once.

    `generate(num_return_sequences=K)` repeats every prompt K times before its first forward, so the prompt's keys and
    values are computed K times over. Here the prompts without their last token go through the model once, the cache
    is repeated K times, and `generate` goes on from it with the repeated prompts. The next-token distributions are
    the plain call's to float rounding (the prompt forward is batched differently: ~6e-5 in fp32 logits of the default
    model), the random draws come in the same order and rows in `generate`'s order (prompt 0's K samples, then prompt
    1's), so one seed gives the plain call's tokens except where a draw falls within that rounding of a boundary (0 of
    64 rows differed with torch's sampler, 4 of 64 with `fast_cpu_sampling`'s, in one check). 3/4 of the prompt
    forwards are gone at K=4: 1.19-1.25x faster sampling for 16 prompts x 4 responses of 64 tokens on 2 CPU cores
    (`bench/prompt_prefill.py`, docs/measurements.md). A model whose cache cannot be repeated gets the plain call.
    """
    if num_samples == 1 or input_ids.shape[1] < 2:
        return model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
    # The positions `generate` gives left-padded prompts: counted from each row's first real token.
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    prefix = model(
        input_ids=input_ids[:, :-1],
        attention_mask=attention_mask[:, :-1],
        position_ids=positions[:, :-1],
        use_cache=True,
        logits_to_keep=1,
    )
    cache_key, cache = returned_cache(prefix)
    if not hasattr(cache, "batch_repeat_interleave"):
        return model.generate(
            input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=num_samples, **generate_kwargs
        )
    cache.batch_repeat_interleave(num_samples)
    return model.generate(
        input_ids=input_ids.repeat_interleave(num_samples, dim=0),
        attention_mask=attention_mask.repeat_interleave(num_samples, dim=0),
        **{cache_key: cache},
        **generate_kwargs,
    )


@torch.no_grad()
def sample_responses_with_ends(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list,
    num_samples: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 16,
    do_sample: bool = True,
) -> list[tuple[list[str], list[bool]]]:
    """`sample_responses`, and for each response whether it ended with the end-of-turn token (`False`: cut off at
    `max_new_tokens`): one `(responses, ended)` pair per prompt."""
    device = next(model.parameters()).device
    warm_up_generation(model, tokenizer)  # the first generate of a process is not reproducible: not with our seed
    results: list[tuple[list[str], list[bool]]] = []
    for start in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        input_ids, attention_mask = pad_left(encoded, tokenizer.pad_token_id)
        with fast_cpu_sampling():
            output = generate_sharing_prompts(
                model,
                input_ids.to(device),
                attention_mask.to(device),
                num_samples,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=top_p if do_sample else None,
                top_k=0 if do_sample else None,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        generated = output[:, input_ids.shape[1] :]
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
        ended = (generated == tokenizer.eos_token_id).any(dim=-1).tolist()
        for row in range(len(encoded)):
            chunk = slice(row * num_samples, (row + 1) * num_samples)
            results.append(([t.strip() for t in texts[chunk]], ended[chunk]))
        logger.info("Sampled %d/%d prompts", min(start + batch_size, len(prompts)), len(prompts))
    return results
