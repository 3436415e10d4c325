"""Single multinomial draws on CPU by inverting the CDF: same distribution, torch's errors kept, restored on exit."""

import os

import pytest
import torch
from trl import ModelConfig

from helpers import assert_shared_prefill_is_generate
from instructrl import generation
from instructrl.batching import pad_left
from instructrl.data.rows import encode_prompt
from instructrl.generation import (
    fast_cpu_sampling,
    generate_sharing_prompts,
    inverse_cdf_sample,
    load_policy,
    sample_responses,
    sample_responses_with_ends,
)


def test_inverse_cdf_sample_draws_from_the_rows_distribution():
    weights = torch.tensor([0.3, 0.0, 0.6, 0.9, 1.2])  # unnormalized; token 1 has no mass
    rows = 200_000
    torch.manual_seed(0)
    drawn = inverse_cdf_sample(weights.expand(rows, -1))
    assert drawn.shape == (rows, 1) and drawn.dtype == torch.int64
    frequencies = torch.bincount(drawn.flatten(), minlength=5).double() / rows
    assert frequencies[1] == 0
    # 4 standard errors of a frequency of 0.4 over 200k draws is ~0.0044
    assert torch.allclose(frequencies, (weights / weights.sum()).double(), atol=0.005)


def test_each_row_is_drawn_from_its_own_distribution():
    probs = torch.zeros(3, 6)
    probs[0, 5], probs[1, 0], probs[2, 2:4] = 1.0, 2.0, 0.5
    torch.manual_seed(1)
    drawn = inverse_cdf_sample(probs.repeat(100, 1)).view(100, 3)
    assert (drawn[:, 0] == 5).all() and (drawn[:, 1] == 0).all()
    assert set(drawn[:, 2].tolist()) == {2, 3}


def test_a_generator_makes_the_draws_reproducible():
    probs = torch.softmax(torch.randn(8, 1000), -1)
    first = inverse_cdf_sample(probs, torch.Generator().manual_seed(3))
    again = inverse_cdf_sample(probs, torch.Generator().manual_seed(3))
    other = inverse_cdf_sample(probs, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_fast_sampling_replaces_only_single_valid_draws_and_is_restored(monkeypatch):
    original = torch.multinomial
    calls = []
    monkeypatch.setattr(
        generation, "inverse_cdf_sample", lambda p, g=None: calls.append(p.shape) or p.argmax(-1, True)
    )
    probs = torch.softmax(torch.randn(4, 50), -1)
    with fast_cpu_sampling():
        assert torch.multinomial is not original
        torch.multinomial(probs, 1)
        assert calls == [(4, 50)]
        two = torch.multinomial(probs, 2)  # more than one draw: torch's own, without replacement
        assert two.shape == (4, 2) and (two[:, 0] != two[:, 1]).all()
        bad = probs.clone()
        bad[1, 3] = float("nan")
        with pytest.raises(RuntimeError, match="probability tensor"):
            torch.multinomial(bad, 1)  # torch's error, not a silent draw
        negative = probs.clone()
        negative[0, 0] = -0.1
        with pytest.raises(RuntimeError, match="probability tensor"):
            torch.multinomial(negative, 1)
        assert calls == [(4, 50)]
    assert torch.multinomial is original
    with pytest.raises(ValueError), fast_cpu_sampling():
        raise ValueError
    assert torch.multinomial is original


def test_sampled_responses_go_through_the_fast_sampler(tiny_model_dir, monkeypatch):
    calls = []
    real = generation.inverse_cdf_sample
    monkeypatch.setattr(generation, "inverse_cdf_sample", lambda p, g=None: calls.append(p.shape) or real(p, g))
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    prompts = [[{"role": "user", "content": "Name a fruit."}], [{"role": "user", "content": "Name a color."}]]
    torch.manual_seed(0)
    responses = sample_responses(model, tokenizer, prompts, num_samples=2, max_new_tokens=5, batch_size=2)
    assert [len(r) for r in responses] == [2, 2]
    assert calls and all(shape == (4, model.config.vocab_size) for shape in calls)  # one draw per row per step
    assert torch.multinomial is generation._torch_multinomial


def test_sampled_responses_say_whether_they_ended(tiny_model_dir, monkeypatch):
    """A response ended when generate emitted the end-of-turn token; one that ran to `max_new_tokens` did not."""
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    word = tokenizer("hello", add_special_tokens=False)["input_ids"][0]

    def fake_generate(input_ids, **kwargs):  # two prompts x two samples, after the (left-padded, repeated) prompts
        rows = [[word, eos, pad], [word, word, word], [word, word, eos], [word, word, word]]
        repeated = input_ids.repeat_interleave(kwargs.get("num_return_sequences", 1), dim=0)
        return torch.cat((repeated, torch.tensor(rows)), dim=1)

    monkeypatch.setattr(model, "generate", fake_generate)
    prompts = [[{"role": "user", "content": "Name a fruit."}], [{"role": "user", "content": "Name a color."}]]
    sampled = sample_responses_with_ends(model, tokenizer, prompts, num_samples=2, max_new_tokens=3, batch_size=2)
    assert [ended for _, ended in sampled] == [[True, False], [True, False]]
    assert [texts for texts, _ in sampled] == sample_responses(
        model, tokenizer, prompts, num_samples=2, max_new_tokens=3, batch_size=2
    )


def test_the_first_generate_of_a_process_is_a_greedy_warm_up_that_draws_no_random_number(tiny_model_dir, monkeypatch):
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    monkeypatch.setattr(generation, "_WARMED_UP", set())  # as in a new process
    calls = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw) or real(**kw))
    prompts = [[{"role": "user", "content": "Name a fruit."}]]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    assert generation.warm_up_generation(model, tokenizer)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's seeded sampling is not shifted
    assert calls[0]["do_sample"] is False and calls[0]["max_new_tokens"] == 4
    # Once per process and kind of device; sampling afterwards goes straight to its own generate.
    assert not generation.warm_up_generation(model, tokenizer)
    sample_responses(model, tokenizer, prompts, max_new_tokens=3)
    assert len(calls) == 2 and calls[1]["do_sample"] is True
    # A fresh process: sampling warms up first, then samples.
    monkeypatch.setattr(generation, "_WARMED_UP", set())
    calls.clear()
    sample_responses(model, tokenizer, prompts, max_new_tokens=3)
    assert [c["do_sample"] for c in calls] == [False, True]


