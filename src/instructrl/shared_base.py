"""Policy, reference, reward and value as named LoRA adapters on one base model, presented as TRL's PPO expects.

One base model (4-bit when asked) carries up to four adapters:

- `policy`: trainable, initialized from the SFT adapter (or fresh LoRA when there is none);
- `reference`: the SFT adapter, frozen (when there is no SFT adapter the reference is the base with adapters off);
- `reward`: the reward model's LoRA, frozen; its score head and normalization bias live in a separate `ScalarHead`;
- `value`: trainable, initialized from the reward adapter and head, as InstructGPT initializes its value function;
- `reward_1`, `reward_2`, ...: with a reward ensemble, further frozen reward adapters and heads; the reward is then a
  conservative combination of all members' scores (`instructrl.reward.ENSEMBLE_REWARDS`, Coste et al. 2023).

The adapter used by a forward pass is chosen by `use_adapter`, which flips PEFT's active-adapter flags *without*
touching `requires_grad`. PEFT's own `set_adapter` freezes every other adapter, which would silently drop the
gradient of whichever of policy/value ran first in PPO's joint forward. Gradients are exact as long as no activation
checkpointing recomputes a forward under a different adapter, so the shared layout refuses gradient checkpointing.
"""

import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast

from .adapters import adapter_tensors, load_lora_weights
from .errors import ConfigError, MissingStageError, ModelLoadError
from .modeling import fp32_linear
from .reward import NORMALIZATION_FILE, ensemble_reward, train_top_layers

POLICY, REFERENCE, REWARD, VALUE = "policy", "reference", "reward", "value"
VALUE_HEAD_INITS = ("reward", "zero")


@contextmanager
def use_adapter(model: PeftModel, name: str | None) -> Iterator[None]:
    """Run the enclosed forward passes with adapter `name` active (`None`: base model only).

    Unlike `PeftModel.set_adapter`, this leaves `requires_grad` of every adapter untouched.
    """
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    saved = [(m._active_adapter, m._disable_adapters) for m in layers]
    try:
        for layer in layers:
            if name is None:
                layer._disable_adapters = True
            else:
                layer._active_adapter = [name]
                layer._disable_adapters = False
        yield
    finally:
        for layer, (active, disabled) in zip(layers, saved, strict=True):
            layer._active_adapter, layer._disable_adapters = active, disabled


# Set by `logits_from`: the first position whose logits a causal-LM view's caller reads (None: all of them).
_LOGITS_FROM: ContextVar[int | None] = ContextVar("instructrl_logits_from", default=None)


@contextmanager
def logits_from(position: int) -> Iterator[None]:
    """Within this block an `AdapterView` runs its output layer only from `position` on; the logits it returns keep
    their full width, with zeros before `position` (the gradient reaches only the computed ones).

    For callers that read the logits of the responses only, as PPO does after a prompt of `position + 1` tokens: the
    output layer over the prompt, a fifth of a small model's FLOPs per position, is skipped. The computed logits are
    those of the full forward (the same hidden states through the same layer)."""
    token = _LOGITS_FROM.set(position)
    try:
        yield
    finally:
        _LOGITS_FROM.reset(token)


class AdapterView(nn.Module):
    """A causal LM that is the shared base under one adapter: what PPO calls `model.policy` or `ref_model`."""

    def __init__(self, shared: PeftModel, adapter: str | None):
        super().__init__()
        self.shared = shared
        self.adapter = adapter
        self.is_gradient_checkpointing = False
        # transformers' causal LMs take `logits_to_keep` (the last N positions through the output layer); a model
        # whose forward does not is always run whole.
        self._keeps_logits = "logits_to_keep" in inspect.signature(shared.get_base_model().forward).parameters

    @property
    def config(self):
        return self.shared.config

    @property
    def generation_config(self):
        return self.shared.get_base_model().generation_config

    def forward(self, **kwargs):
        start = _LOGITS_FROM.get()
        width = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else 0
        trim = start is not None and self._keeps_logits and "logits_to_keep" not in kwargs and 0 < start < width
        with use_adapter(self.shared, self.adapter):
            if not trim:
                return self.shared(**kwargs)
            output = self.shared(**kwargs, logits_to_keep=width - start)
        output.logits = F.pad(output.logits, (0, 0, start, 0))
        return output

    def generate(self, **kwargs):
        with use_adapter(self.shared, self.adapter):
            return self.shared.generate(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs):
        raise ConfigError(
            "Gradient checkpointing is not available with policy, reference, reward and value sharing one base: "
            "recomputation would run under whichever adapter is active at backward time and give wrong gradients. "
            "Set `gradient_checkpointing: false`."
        )


