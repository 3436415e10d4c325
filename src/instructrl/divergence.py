"""Divergence guards: stop training on a non-finite loss or gradient, before the optimizer step applies it.

A NaN that reaches the weights makes every later step NaN, and the Trainer hides it (its `logging_nan_inf_filter`
replaces a non-finite loss in the log by the running mean), so a diverged run would otherwise finish, save a broken
model and be marked complete. The guard raises `DivergenceError` instead: nothing further is saved, checkpoints already
written stay, and the stage stays marked as running, i.e. interrupted once the process exits, so `make pipeline` runs
it again rather than build on it. PPO's own checks (including its KL ceiling) live in `instructrl.ppo`.
"""

import math

import torch
from transformers import TrainerCallback

from .errors import DivergenceError

ADVICE = "Lower the learning rate, or check the data; checkpoints written before this step are kept."


def gradients_finite(parameters) -> bool:
    """Whether every gradient of `parameters` is finite (one device sync for all of them)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return True
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())


def check_gradients(parameters, where: str) -> None:
    """Raise `DivergenceError` if a gradient of `parameters` is NaN or infinite."""
    if not gradients_finite(parameters):
        raise DivergenceError(f"Training diverged at {where}: a gradient is NaN or infinite. {ADVICE}")


def check_value(name: str, value: float | torch.Tensor, where: str) -> None:
    """Raise `DivergenceError` if the scalar `value` (a loss) is NaN or infinite."""
    value = float(value)
    if not math.isfinite(value):
        raise DivergenceError(f"Training diverged at {where}: {name} is {value}. {ADVICE}")


class DivergenceGuard(TrainerCallback):
    """For `transformers.Trainer` (SFT, RM): check the gradients before every optimizer step, and the logged loss."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        # fp16 loss scaling produces infinite gradients by design: its scaler skips those steps itself.
        if model is not None and not args.fp16:
            check_gradients(model.parameters(), f"optimizer step {state.global_step + 1}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            if logs and key in logs and logs[key] is not None:
                check_value(key, logs[key], f"step {state.global_step}")
