"""A real `spa-serve` process on a free loopback port, for end-to-end and browser tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SPA_SERVE = Path(sys.executable).with_name("spa-serve")


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def spa_serve(model_dir: Path | Sequence[Path], log_path: Path, **env: str) -> Iterator[Server]:
    """`spa-serve` on a free loopback port, serving the model directory (or several, the first the
    default), ready (warm-up done) when this yields; stopped after."""
    assert SPA_SERVE.exists(), f"{SPA_SERVE} missing: reinstall the package (pip install -e .)"
    port = free_port()
    dirs = [model_dir] if isinstance(model_dir, Path) else list(model_dir)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(SPA_SERVE), *(f"--model-dir={d}" for d in dirs), "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    server = Server(port, process, log_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"spa-serve exited early:\n{server.log()}"
            assert time.monotonic() < deadline, f"spa-serve never became ready:\n{server.log()}"
            try:
                if httpx.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        yield server
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def wait_for(condition, timeout_s: float = 30.0) -> None:
    """Poll `condition()` until it holds; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.02)
