"""SCG post-process timings, float32, against the per-image, per-class loops of the same math.

Run from the repository root (writes its section of BENCHMARKS.md):
    python bench/bench_scg.py      (or: python -m bench.bench_scg)
Timed: normalize_cam + step-9 round trip + structure_affinity + scg_maps for the top-5 classes
of a 200-class map; the final resize and the boxes on their own lines.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # bench.report; the loop implementation and inputs

from scg_loops import (  # noqa: E402
    make_class_maps,
    make_features,
    paper_block_loops,
    reference_block_loops,
    scg_loops,
)
from spa_service.card import PRESETS  # noqa: E402
from spa_service.pipeline.boxes import boxes_of_maps  # noqa: E402
from spa_service.pipeline.localize import localization_maps  # noqa: E402
from spa_service.pipeline.resize import resize_maps  # noqa: E402
from spa_service.pipeline.scg import structure_affinity  # noqa: E402

from bench.report import update_section  # noqa: E402

ORIGINAL = (500, 375)  # (H, W) of the "original image"
TOPK = 5
NUM_CLASSES = 200
PARAMS = PRESETS["cub"].scg
THRESHOLD = PRESETS["cub"].box_threshold["scg"]
ARCHS = {  # name: (map size, block channels, single-image target in ms)
    "VGG16": ((14, 14), (512, 512), 3.0),
    "InceptionV3": ((28, 28), (288, 768), 25.0),
}
SPEED_UP_TARGET = 5.0


def measure(fn: Callable[[], object], repeat: int, warmup: int = 3) -> tuple[float, float]:
    """Median wall time and median process CPU time (all threads) of fn(), in ms.

    CPU time hardly moves when other processes share the cores; wall time does.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(wall) * 1e3), float(np.median(cpu) * 1e3)


def inputs(arch: str, n: int, seed: int = 0):
    (h, w), channels, _ = ARCHS[arch]
    rng = np.random.default_rng(seed)
    features = [make_features(rng, n, c, h, w) for c in channels]
    class_maps = make_class_maps(rng, n, NUM_CLASSES, h, w)
    classes = np.argsort(-class_maps.mean(axis=(2, 3)), axis=1)[:, :TOPK]
    return features, class_maps, classes, [ORIGINAL] * n


def vectorized(features, class_maps, classes, sizes, mode):
    """What the service runs for a batch: `localize.localization_maps`."""
    return localization_maps(class_maps, features, classes, sizes, ["scg"] * len(sizes), PARAMS, mode)


def loops_affinity(features, mode):
    block_loops = reference_block_loops if mode == "reference" else paper_block_loops
    return [sum(block_loops(block[n], PARAMS) for block in features) for n in range(len(features[0]))]


