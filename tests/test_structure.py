"""Module homes: training never pulls in plotting, sampling never pulls in the reward model's module."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "module, forbidden",
    [
        ("instructrl.ppo", "matplotlib"),
        ("instructrl.generation", "instructrl.reward"),
        ("instructrl.generation", "matplotlib"),
        ("instructrl.report", "matplotlib"),  # plotting is imported when a plot is drawn, not to format a table
        ("instructrl.data.rows", "instructrl.reward"),
    ],
)
def test_importing_a_module_does_not_import(module, forbidden):
    loaded = f"any(m == {forbidden!r} or m.startswith({forbidden!r} + '.') for m in sys.modules)"
    code = f"import sys, {module}; print({loaded})"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"