class BackboneView(nn.Module):
    """The shared base's transformer body (no LM head) under one adapter; returns hidden states."""

    def __init__(self, shared: PeftModel, adapter: str):
        super().__init__()
        self.shared = shared
        self.adapter = adapter

    def forward(self, **kwargs):
        base = self.shared.get_base_model()
        with use_adapter(self.shared, self.adapter):
            return getattr(base, base.base_model_prefix)(**kwargs)


class ScalarHead(nn.Linear):
    """A `hidden -> 1` head in fp32 whatever the base's compute dtype; its bias holds the reward normalization."""

    def __init__(self, hidden_size: int):
        super().__init__(hidden_size, 1, bias=True, dtype=torch.float32)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # fp32 under autocast too (`lora_bf16_compute`, a GPU's mixed precision): one row of weights, and the value
        # and reward it returns are what PPO's advantages are made of.
        return fp32_linear(hidden, self.weight, self.bias)


class ScalarModel(nn.Module):
    """Reward or value model as TRL's PPO reads it: `getattr(m, m.base_model_prefix)` and `m.score`."""

    base_model_prefix = "backbone"

    def __init__(self, shared: PeftModel, adapter: str, head: ScalarHead):
        super().__init__()
        self.backbone = BackboneView(shared, adapter)
        self.score = head


def _lora_config(adapter_dir: Path) -> LoraConfig:
    """The adapter's LoRA config re-targeted at the causal LM (RM adapters were trained on a classifier)."""
    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.task_type = "CAUSAL_LM"
    config.modules_to_save = None
    config.inference_mode = False
    return config


def add_adapter_from_dir(shared: PeftModel | PreTrainedModel, name: str, adapter_dir: Path) -> PeftModel:
    """Attach the LoRA weights found in `adapter_dir` as adapter `name` (score-head weights are left out)."""
    config = _lora_config(adapter_dir)
    if isinstance(shared, PeftModel):
        shared.add_adapter(name, config)
    else:
        shared = get_peft_model(shared, config, adapter_name=name)
    fix = "use the `model_name_or_path` the adapter was trained on."
    load_lora_weights(shared, adapter_dir, name, ModelLoadError, fix)
    return shared


def score_head_from_dir(adapter_dir: Path, hidden_size: int) -> ScalarHead:
    head = ScalarHead(hidden_size)
    weights = [v for k, v in adapter_tensors(adapter_dir).items() if k.endswith("score.weight") or "score." in k]
    if not weights:
        raise MissingStageError(
            f"'{adapter_dir}' holds no score head: it is not a reward-model adapter from `make rm`."
        )
    with torch.no_grad():
        head.weight.copy_(weights[0].reshape(1, hidden_size).float())
        normalization = adapter_dir / NORMALIZATION_FILE
        bias = json.loads(normalization.read_text())["bias"] if normalization.is_file() else 0.0
        head.bias.fill_(bias)
    return head


