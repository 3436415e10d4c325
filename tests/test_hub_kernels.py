"""No compiled kernels from the Hugging Face Hub unless asked: `kernels.get_kernel` refuses after `import instructrl`.

Each check runs in a fresh interpreter: the guard acts on the first import of `kernels` and bitsandbytes, which this
test process has long done.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from instructrl.hub_kernels import ALLOW_ENV

pytest.importorskip("kernels")

ROOT = Path(__file__).resolve().parents[1]
TRAINING_RECIPES = ["sft.py", "collect.py", "rm.py", "rm_eval.py", "ppo.py", "eval.py"]


def run_python(code: str, allow: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != ALLOW_ENV}
    if allow:
        env[ALLOW_ENV] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_get_kernel_refuses_by_default_and_names_the_switch():
    out = run_python(
        "import instructrl, kernels\n"
        "try:\n"
        "    kernels.get_kernel('kernels-community/quantization-bitsandbytes', version=1)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("HubKernelRefused"), out.stdout
    assert "kernels-community/quantization-bitsandbytes" in out.stdout
    assert ALLOW_ENV in out.stdout


def test_guard_also_acts_when_kernels_was_imported_first():
    out = run_python("import kernels, instructrl\nprint(kernels.get_kernel.__module__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "instructrl.hub_kernels"


def test_the_switch_leaves_kernels_untouched():
    out = run_python("import instructrl, kernels\nprint(kernels.get_kernel.__module__)", allow=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("kernels."), out.stdout


SPY = """
import runpy, sys

class Spy:
    def find_spec(self, name, path, target=None):
        if name == "bitsandbytes":
            print("guard installed before bitsandbytes:", "instructrl.hub_kernels" in sys.modules)
        return None

sys.meta_path.insert(0, Spy())
runpy.run_path("recipes/{recipe}", run_name="not_main")
import bitsandbytes.backends.cpu.ops as ops
from bitsandbytes.functional import has_avx512bf16
print("avx512bf16", bool(has_avx512bf16()))
print("kernel", getattr(ops, "gemm_4bit_forward_kernel", None))
"""


@pytest.mark.parametrize("recipe", TRAINING_RECIPES)
def test_recipes_install_the_guard_before_bitsandbytes_is_imported(recipe):
    """Loading a recipe imports trl and peft, and so bitsandbytes, whose CPU backend may ask `kernels` at import."""
    out = run_python(SPY.format(recipe=recipe))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    assert "guard installed before bitsandbytes: True" in lines, out.stdout
    assert "kernel None" in lines
    if "avx512bf16 True" in lines:
        # Where bitsandbytes does ask (AVX512-BF16 CPUs), it caught the refusal and logged it: nothing downloaded.
        assert "instructrl did not download the compiled kernel" in out.stderr, out.stderr[-2000:]


FORCE_AVX512BF16 = """
import runpy, sys

class Spy:  # bitsandbytes asks for its Hub kernel only on AVX512-BF16 CPUs: make this one look like one
    def find_spec(self, name, path, target=None):
        if name == "bitsandbytes.backends.cpu.ops":
            sys.modules["bitsandbytes.functional"].has_avx512bf16 = lambda: True
        return None

sys.meta_path.insert(0, Spy())
runpy.run_path("recipes/ppo.py", run_name="not_main")
import bitsandbytes.backends.cpu.ops as ops
print("kernel", ops.gemm_4bit_forward_kernel)
"""


def test_bitsandbytes_asking_for_its_kernel_is_refused_before_any_download():
    out = run_python(FORCE_AVX512BF16)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "kernel None" in out.stdout.split("\n")
    # bitsandbytes caught the refusal and logged it: the call never reached the Hub.
    assert "instructrl did not download the compiled kernel 'kernels-community/" in out.stderr, out.stderr[-2000:]