def blas_settings() -> list[tuple[str, Callable[[], AbstractContextManager]]]:
    """(label, context) for the default BLAS threading and, if that is more, one thread (as spa-serve runs)."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        return [("default", nullcontext)]
    default = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)
    settings: list[tuple[str, Callable[[], AbstractContextManager]]] = [(str(default), nullcontext)]
    if default != 1:
        settings.append(("1", lambda: threadpool_limits(1, user_api="blas")))
    return settings


def scg_row(arch: str, n: int, mode: str, repeat: int, threads: str) -> str:
    """One table row: whole SCG and its affinity part, vectorised and loops."""
    (h, w), channels, target = ARCHS[arch]
    features, class_maps, classes, sizes = inputs(arch, n)
    loop_repeat = max(repeat // 20, 3)
    vec, vec_cpu = measure(lambda: vectorized(features, class_maps, classes, sizes, mode), repeat)
    vec_aff, _ = measure(lambda: structure_affinity(features, PARAMS, mode), repeat)
    loops, _ = measure(
        lambda: scg_loops(features, class_maps, classes, sizes, PARAMS, mode, final_resize=False), loop_repeat, warmup=1
    )
    loops_aff, _ = measure(lambda: loops_affinity(features, mode), loop_repeat, warmup=1)
    ratio = loops / vec
    goals = []
    if n == 1 and mode == "reference":
        goals.append(f"<= {target:g} ms: {'met' if vec <= target else 'MISSED'}")
    if mode == "reference":
        goals.append(f">= {SPEED_UP_TARGET:g}x: {'met' if ratio >= SPEED_UP_TARGET else 'MISSED'}")
    blocks = " + ".join(f"{c}x{h}x{w}" for c in channels)
    return (
        f"| {arch} | {mode} | {n} | {blocks} | {threads} | **{vec:.2f}** | {vec_cpu:.2f} | {vec / n:.2f} "
        f"| {vec_aff:.2f} | {loops:.1f} | {loops_aff:.1f} | **{ratio:.1f}x** | {'; '.join(goals)} |"
    )


def post_row(arch: str, repeat: int) -> str:
    """Final resize of the top-5 maps to the original size, then boxes, for one image."""
    maps = vectorized(*inputs(arch, 1), "reference")[0]
    resize, _ = measure(lambda: resize_maps(maps, ORIGINAL), repeat)
    # Boxes as the service finds them: from the maps, band by band at the original size.
    union, _ = measure(lambda: boxes_of_maps(maps, ORIGINAL, THRESHOLD, "union"), repeat)
    largest, _ = measure(lambda: boxes_of_maps(maps, ORIGINAL, THRESHOLD, "largest"), repeat)
    h, w = maps.shape[-2:]
    return (
        f"| {arch} | {TOPK} x {h}x{w} -> {TOPK} x {ORIGINAL[0]}x{ORIGINAL[1]} "
        f"| {resize:.2f} | {union:.2f} | {largest:.2f} |"
    )


def machine() -> list[str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    lines = [
        f"- CPU: {cpu}, nproc {len(os.sched_getaffinity(0))}",
        f"- Python {platform.python_version()}, numpy {np.__version__}",
    ]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines.append("- BLAS: threadpoolctl not installed (numpy.show_config() names the library)")
    else:
        lines += [
            f"- BLAS: {pool.get('internal_api')} {pool.get('version')}, kernel {pool.get('architecture', '?')}, "
            f"{pool.get('num_threads')} threads ({Path(pool['filepath']).name})"
            for pool in threadpool_info()
        ]
    names = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")
    env = ", ".join(f"{k}={os.environ[k]}" for k in names if k in os.environ)
    lines.append(f"- Environment: {env or 'none of ' + ', '.join(names) + ' set'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300, help="timed runs of the fast cases (median taken)")
    parser.add_argument("--section", default="scg", help="BENCHMARKS.md section to write")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows = []
    for threads, limit in blas_settings():
        with limit():
            for arch in ARCHS:
                repeat = args.repeat if arch == "VGG16" else max(args.repeat // 5, 10)
                rows += [scg_row(arch, 1, "reference", repeat, threads)]
                rows += [scg_row(arch, 8, "reference", max(repeat // 4, 10), threads)]
                rows += [scg_row(arch, 1, "paper", repeat, threads)]
    post = [post_row(arch, args.repeat) for arch in ARCHS]
    load_after = os.getloadavg()[0]

    command = " ".join(["python", Path(__file__).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]])
    text = "\n".join(
        [
            "## SCG post-process (bench/bench_scg.py)",
            "",
            f"`{command}` from the repository root, {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}.",
            "",
            *machine(),
            f"- 1-minute load average {load_before:.2f} before, {load_after:.2f} after (2 cores: above ~0.5 "
            "means other work shared them)",
            "",
            f"Median wall time in ms after warm-up (SCG CPU ms: median process CPU time, all threads); "
            f"float32; CUB preset (order {PARAMS.order}); top-{TOPK} of "
            f"{NUM_CLASSES} classes; original image {ORIGINAL[0]}x{ORIGINAL[1]}. SCG = normalize_cam, the "
            "step-9 round trip, structure_affinity and scg_maps, no final resize; its affinity part "
            "(steps 1-7) alone in its own column. Loops = tests/scg_loops.py, the same math per image "
            "and per class: numpy matrix products for the affinity as the authors' code has them, two "
            "cv2.resize calls per class for step 9, a Python loop over the selected positions.",
            "",
            "| backbone | mode | batch | blocks | BLAS threads | SCG ms | SCG CPU ms | per image | affinity ms "
            "| loops ms | loops affinity ms | speed-up | target |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            f"Final resize (resize_maps, all top-{TOPK} maps at once) and boxes at threshold {THRESHOLD}, one "
            "image, ms:",
            "",
            "| backbone | maps | resize | union boxes | largest boxes |",
            "|---|---|---|---|---|",
            *post,
        ]
    )
    print(text)
    if not args.no_write:
        update_section(args.section, text, args.output)


if __name__ == "__main__":
    main()