class EnsembleBackboneView(nn.Module):
    """The shared body run under each reward adapter in turn, last hidden states concatenated on the feature axis, so
    that TRL's `get_reward` (`backbone(...)`, then `score(hidden_states[-1])`) reads an ensemble unchanged."""

    def __init__(self, shared: PeftModel, adapters: list[str]):
        super().__init__()
        self.members = nn.ModuleList(BackboneView(shared, adapter) for adapter in adapters)

    def forward(self, **kwargs):
        kwargs["output_hidden_states"] = True
        hidden = [member(**kwargs).hidden_states[-1] for member in self.members]
        return BaseModelOutputWithPast(hidden_states=(torch.cat(hidden, dim=-1),))


class EnsembleHead(nn.Module):
    """Each member's `ScalarHead` on its slice of the concatenated hidden states, combined by `combine`."""

    def __init__(self, heads: list[ScalarHead], method: str, coef: float):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.method, self.coef = method, coef

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        parts = hidden.chunk(len(self.heads), dim=-1)
        scores = torch.cat([head(part) for head, part in zip(self.heads, parts, strict=True)], dim=-1)
        return ensemble_reward(scores, self.method, self.coef).unsqueeze(-1)


class EnsembleRewardModel(nn.Module):
    """A reward ensemble as TRL's PPO reads a reward model: `backbone` and `score`."""

    base_model_prefix = "backbone"

    def __init__(self, shared: PeftModel, adapters: list[str], heads: list[ScalarHead], method: str, coef: float):
        super().__init__()
        self.backbone = EnsembleBackboneView(shared, adapters)
        self.score = EnsembleHead(heads, method, coef)


def _is_lora_of(name: str, adapter: str) -> bool:
    return f".{adapter}." in name and "lora_" in name


