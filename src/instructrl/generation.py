"""Load a policy (base model plus an optional LoRA adapter) and sample responses from it in batches."""

import logging
import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from unittest import mock

import numpy as np
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
    seed: int | None = None,
    workers: int = 1,
) -> list[list[str]]:
    """`num_samples` responses per prompt, generation stopping at the end-of-turn token (`seed` and `workers` as in
    `sample_responses_with_ends`).

    Returns one list of `num_samples` decoded responses (special tokens removed) per prompt.
    """
    sampled = sample_responses_with_ends(
        model,
        tokenizer,
        prompts,
        num_samples,
        max_new_tokens,
        temperature,
        top_p,
        batch_size,
        do_sample,
        seed,
        workers,
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


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index` in a sampling call seeded with `seed`.

    Every batch draws from a stream of its own, so a batch's samples do not depend on the batches sampled before it
    in the same process: the same responses come out whether one process samples every batch or several share them
    (`sample_responses_with_ends(workers=...)`). Mixed by numpy's `SeedSequence`, so neighbouring seeds and indices
    give unrelated streams (seed 42's second batch is not seed 43's first)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def sampling_workers(requested: int | str, model: PreTrainedModel) -> int:
    """How many processes sample: `requested`, or for `"auto"` one per CPU thread this process has.

    On a CPU, two one-thread processes sampling half the prompts each finished 1.26x sooner than one two-thread
    process sampling them all (2-core Xeon, docs/measurements.md 2026-12-07 02:40): PyTorch's CPU kernels gain less
    than 2x from a second thread at this model's width. The workers are forked from this process and share its weights
    (nothing is loaded again); `"auto"` is 1 on a GPU (one process keeps it busy, and CUDA does not survive a fork)
    and where the OS cannot fork.
    """
    if requested != "auto":
        return int(requested)
    on_cpu = next(model.parameters()).device.type == "cpu"
    can_fork = "fork" in multiprocessing.get_all_start_methods()
    return torch.get_num_threads() if on_cpu and can_fork else 1


@torch.no_grad()
def _sample_batch(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list, settings: dict
) -> list[tuple[list[str], list[bool]]]:
    """One batch of `sample_responses_with_ends`: `(responses, ended)` for each prompt."""
    device = next(model.parameters()).device
    num_samples, do_sample = settings["num_samples"], settings["do_sample"]
    encoded = [encode_prompt(tokenizer, p) for p in prompts]
    input_ids, attention_mask = pad_left(encoded, tokenizer.pad_token_id)
    with fast_cpu_sampling():
        output = generate_sharing_prompts(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            num_samples,
            max_new_tokens=settings["max_new_tokens"],
            do_sample=do_sample,
            temperature=settings["temperature"] if do_sample else None,
            top_p=settings["top_p"] if do_sample else None,
            top_k=0 if do_sample else None,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    generated = output[:, input_ids.shape[1] :]
    texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    ended = (generated == tokenizer.eos_token_id).any(dim=-1).tolist()
    chunks = [slice(row * num_samples, (row + 1) * num_samples) for row in range(len(encoded))]
    return [([t.strip() for t in texts[chunk]], ended[chunk]) for chunk in chunks]


def _seeded_batch(model, tokenizer, index: int, prompts: list, settings: dict, seed: int | None) -> list:
    if seed is not None:
        torch.manual_seed(batch_seed(seed, index))
    return _sample_batch(model, tokenizer, prompts, settings)


# What forked sampling workers inherit from the process that starts them: (model, tokenizer, settings, seed). Set only
# while a pool runs; the workers read it from their copy of this module (fork copies memory, weights included).
_WORKER_JOB: tuple | None = None


def _start_worker() -> None:
    torch.set_num_threads(1)
    _WARMED_UP.clear()  # each process warms up its own first `generate`, whatever its parent did


def _worker_batch(index: int, prompts: list) -> list:
    model, tokenizer, settings, seed = _WORKER_JOB
    warm_up_generation(model, tokenizer)
    return _seeded_batch(model, tokenizer, index, prompts, settings, seed)


def _batches_in_workers(
    model, tokenizer, batches: list[list], settings: dict, seed: int, workers: int
) -> Iterator[list]:
    """Each batch's results in order, sampled by `workers` forked one-thread processes, each taking the next batch."""
    global _WORKER_JOB
    _WORKER_JOB = (model, tokenizer, settings, seed)
    try:
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker) as pool:
            yield from pool.map(_worker_batch, range(len(batches)), batches)
    finally:
        _WORKER_JOB = None


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
    seed: int | None = None,
    workers: int = 1,
) -> list[tuple[list[str], list[bool]]]:
    """`sample_responses`, and for each response whether it ended with the end-of-turn token (`False`: cut off at
    `max_new_tokens`): one `(responses, ended)` pair per prompt.

    With `seed`, each batch of `batch_size` prompts is sampled from its own seed (`batch_seed`), so the responses are
    the same for any `workers`; without it, batches follow the caller's random state in order. `workers` > 1 (needs
    `seed`) samples the batches in that many forked one-thread processes (`sampling_workers` says when that pays).
    """
    if workers > 1 and seed is None:
        raise ValueError("Sampling in several processes needs a `seed`: each batch is seeded on its own.")
    settings = dict(
        num_samples=num_samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        do_sample=do_sample,
    )
    batches = [prompts[start : start + batch_size] for start in range(0, len(prompts), batch_size)]
    workers = min(workers, len(batches))
    batch_results: Iterable[list]
    if workers > 1:
        logger.info("Sampling %d batches in %d one-thread processes", len(batches), workers)
        batch_results = _batches_in_workers(model, tokenizer, batches, settings, seed, workers)
    else:
        warm_up_generation(model, tokenizer)  # the first generate of a process is not reproducible: not with our seed
        batch_results = (
            _seeded_batch(model, tokenizer, index, batch, settings, seed) for index, batch in enumerate(batches)
        )
    results: list[tuple[list[str], list[bool]]] = []
    for index, batch in enumerate(batch_results):
        results += batch
        logger.info("Sampled %d/%d prompts", min((index + 1) * batch_size, len(prompts)), len(prompts))
    return results
