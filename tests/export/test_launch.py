"""spa-export, spa-quantize and spa-train without the export extra: one line naming what to install, exit 2, no
traceback. "Not installed" is made real in a fresh interpreter: a None entry in sys.modules is what Python's
import system reads as a module that cannot be imported."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest


def run_without(modules: list[str], program: str, function: str) -> subprocess.CompletedProcess[str]:
    code = (f"import sys; sys.modules.update(dict.fromkeys({modules!r})); sys.argv = [{program!r}, '--help']; "
            f"from spa_export.launch import {function}; {function}()")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("program", "function", "absent", "line"), [
    ("spa-quantize", "quantize", ["torch"], "spa-quantize: torch not installed: pip install 'spa-localizer[export]'"),
    ("spa-quantize", "quantize", ["torch", "onnx", "sympy"],
     "spa-quantize: torch, onnx, sympy not installed: pip install 'spa-localizer[export]'"),
    ("spa-quantize", "quantize", ["sympy", "onnxruntime"],
     "spa-quantize: sympy, onnxruntime not installed: pip install 'spa-localizer[export,cpu]'"),
    ("spa-export", "export", ["onnx"], "spa-export: onnx not installed: pip install 'spa-localizer[export]'"),
    ("spa-train", "train", ["torch"], "spa-train: torch not installed: pip install 'spa-localizer[export]'"),
])
def test_missing_extra_is_one_line_and_exit_2(program: str, function: str, absent: list[str], line: str) -> None:
    result = run_without(absent, program, function)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [line]
    assert result.stdout == ""


def test_with_the_extra_the_tool_runs() -> None:
    result = run_without([], "spa-quantize", "quantize")
    assert result.returncode == 0 and "usage: spa-quantize" in result.stdout


def test_console_scripts_go_through_the_check() -> None:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    scripts = {name: value for name, value in pyproject["project"]["scripts"].items() if "spa_export" in value}
    assert scripts == {"spa-export": "spa_export.launch:export", "spa-quantize": "spa_export.launch:quantize",
                       "spa-train": "spa_export.launch:train"}
