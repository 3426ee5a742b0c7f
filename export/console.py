"""What spa-train and spa-export share at the command line: one-line errors, logging, a progress line, device."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import NoReturn

import torch

EXIT_FAILURE = 1  # the command ran and something went wrong (e.g. ONNX parity)
EXIT_USAGE = 2  # bad arguments or an input that does not fit (as argparse uses 2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its usage text left out of errors: every error is one line on stderr."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see --help)", EXIT_USAGE)


def fail(message: str, code: int) -> NoReturn:
    """Print one line to stderr and exit; for errors a user can act on, never a traceback."""
    print(message.replace("\n", " "), file=sys.stderr)
    raise SystemExit(code)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)


def select_device(name: str = "auto") -> torch.device:
    """cuda when it is available (or asked for), else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


class ProgressLine:
    """A single line on stderr, rewritten in place; silent when stderr is not a terminal (logs, CI)."""

    def __init__(self, total: int, enabled: bool | None = None) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.start = time.monotonic()

    def update(self, done: int, text: str = "") -> None:
        if not self.enabled:
            return
        width = 30
        filled = width * done // max(self.total, 1)
        rate = done / max(time.monotonic() - self.start, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else 0.0
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{self.total} "
                         f"{rate:.1f} it/s eta {eta:.0f}s {text}\x1b[K")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
