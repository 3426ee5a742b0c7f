"""HTTP throughput and latency of a real `spa-serve` process, against raw backbone throughput.

Starts spa-serve on a free loopback port with a freshly exported VGG16-SPA (200 classes, random
weights: speed does not depend on them) and sends 500 x 375 JPEGs from 1, 4 and 16 concurrent
clients. At the batch size the server used, it also measures in this process, with the server
idle: onnxruntime alone on pre-made (B, 3, 224, 224) tensors of the same images ("backbone"), and
Localizer.localize alone on decoded images ("pipeline": backbone + SCG + resize + boxes).
HTTP and in-process measurements alternate in short slices, so that other load on the machine
weighs on both sides of each ratio alike. Results go to BENCHMARKS.md (section "http").

    python -m bench.bench_http [--model-dir DIR] [--seconds 30] [--no-report]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from spa_service.card import load_card
from spa_service.pipeline.engine import Engine
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.pipeline.preprocess import preprocess
from spa_service.settings import Settings
from spa_service.threads import limit_blas_threads

IMAGE_SIZE = (500, 375)
TARGET = 0.90  # of raw backbone throughput, at 4+ clients


@dataclass
class Rate:
    images: float = 0.0
    seconds: float = 0.0

    def add(self, images: float, seconds: float) -> None:
        self.images += images
        self.seconds += seconds

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


@dataclass
class Level:
    """One concurrency level, summed over its slices."""

    clients: int
    http: Rate = field(default_factory=Rate)
    batch: int = 1  # the server's mean batch size in the first slice: the in-process batch size
    backbone: Rate = field(default_factory=Rate)
    pipeline: Rate = field(default_factory=Rate)
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    backbone_calls: float = 0.0
    batched_images: float = 0.0

    @property
    def mean_batch(self) -> float:
        return self.batched_images / max(1.0, self.backbone_calls)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Distinct 500 x 375 JPEGs (quality 90): smooth blobs and noise, about the size of a photo."""
    rng = np.random.default_rng(seed)
    width, height = IMAGE_SIZE
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    images = []
    for _ in range(count):
        pixels = rng.normal(90, 25, (height, width, 3)).astype(np.float32)
        for _ in range(4):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(30, 150)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
            pixels += blob[..., None] * rng.uniform(-80, 140, 3).astype(np.float32)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def export_vgg16(out_dir: Path) -> Path:
    import torch  # export only: the server and the measurements never need it
    from spa_export.nets import build_model
    from spa_export.to_onnx import export_model

    torch.manual_seed(0)
    export_model(build_model("vgg16", 200), arch="vgg16", out_dir=out_dir, name="vgg16-spa-bench")
    return out_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_module(root: Path | None = None) -> str:
    """The module that is spa-serve in the spa_service under `root` (default: the installed one); checkouts
    from before the package's layers had it at the top, which a --baseline may be."""
    if root is not None and not (root / "spa_service" / "http" / "cli.py").exists():
        return "spa_service.cli"
    return "spa_service.http.cli"


