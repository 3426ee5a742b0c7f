"""Backbone time of the bundled real-photo model (models/imagenet-lite0, EfficientNet-Lite0 at 224), through the
service's onnxruntime engine, at batch 1 and batch 8 measured alternately in one run: wall time with the
service's default threads, and the CPU time of a one-thread engine (onnxruntime then computes in the calling
thread, so time.thread_time counts its work and not the waiting a busy machine adds).

Run from the repository root (writes its section of BENCHMARKS.md):
    python -m bench.bench_photo_model [--repeat 60]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import onnxruntime as ort
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import Localizer
from spa_service.pipeline.preprocess import preprocess
from spa_service.settings import Settings

from bench.report import update_section

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "imagenet-lite0"
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
BATCHES = (1, 8)
WARMUP = 5


def measure(repeat: int) -> dict[tuple[str, int], list[float]]:
    """Per (engine, batch size), `repeat` times in ms per image of one engine call; all of them take turns.

    Engine "default": the service's threads, wall time; "1 thread": CPU time of the calling thread."""
    engines = {"default": Localizer.from_settings(Settings(model_dir=MODEL)),
               "1 thread": Localizer.from_settings(Settings(model_dir=MODEL, intra_op_threads=1))}
    clocks = {"default": time.perf_counter, "1 thread": time.thread_time}
    card = engines["default"].card
    image = decode_image(PHOTO.read_bytes(), max_pixels=10**8)
    batches = {n: preprocess([image] * n, input_size=card.input_size, mean=card.mean, std=card.std) for n in BATCHES}
    for localizer in engines.values():
        for n in BATCHES:
            for _ in range(WARMUP):
                localizer.engine.run(batches[n])
    times: dict[tuple[str, int], list[float]] = {(e, n): [] for e in engines for n in BATCHES}
    for _ in range(repeat):
        for (name, n), values in times.items():
            clock = clocks[name]
            start = clock()
            engines[name].engine.run(batches[n])
            values.append((clock() - start) * 1000 / n)
    return times


def report(times: dict[tuple[str, int], list[float]], repeat: int) -> str:
    load = os.getloadavg()
    lines = [
        "## Real-photo model: backbone (EfficientNet-Lite0, 224 x 224, 7 x 7 maps)",
        "",
        f"`python -m bench.bench_photo_model --repeat {repeat}` on {datetime.date.today()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, onnxruntime {ort.__version__}, "
        f"CPU provider; load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        "(a shared machine: compare rows of this run, not runs).",
        "",
        "| engine | measured | batch | median ms / image | p90 ms / image |",
        "|---|---|---|---|---|",
    ]
    for (name, n), values in times.items():
        what = "wall" if name == "default" else "CPU time"
        lines.append(f"| {name} | {what} | {n} | {statistics.median(values):.1f} "
                     f"| {statistics.quantiles(values, n=10)[-1]:.1f} |")
    ratio = statistics.median(times["default", 1]) / statistics.median(times["default", BATCHES[-1]])
    lines += ["", f"With the default threads, batch {BATCHES[-1]} gives {ratio:.2f}x the images per second of "
              "batch 1. The backbone call only: decoding, preprocessing, SCG and boxes are not in these figures."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=60)
    args = parser.parse_args()
    markdown = report(measure(args.repeat), args.repeat)
    print(markdown)
    update_section("photo-model", markdown, ROOT / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
