"""No compiled kernels fetched from the Hugging Face Hub unless the user asks for them.

bitsandbytes 0.50 on a CPU with AVX512-BF16 calls `kernels.get_kernel("kernels-community/...")` while it is being
imported (peft imports it, and trl imports peft): online, that downloads compiled code from the Hub and runs it in
this process, although the user never turned `trust_remote_code` on. instructrl never uses that kernel (4-bit weights
stay trainable on CPU through the dequantizing path, see `modeling.keep_4bit_weights_trainable_on_cpu`), and its
model loaders already pass `use_kernels=False` to transformers. So, by default, `kernels.get_kernel` refuses with a
message naming the switch; bitsandbytes catches the refusal, logs it once and uses its own code.

`import instructrl` installs the guard, so a recipe imports `instructrl` before anything that imports bitsandbytes.
Set `INSTRUCTRL_ALLOW_HUB_KERNELS=1` to leave `kernels` untouched.
"""

import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType

ALLOW_ENV = "INSTRUCTRL_ALLOW_HUB_KERNELS"
_TRUE = {"1", "true", "yes", "on"}


class HubKernelRefused(RuntimeError):
    """`kernels.get_kernel` was called while Hub kernels are off (the default)."""


def _refuse(repo_id: str = "?", *args, **kwargs):
    raise HubKernelRefused(
        f"instructrl did not download the compiled kernel {repo_id!r} from the Hugging Face Hub (remote code the "
        f"run did not ask for); set {ALLOW_ENV}=1 to allow it"
    )


def guard(module: ModuleType) -> None:
    """Make an imported `kernels` module refuse `get_kernel`."""
    module.get_kernel = _refuse


class _KernelsFinder(importlib.abc.MetaPathFinder):
    """Guards the `kernels` module as soon as it is imported, without importing it (or torch) before it is needed."""

    def find_spec(self, name, path, target=None):
        if name != "kernels":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def load_then_guard(module: ModuleType) -> None:
            load(module)
            guard(module)

        spec.loader.exec_module = load_then_guard
        return spec


def allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in _TRUE


def refuse_hub_kernels() -> None:
    """Install the guard (idempotent); a no-op with `INSTRUCTRL_ALLOW_HUB_KERNELS=1`."""
    if allowed():
        return
    if "kernels" in sys.modules:
        guard(sys.modules["kernels"])
    elif not any(isinstance(finder, _KernelsFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KernelsFinder())
