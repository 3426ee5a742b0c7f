"""spa-batch throughput: --engine local vs --engine ray vs the HTTP service at 4 clients, and memory
over a long run.

For the bundled demo model and a freshly exported VGG16-SPA (random weights: speed does not depend
on them), on a folder of 500 x 375 JPEGs (bench_http's images), alternating in each slice:
`spa-batch --engine local` (in-process, decode threads), `spa-batch --engine ray` (a local Ray
cluster started by the run, an actor pool of one Localizer per actor) and spa-serve at 4 clients
(bench_http's clients). Each spa-batch run is a fresh process into a fresh output folder; its own
log gives the rate after the first batch (the first pays the model load, the warm-up and, for Ray,
the cluster and actor start-up) and the wall time. Then one long local run over many paths
(symbolic links to the same images) samples the process's resident memory. Results go to
BENCHMARKS.md (section "batch").

    python -m bench.bench_batch [--images 400] [--vgg16-images 48] [--long-run 10000] [--no-report]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import onnxruntime as ort
from spa_service.card import load_card
from spa_service.settings import BUNDLED_MODEL_DIR

from bench.bench_http import export_vgg16, free_port, jpegs, post, start_server

SPA_BATCH = Path(sys.executable).with_name("spa-batch")
DISTINCT_IMAGES = 64
CLIENTS = 4
_RATE_LINE = re.compile(
    r"localized (\d+) images in ([\d.]+) s \(([\d.]+) img/s; ([\d.]+) img/s after the first batch, "
    r"which came after ([\d.]+) s\)"
)


@dataclass
class Run:
    wall_s: float  # the whole process: imports, model load, cluster start, every batch
    first_batch_s: float  # from the start of the loop to the first batch written
    rate: float  # img/s after the first batch


@dataclass
class Engines:
    local: list[Run] = field(default_factory=list)
    ray: list[Run] = field(default_factory=list)
    http: list[float] = field(default_factory=list)  # req/s at CLIENTS clients


def write_folder(folder: Path, count: int) -> Path:
    """`count` JPEG files in `folder`: DISTINCT_IMAGES distinct ones, the rest symbolic links to them."""
    folder.mkdir(parents=True)
    images = jpegs(min(count, DISTINCT_IMAGES))
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        if i < len(images):
            path.write_bytes(images[i])
        else:
            path.symlink_to(folder / f"{i % len(images):06d}.jpg")
    return folder


def start_batch(source: Path, out: Path, model_dir: Path, *extra: str) -> subprocess.Popen:
    command = [str(SPA_BATCH), str(source), "--out", str(out), "--model-dir", str(model_dir), "--no-progress", *extra]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, started: float) -> Run:
    _, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"spa-batch failed ({process.returncode}):\n{stderr}")
    match = _RATE_LINE.search(stderr)
    if match is None:
        raise SystemExit(f"no rate line in spa-batch's log:\n{stderr}")
    return Run(wall_s=wall, first_batch_s=float(match[5]), rate=float(match[4]))


def run_batch(source: Path, out: Path, model_dir: Path, *extra: str) -> Run:
    started = time.perf_counter()
    return finish(start_batch(source, out, model_dir, *extra), started)


async def http_rate(port: int, images: list[bytes], requests: int) -> float:
    """req/s of CLIENTS clients, each posting one image after another, `requests` in all."""
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=300) as client:
        await asyncio.gather(*(post(client, images, i) for i in range(CLIENTS)))  # connections open
        issued = 0

        async def client_loop() -> None:
            nonlocal issued
            while issued < requests:
                issued += 1
                response = await post(client, images, issued)
                if response.status_code != 200:
                    raise SystemExit(f"HTTP {response.status_code}: {response.text}")

        started = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(CLIENTS)))
        return requests / (time.perf_counter() - started)


def compare(model_dir: Path, count: int, slices: int, tmp: Path, ray_args: list[str]) -> Engines:
    folder = write_folder(tmp / f"images-{model_dir.name}", count)
    images = jpegs(min(count, DISTINCT_IMAGES))
    port = free_port()
    server = start_server(model_dir, port, tmp / f"server-{model_dir.name}.log")
    engines = Engines()
    try:
        for i in range(slices):
            engines.local.append(run_batch(folder, tmp / f"out-{model_dir.name}-local-{i}", model_dir))
            engines.ray.append(run_batch(folder, tmp / f"out-{model_dir.name}-ray-{i}", model_dir, "--engine", "ray",
                                         *ray_args))
            engines.http.append(asyncio.run(http_rate(port, images, count)))
            print(f"{model_dir.name} slice {i + 1}/{slices}: local {engines.local[-1].rate:.2f} img/s, "
                  f"ray {engines.ray[-1].rate:.2f} img/s, HTTP {engines.http[-1]:.2f} req/s", flush=True)
    finally:
        server.terminate()
        server.wait(60)
    return engines


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


@dataclass
class LongRun:
    images: int
    run: Run
    samples: list[tuple[int, float]]  # (rows written so far, RSS MB)


def long_run(count: int, tmp: Path) -> LongRun:
    folder = write_folder(tmp / "images-long", count)
    out = tmp / "out-long"
    started = time.perf_counter()
    process = start_batch(folder, out, BUNDLED_MODEL_DIR, "--batch-size", "8")
    samples: list[tuple[int, float]] = []
    while process.poll() is None:
        rss = rss_mb(process.pid)
        if rss is not None:
            samples.append((8 * len(list(out.glob("part-*"))) if out.is_dir() else 0, rss))
        time.sleep(1.0)
    return LongRun(count, finish(process, started), samples)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def markdown(results: dict[Path, Engines], counts: dict[Path, int], long: LongRun | None, command: str,
             ray_args: list[str], load: tuple[float, float]) -> str:
    rows = [
        "| model | images | local, img/s | ray, img/s | HTTP 4 clients, req/s | local / ray | local / HTTP "
        "| local wall s | ray wall s | ray first batch s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model_dir, engines in results.items():
        card, _ = load_card(model_dir)
        local, ray = _median([r.rate for r in engines.local]), _median([r.rate for r in engines.ray])
        http = _median(engines.http)
        rows.append(
            f"| {card.name} | {counts[model_dir]} | {local:.2f} | {ray:.2f} | {http:.2f} | {local / ray:.2f} "
            f"| {local / http:.2f} | {_median([r.wall_s for r in engines.local]):.1f} "
            f"| {_median([r.wall_s for r in engines.ray]):.1f} | {_median([r.first_batch_s for r in engines.ray]):.1f} |"
        )
    lines = [
        "## spa-batch: local engine, Ray Data engine, HTTP service",
        "",
        f"`{command}`",
        "",
        f"500 x 375 JPEGs ({DISTINCT_IMAGES} distinct), default options (top-1, SCG, union box, no heatmaps), "
        "batch size 8. local: `spa-batch --engine local` (onnxruntime on every core, 2 decode threads). "
        f"ray: `spa-batch --engine ray {shlex.join(ray_args)}` on a local Ray cluster the run starts. "
        f"HTTP: spa-serve with its default settings, {CLIENTS} clients over loopback, each image once "
        "(the API's default query also encodes a heatmap PNG per image). Rates are after each run's first "
        f"batch, medians of {len(next(iter(results.values())).local)} alternating slices; wall time is the "
        "whole spa-batch process (model load, Ray start-up).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__} (CPU), "
        f"Python {platform.python_version()}; 1-minute load average {load[0]:.1f} before the run, {load[1]:.1f} "
        "after (the machine was shared with other work; it weighs on every column alike only roughly).",
        "",
        *rows,
    ]
    if long is not None and long.samples:
        first = next((rss for rows_done, rss in long.samples if rows_done >= long.images // 10), long.samples[0][1])
        peak = max(rss for _, rss in long.samples)
        last = long.samples[-1][1]
        lines += [
            "",
            f"Memory, one local run over {long.images:,} paths (the demo model, {DISTINCT_IMAGES} distinct images "
            f"behind symbolic links): resident set {first:.0f} MB after the first 10% of the images, "
            f"{last:.0f} MB at the end, {peak:.0f} MB at most ({len(long.samples)} samples, one a second); "
            f"{long.run.rate:.1f} img/s, {long.run.wall_s:.0f} s in all.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="images per run with the demo model")
    parser.add_argument("--vgg16-images", type=int, default=48, help="images per run with VGG16-SPA (0: skip it)")
    parser.add_argument("--vgg16-dir", type=Path, help="an exported VGG16-SPA (default: export one now)")
    parser.add_argument("--slices", type=int, default=3, help="local / ray / HTTP alternations per model")
    parser.add_argument("--long-run", type=int, default=10_000, help="paths of the memory run (0: skip it)")
    parser.add_argument("--ray-actors", type=int, default=2)
    parser.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_batch", *(argv if argv is not None else sys.argv[1:])])
    ray_args = ["--ray-actors", str(args.ray_actors), "--ray-cpus-per-actor", f"{os.cpu_count() / args.ray_actors:g}"]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="spa-bench-batch-") as name:
        tmp = Path(name)
        counts = {BUNDLED_MODEL_DIR: args.images}
        if args.vgg16_images:
            counts[args.vgg16_dir or export_vgg16(tmp / "vgg16")] = args.vgg16_images
        results = {model: compare(model, count, args.slices, tmp, ray_args) for model, count in counts.items()}
        long = long_run(args.long_run, tmp) if args.long_run else None
        report = markdown(results, counts, long, command, ray_args, (load_before, os.getloadavg()[0]))  # reads the cards
    print(report)
    if not args.no_report:
        from bench.report import update_section

        update_section("batch", report)


if __name__ == "__main__":
    main()