class SharedBase:
    """Builds the four adapters on one base and hands out the objects TRL's `PPOTrainer` takes.

    Args:
        base (`PreTrainedModel`):
            The causal LM, loaded once (4-bit or not).
        sft_adapter (`Path`, *optional*):
            SFT output; initializes `policy` and is the frozen `reference`.
        reward_adapter (`Path`):
            Reward-model output (LoRA + score head + `reward_normalization.json`).
        policy_lora (`LoraConfig`, *optional*):
            LoRA for the policy when there is no SFT adapter.
        more_reward_adapters (`list[Path]`, *optional*):
            Further reward-model outputs: with any, the reward is an ensemble of `reward_adapter` and these, each a
            frozen adapter (+ head) on the same base, combined by `ensemble_method` (`ENSEMBLE_REWARDS`) with
            `ensemble_coef`. The value function starts from `reward_adapter` alone.
        value_head_init (`str`, *optional*, defaults to `"reward"`):
            `reward`: the value head starts as the reward model's score head (InstructGPT's initialization).
            `zero`: the value adapter still starts from `reward_adapter`, the head at zero, so the value function
            predicts 0 for every prefix until it has learned otherwise (`VALUE_HEAD_INITS`).
        top_layers (`int`, *optional*):
            Train the policy's and the value's LoRA weights in the top N transformer layers only: the lower layers
            keep their starting values (the SFT adapter's and the reward adapter's) and back-propagation stops below
            them (`instructrl.reward.train_top_layers`). `None`: every layer the adapters have.
    """

    def __init__(
        self,
        base: PreTrainedModel,
        reward_adapter: Path,
        sft_adapter: Path | None = None,
        policy_lora: LoraConfig | None = None,
        more_reward_adapters: list[Path] | None = None,
        ensemble_method: str = "mean_minus_std",
        ensemble_coef: float = 1.0,
        value_head_init: str = "reward",
        top_layers: int | None = None,
    ):
        if value_head_init not in VALUE_HEAD_INITS:
            raise ConfigError(
                f"`value_head_init` is {value_head_init!r}; choose one of {', '.join(VALUE_HEAD_INITS)}."
            )
        hidden_size = base.config.hidden_size
        if sft_adapter is not None:
            shared = add_adapter_from_dir(base, POLICY, sft_adapter)
            shared = add_adapter_from_dir(shared, REFERENCE, sft_adapter)
            self.reference_adapter: str | None = REFERENCE
        else:
            if policy_lora is None:
                policy_lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
            shared = get_peft_model(base, policy_lora, adapter_name=POLICY)
            self.reference_adapter = None
        shared = add_adapter_from_dir(shared, REWARD, reward_adapter)
        shared = add_adapter_from_dir(shared, VALUE, reward_adapter)
        self.reward_adapters = [REWARD]
        for index, adapter_dir in enumerate(more_reward_adapters or [], start=1):
            self.reward_adapters.append(f"{REWARD}_{index}")
            shared = add_adapter_from_dir(shared, self.reward_adapters[-1], adapter_dir)
        self.shared: PeftModel = shared
        device = next(base.parameters()).device
        reward_dirs = [reward_adapter, *(more_reward_adapters or [])]
        self.reward_heads = [score_head_from_dir(d, hidden_size).to(device).requires_grad_(False) for d in reward_dirs]
        self.reward_head = self.reward_heads[0]
        self.value_head = score_head_from_dir(reward_adapter, hidden_size).to(device)
        if value_head_init == "zero":
            with torch.no_grad():
                self.value_head.weight.zero_(), self.value_head.bias.zero_()
        self.ensemble_method, self.ensemble_coef = ensemble_method, ensemble_coef
        self.freeze_all_but((POLICY, VALUE))
        if top_layers is not None:
            train_top_layers(self.shared, top_layers, adapters=(POLICY, VALUE))

    def freeze_all_but(self, trainable: tuple[str, ...]) -> None:
        for name, param in self.shared.named_parameters():
            param.requires_grad = any(_is_lora_of(name, a) for a in trainable)

    def adapter_parameters(self, adapter: str) -> list[nn.Parameter]:
        """The LoRA weights of one adapter (`policy`, `value`, ...) of the shared base."""
        return [param for name, param in self.shared.named_parameters() if _is_lora_of(name, adapter)]

    def policy(self) -> AdapterView:
        return AdapterView(self.shared, POLICY)

    def reference(self) -> AdapterView:
        return AdapterView(self.shared, self.reference_adapter)

    def reward_model(self) -> ScalarModel | EnsembleRewardModel:
        if len(self.reward_adapters) == 1:
            return ScalarModel(self.shared, REWARD, self.reward_head)
        return EnsembleRewardModel(
            self.shared, self.reward_adapters, self.reward_heads, self.ensemble_method, self.ensemble_coef
        )

    def value_model(self) -> ScalarModel:
        return ScalarModel(self.shared, VALUE, self.value_head)

    def save_adapter(self, name: str, output_dir: str | Path) -> None:
        """Save one adapter as a standalone PEFT adapter (`PeftModel.from_pretrained(base, output_dir)` loads it)."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        state = get_peft_model_state_dict(self.shared, adapter_name=name)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in state.items()}, str(output_dir / SAFETENSORS_WEIGHTS_NAME)
        )
        config = self.shared.peft_config[name]
        config.save_pretrained(str(output_dir))

    def save_value(self, output_dir: str | Path) -> None:
        """Save the value adapter and head (needed to resume PPO)."""
        self.save_adapter(VALUE, output_dir)
        save_file(
            {"weight": self.value_head.weight.detach().cpu(), "bias": self.value_head.bias.detach().cpu()},
            str(Path(output_dir) / "value_head.safetensors"),
        )

    def load_trainable(self, checkpoint_dir: Path) -> None:
        """Restore policy and value adapters and the value head from a checkpoint written by `InstructPPOTrainer`."""
        fix = "resume from a checkpoint this PPO run wrote, or start it again with `--overwrite`."
        for name, sub in ((POLICY, "."), (VALUE, "value")):
            load_lora_weights(self.shared, checkpoint_dir / sub, name, ModelLoadError, fix)
        head = load_file(str(checkpoint_dir / "value" / "value_head.safetensors"))
        with torch.no_grad():
            self.value_head.weight.copy_(head["weight"]), self.value_head.bias.copy_(head["bias"])
