"""The console scripts spa-export, spa-quantize and spa-train. Each checks that the modules it needs are
installed before importing its tool (which imports them at once), so that an install without the export extra
gets one line saying what to install, exit 2, instead of a traceback."""

from __future__ import annotations

import importlib
import importlib.util
import sys

EXIT_USAGE = 2  # console.EXIT_USAGE; console imports torch, so it cannot be imported before the check

# The extra of pyproject.toml that installs each module (onnxruntime: cpu, or its CUDA build with gpu).
EXTRA_OF = {"torch": "export", "onnx": "export", "sympy": "export", "onnxruntime": "cpu"}

# program -> (its module in spa_export, the modules it imports that the runtime install lacks)
TOOLS = {
    "spa-export": ("to_onnx", ("torch", "onnx", "onnxruntime")),
    "spa-quantize": ("quantize", ("torch", "onnx", "sympy", "onnxruntime")),
    "spa-train": ("train", ("torch",)),
}


def missing_message(program: str) -> str | None:
    """One line naming the modules `program` needs that are not installed and the pip command that installs
    them; None when all are there."""
    absent = [name for name in TOOLS[program][1] if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    extras = ",".join(sorted({EXTRA_OF[name] for name in absent}, key=list(EXTRA_OF.values()).index))
    return f"{program}: {', '.join(absent)} not installed: pip install 'spa-localizer[{extras}]'"


def _run(program: str) -> int:
    message = missing_message(program)
    if message is not None:
        print(message, file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    return importlib.import_module(f"spa_export.{TOOLS[program][0]}").main()


def export() -> int:
    return _run("spa-export")


def quantize() -> int:
    return _run("spa-quantize")


def train() -> int:
    return _run("spa-train")