PROMPTS = [
    [{"role": "user", "content": "Name a fruit."}],
    [{"role": "user", "content": "Write two sentences about the sea, in the voice of an old sailor."}],
    [{"role": "user", "content": "Say hi."}],
]


def test_each_prompt_is_prefilled_once_and_the_tokens_are_the_plain_generates(tiny_model_dir):
    """K samples per prompt: the prompt goes through the model once, not K times, and nothing else changes."""
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    input_ids, attention_mask = pad_left([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id)
    assert (attention_mask == 0).any()  # prompts of different lengths: left padding, whose positions must be right
    common = dict(max_new_tokens=6, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    sampling = dict(do_sample=True, temperature=1.0, top_p=1.0, top_k=0)
    shapes = []
    hook = model.get_input_embeddings().register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        torch.manual_seed(5)
        shared = generate_sharing_prompts(model, input_ids, attention_mask, 4, **sampling, **common)
    finally:
        hook.remove()
    batch, length = input_ids.shape
    assert shapes[0] == (batch, length - 1)  # the prompts once, without their last token
    assert all(rows == batch * 4 and width == 1 for rows, width in shapes[1:])  # then one token at a time
    torch.manual_seed(5)
    plain = model.generate(
        input_ids=input_ids, attention_mask=attention_mask, num_return_sequences=4, **sampling, **common
    )
    assert torch.equal(shared, plain)  # same draws in the same row order (this tiny model: the same logits to the bit)
    # The same next-token distributions at every step, to float precision.
    assert_shared_prefill_is_generate(model, tokenizer, PROMPTS, num_samples=2, max_new_tokens=6, tol=1e-5)


def test_one_sample_per_prompt_is_the_plain_generate(tiny_model_dir, monkeypatch):
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    input_ids, attention_mask = pad_left([encode_prompt(tokenizer, p) for p in PROMPTS], tokenizer.pad_token_id)
    calls = []
    monkeypatch.setattr(model, "forward", lambda **kw: calls.append(kw) or pytest.fail("no separate prefill"))
    monkeypatch.setattr(model, "generate", lambda **kw: calls.append(kw) or kw["input_ids"])
    generate_sharing_prompts(model, input_ids, attention_mask, 1, max_new_tokens=3)
    assert len(calls) == 1 and "num_return_sequences" not in calls[0]


MANY_PROMPTS = [[{"role": "user", "content": f"Name {n} fruits, then say why you like them."}] for n in range(1, 8)]


def test_seeded_batches_give_the_same_responses_in_any_number_of_processes(tiny_model_dir):
    """Each batch draws from its own seed, so forked workers taking batches in any order sample what one process does;
    the parent's random state plays no part."""
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    settings = dict(num_samples=3, max_new_tokens=8, batch_size=2, seed=11)
    torch.manual_seed(0)
    one = sample_responses_with_ends(model, tokenizer, MANY_PROMPTS, workers=1, **settings)
    torch.manual_seed(1)  # another parent state: no effect on seeded batches
    two = sample_responses_with_ends(model, tokenizer, MANY_PROMPTS, workers=2, **settings)
    three = sample_responses_with_ends(model, tokenizer, MANY_PROMPTS, workers=3, **settings)
    assert len(one) == len(MANY_PROMPTS) and all(len(texts) == 3 for texts, _ in one)
    assert one == two == three
    # Different batches draw different streams (a shared stream would repeat the first batch's draws).
    first_batch = sample_responses_with_ends(model, tokenizer, MANY_PROMPTS[:2], **settings)
    assert first_batch == one[:2]
    other_seed = sample_responses_with_ends(model, tokenizer, MANY_PROMPTS, **{**settings, "seed": 12})
    assert other_seed != one


def test_batch_seeds_are_unrelated_across_neighbouring_seeds_and_batches():
    seeds = {generation.batch_seed(seed, index) for seed in range(40, 45) for index in range(5)}
    assert len(seeds) == 25 and all(0 <= s < 2**63 for s in seeds)
    assert generation.batch_seed(42, 1) != generation.batch_seed(43, 0)
    assert generation.batch_seed(42, 1) == generation.batch_seed(42, 1)


def test_workers_sample_in_other_processes_with_one_thread_each(tiny_model_dir, monkeypatch):
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    real = generation._sample_batch

    def record(*args):  # runs in the worker: its pid and thread count travel back with the result
        return [(texts + [f"{os.getpid()}:{torch.get_num_threads()}"], ended) for texts, ended in real(*args)]

    monkeypatch.setattr(generation, "_sample_batch", record)
    sampled = sample_responses_with_ends(
        model, tokenizer, MANY_PROMPTS, max_new_tokens=4, batch_size=1, seed=3, workers=2
    )
    seen = {texts[-1] for texts, _ in sampled}
    pids = {int(mark.split(":")[0]) for mark in seen}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert {mark.split(":")[1] for mark in seen} == {"1"}
    assert generation._WORKER_JOB is None  # the parent keeps no reference to the model after the pool


def test_a_worker_error_reaches_the_caller(tiny_model_dir, monkeypatch):
    model, tokenizer = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)

    def fail(*args):
        raise RuntimeError("out of tokens")

    monkeypatch.setattr(generation, "_sample_batch", fail)
    with pytest.raises(RuntimeError, match="out of tokens"):
        sample_responses_with_ends(model, tokenizer, MANY_PROMPTS, max_new_tokens=4, batch_size=2, seed=3, workers=2)
    with pytest.raises(ValueError, match="seed"):
        sample_responses_with_ends(model, tokenizer, MANY_PROMPTS, batch_size=2, workers=2)


def test_auto_workers_are_the_cpu_threads_where_the_os_can_fork(tiny_model_dir, monkeypatch):
    model, _ = load_policy(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), None)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert generation.sampling_workers("auto", model) == 3
    assert generation.sampling_workers(1, model) == 1 and generation.sampling_workers("2", model) == 2
    monkeypatch.setattr(generation.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert generation.sampling_workers("auto", model) == 1