def status_mb(pid: int, field_name: str) -> float:
    """A memory figure of process `pid` from /proc/PID/status (VmRSS, VmHWM, ...), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field_name}")


def post_image(connection: http.client.HTTPConnection, body: bytes, path: str = "/v1/localize") -> int:
    """POST a JPEG body to `path` on a kept-alive connection: the status (the answer is read and dropped).

    The standard library's client: it costs the machine a fraction of what httpx does per request, and
    on 2 cores the client's work is taken from the server it measures (docs/performance.md)."""
    connection.request("POST", path, body=body, headers={"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    response.read()
    return response.status


def start_server(model_dir: Path | None, port: int, log_path: Path, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 120.0, module: str | None = None) -> subprocess.Popen:
    """spa-serve (as `python -m`, which also works where the package was installed without its scripts)
    on `port` with `model_dir` (None: its default models), once /readyz answers 200."""
    command = [sys.executable, "-m", module or serve_module(), *(["--model-dir", str(model_dir)] if model_dir else []),
               "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"spa-serve exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit(f"spa-serve not ready after {ready_timeout_s:.0f} s:\n{log_path.read_text()[-3000:]}")


def batch_counts(metrics_text: str) -> tuple[float, float]:
    """(backbone calls, images in them) from the server's spa_batch_size histogram, summed over its
    models; (0, 0) before the first batch (a labelled histogram has no samples until then)."""
    calls = images = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name == "spa_batch_size":
            for sample in family.samples:
                if sample.name == "spa_batch_size_count":
                    calls += sample.value
                elif sample.name == "spa_batch_size_sum":
                    images += sample.value
    return calls, images


async def http_slice(client: httpx.AsyncClient, images: list[bytes], level: Level, seconds: float,
                     max_requests: int) -> None:
    """`level.clients` clients, each posting one image after another, for `seconds`."""
    calls_before, images_before = batch_counts((await client.get("/metrics")).text)
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        while time.perf_counter() < deadline and issued < max_requests:
            issued += 1
            t0 = time.perf_counter()
            response = await post(client, images, issued)
            if response.status_code == 200:
                level.latencies_ms.append((time.perf_counter() - t0) * 1e3)
            else:
                level.errors += 1

    started = time.perf_counter()
    done_before = len(level.latencies_ms)
    await asyncio.gather(*(worker() for _ in range(level.clients)))
    level.http.add(len(level.latencies_ms) - done_before, time.perf_counter() - started)
    calls_after, images_after = batch_counts((await client.get("/metrics")).text)
    level.backbone_calls += calls_after - calls_before
    level.batched_images += images_after - images_before


async def post(client: httpx.AsyncClient, images: list[bytes], i: int) -> httpx.Response:
    return await client.post("/v1/localize", content=images[i % len(images)], headers={"Content-Type": "image/jpeg"})


def _repeat(fn: Callable[[], object], seconds: float) -> tuple[int, float]:
    runs = 0
    started = time.perf_counter()
    while runs < 2 or time.perf_counter() - started < seconds:
        fn()
        runs += 1
    return runs, time.perf_counter() - started


class InProcess:
    """The same model in this process at one batch size: onnxruntime alone (the server's own
    session settings) and Localizer.localize alone."""

    def __init__(self, model_dir: Path, images: list[bytes], batch: int) -> None:
        card, onnx_path = load_card(model_dir)
        self.batch = batch
        self.engine = Engine(onnx_path, card, providers="cpu")
        self.localizer = Localizer.from_settings(Settings(model_dir=model_dir, max_batch_size=batch))
        self.decoded = [decode_image(images[i % len(images)], max_pixels=10**8) for i in range(batch)]
        self.tensor = preprocess(self.decoded, input_size=card.input_size, mean=card.mean, std=card.std)
        self.options = [LocalizeOptions()] * batch
        _repeat(self._backbone, 0)  # warm-up
        _repeat(self._pipeline, 0)

    def _backbone(self) -> None:
        self.engine.run(self.tensor)

    def _pipeline(self) -> None:
        self.localizer.localize(self.decoded, self.options)

    def measure(self, level: Level, seconds: float) -> None:
        runs, elapsed = _repeat(self._backbone, seconds / 2)
        level.backbone.add(runs * self.batch, elapsed)
        runs, elapsed = _repeat(self._pipeline, seconds / 2)
        level.pipeline.add(runs * self.batch, elapsed)


async def measure_level(url: str, images: list[bytes], model_dir: Path, clients: int, args: argparse.Namespace,
                        in_process: dict[int, InProcess]) -> Level:
    """HTTP slices alternating with in-process measurements at the batch size of the first slice."""
    level = Level(clients)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        await asyncio.gather(*(post(client, images, i) for i in range(clients)))  # connections open
        for i in range(args.slices):
            await http_slice(client, images, level, args.seconds / args.slices, args.max_requests)
            if i == 0:
                level.batch = max(1, round(level.mean_batch))
                if level.batch not in in_process:
                    in_process[level.batch] = InProcess(model_dir, images, level.batch)
            # Blocks the event loop on purpose: no request is in flight, the server is idle.
            in_process[level.batch].measure(level, args.raw_seconds / args.slices)
    return level


def markdown(levels: list[Level], command: str, model_dir: Path, load: tuple[float, float], title: str) -> str:
    card, _ = load_card(model_dir)
    rows = [
        "| clients | requests | errors | req/s | p50 ms | p99 ms | mean batch | backbone alone, img/s "
        "| pipeline alone, img/s | HTTP / backbone | HTTP / pipeline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdict = []
    for level in levels:
        rps, backbone, pipeline = level.http.per_second, level.backbone.per_second, level.pipeline.per_second
        rows.append(
            f"| {level.clients} | {level.http.images:.0f} | {level.errors} | {rps:.2f} | {level.percentile(50):.0f} "
            f"| {level.percentile(99):.0f} | {level.mean_batch:.2f} | {backbone:.2f} (B={level.batch}) "
            f"| {pipeline:.2f} (B={level.batch}) | {rps / backbone:.0%} | {rps / pipeline:.0%} |"
        )
        if level.clients >= 4:
            meets = "meets" if rps / backbone >= TARGET else "misses"
            verdict.append(f"- {level.clients} clients: {rps / backbone:.0%} of the raw backbone "
                           f"({meets} the {TARGET:.0%} target); {rps / pipeline:.0%} of the pipeline alone.")
    return "\n".join(
        [
            f"## {title}",
            "",
            f"`{command}`",
            "",
            f"{card.name} ({card.arch}, {card.num_classes} classes, input {card.input_size[0]}x{card.input_size[1]}), "
            f"{IMAGE_SIZE[0]} x {IMAGE_SIZE[1]} JPEGs, default query (top-1, SCG, heatmap PNG), default "
            "server settings; client and server on the same machine over loopback. Backbone and pipeline "
            "alone: in-process at the server's mean batch size (one BLAS thread, as in spa-serve), alternating "
            "with the HTTP slices.",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__} (CPU), "
            f"Python {platform.python_version()}; 1-minute load average {load[0]:.1f} before the run, "
            f"{load[1]:.1f} after (other work on the machine shows up here).",
            "",
            *rows,
            "",
            *verdict,
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_http", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="an exported VGG16-SPA (default: export one now)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=30.0, help="HTTP measuring time per concurrency level")
    parser.add_argument("--max-requests", type=int, default=1000, help="at most this many requests per slice")
    parser.add_argument("--raw-seconds", type=float, default=15.0, help="in-process measuring time per level")
    parser.add_argument("--slices", type=int, default=6, help="HTTP / in-process alternations per level")
    parser.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--section", default="http", help="the BENCHMARKS.md section to write (default http)")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_http", *(argv if argv is not None else sys.argv[1:])])
    limit_blas_threads()  # the in-process pipeline then runs as it does inside spa-serve

    with tempfile.TemporaryDirectory(prefix="spa-bench-") as tmp:
        model_dir = args.model_dir or export_vgg16(Path(tmp) / "vgg16")
        load_before = os.getloadavg()[0]
        images = jpegs(16)
        port = free_port()
        server = start_server(model_dir, port, Path(tmp) / "server.log")
        levels: list[Level] = []
        in_process: dict[int, InProcess] = {}
        try:
            for clients in args.clients:
                level = asyncio.run(
                    measure_level(f"http://127.0.0.1:{port}", images, model_dir, clients, args, in_process)
                )
                levels.append(level)
                print(f"{clients:>3} clients: {level.http.per_second:.2f} req/s, p50 {level.percentile(50):.0f} ms, "
                      f"p99 {level.percentile(99):.0f} ms, mean batch {level.mean_batch:.2f}; at B={level.batch} "
                      f"backbone {level.backbone.per_second:.2f} img/s, pipeline {level.pipeline.per_second:.2f} "
                      "img/s", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        title = "HTTP service: spa-serve over loopback"
        if args.section != "http":
            title += f" ({load_card(model_dir)[0].name})"
        report = markdown(levels, command, model_dir, (load_before, os.getloadavg()[0]), title)
    print(report)
    if not args.no_report:
        from bench.report import update_section

        update_section(args.section, report)


if __name__ == "__main__":
    main()
