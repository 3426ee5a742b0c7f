"""Reduced-scale JPEG decoding (SPA_JPEG_DRAFT) against the exact path: do answers change?

For each photo, upscaled (bicubic) to several sizes and re-encoded as JPEG quality 90 (no large
real photos are at hand), the real-photo model localizes it three times in process: decoded at
full scale (the exact path), decoded at a reduced DCT scale (`decode_for_model(draft=True)`), and
decoded at full scale with -1, 0 or +1 grey level of random noise added to every pixel value (an
imperceptible change: the yardstick of how far any approximate decode can agree). Reported per
size: top-1 class agreement, the share of top-1 boxes at IoU >= 0.9 with the exact path's, and
the decode + resize milliseconds of the exact and drafted paths (medians). Photos: the project's real
photos (tests/data, the model's samples) and, with --photos DIR, the first --limit JPEGs of DIR
(e.g. ../shared/realdata/imagenet-val-tune/images: figures may be reported, images never committed).

    python -m bench.bench_draft [--photos DIR] [--limit 100] [--no-report]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from spa_service.offline.evaluation.metrics import box_iou
from spa_service.pipeline.imaging import DRAFT_MARGIN, DecodedImage, decode_for_model, decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import Settings
from spa_service.threads import limit_blas_threads

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "imagenet-lite0"
MEGAPIXELS = (2, 6, 12, 24)
AGREEMENT_FLOOR = 0.995  # top-1 class agreement, for the setting to be on by default
IOU = 0.9
IOU_FLOOR = 0.98  # share of top-1 boxes at IoU >= 0.9


def photo_paths(extra: Path | None, limit: int) -> list[Path]:
    paths = sorted({p.name: p for p in [*(ROOT / "tests" / "data").glob("*.jpg"),
                                        *(MODEL_DIR / "samples").glob("*.jpg")]}.values())
    if extra is not None:
        paths += sorted(p for p in extra.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))[:limit]
    return paths


def upscaled_jpeg(path: Path, megapixels: float) -> bytes:
    image = Image.open(path).convert("RGB")
    scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    size = (round(image.width * scale), round(image.height * scale))
    buffer = io.BytesIO()
    image.resize(size, Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def top1(localizer: Localizer, data: bytes, draft: bool) -> tuple[int, tuple[int, int, int, int], float]:
    t0 = time.perf_counter()
    decoded = decode_for_model(data, max_pixels=10**9, input_size=localizer.card.input_size, draft=draft)
    decode_ms = (time.perf_counter() - t0) * 1e3
    return *answer(localizer, decoded), decode_ms


def answer(localizer: Localizer, decoded: DecodedImage) -> tuple[int, tuple[int, int, int, int]]:
    prediction = localizer.localize([decoded], [LocalizeOptions()])[0].predictions[0]
    return prediction.class_id, tuple(prediction.boxes[0])


def noisy_top1(localizer: Localizer, data: bytes, rng: np.random.Generator) -> tuple[int, tuple[int, int, int, int]]:
    """The exact path with -1, 0 or +1 added at random to every full-size pixel value before the resize."""
    full = decode_image(data, max_pixels=10**9)
    pixels = np.asarray(full.image, dtype=np.int16) + rng.integers(-1, 2, size=(full.height, full.width, 3), dtype=np.int16)
    noisy = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    height, width = localizer.card.input_size
    resized = noisy.resize((width, height), Image.BILINEAR)
    return answer(localizer, DecodedImage(image=resized, format=full.format, original_size=(full.height, full.width)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_draft", description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, help="a folder of more photos (JPEG)")
    parser.add_argument("--limit", type=int, default=100, help="at most this many photos of --photos")
    parser.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_draft", *(argv if argv is not None else sys.argv[1:])])
    limit_blas_threads()
    localizer = Localizer.from_settings(Settings(model_dir=MODEL_DIR, max_batch_size=1))
    paths = photo_paths(args.photos, args.limit)
    rows = {mp: {"same": 0, "iou": 0, "noise_same": 0, "noise_iou": 0, "n": 0, "exact_ms": [], "draft_ms": []}
            for mp in MEGAPIXELS}
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()[0]
    for k, path in enumerate(paths):
        for mp in MEGAPIXELS:
            data = upscaled_jpeg(path, mp)
            exact_class, exact_box, exact_ms = top1(localizer, data, draft=False)
            draft_class, draft_box, draft_ms = top1(localizer, data, draft=True)
            row = rows[mp]
            row["n"] += 1
            row["same"] += exact_class == draft_class
            row["iou"] += exact_class == draft_class and box_iou(np.array([draft_box]), np.array([exact_box]))[0, 0] >= IOU
            noise_class, noise_box = noisy_top1(localizer, data, rng)
            row["noise_same"] += exact_class == noise_class
            row["noise_iou"] += exact_class == noise_class and box_iou(np.array([noise_box]), np.array([exact_box]))[0, 0] >= IOU
            row["exact_ms"].append(exact_ms)
            row["draft_ms"].append(draft_ms)
        if (k + 1) % 10 == 0:
            print(f"{k + 1}/{len(paths)} photos", flush=True)
    lines = [
        "| size | photos | top-1 agreement | top-1 box IoU >= 0.9 | with +-1 noise: top-1 | with +-1 noise: box IoU >= 0.9 "
        "| exact decode ms | drafted decode ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    passes = noise_passes = True
    for mp, row in rows.items():
        same, iou = row["same"] / row["n"], row["iou"] / row["n"]
        passes &= same >= AGREEMENT_FLOOR and iou >= IOU_FLOOR
        noise_passes &= row["noise_same"] / row["n"] >= AGREEMENT_FLOOR and row["noise_iou"] / row["n"] >= IOU_FLOOR
        noise_same, noise_iou = row["noise_same"] / row["n"], row["noise_iou"] / row["n"]
        lines.append(f"| {mp} MP | {row['n']} | {same:.1%} ({row['same']}/{row['n']}) | {iou:.1%} ({row['iou']}/{row['n']}) "
                     f"| {noise_same:.1%} | {noise_iou:.1%} "
                     f"| {statistics.median(row['exact_ms']):.0f} | {statistics.median(row['draft_ms']):.0f} |")
    source = "the project's real photos (tests/data, the model's samples)"
    if args.photos:
        source += f" and the first {args.limit} JPEGs of {args.photos.name if args.photos.name != 'images' else args.photos.parent.name}"
    report = "\n".join([
        "## Reduced-scale JPEG decoding against the exact path (imagenet-lite0)",
        "",
        f"`{command}`",
        "",
        f"Photos: {source}, each upscaled (bicubic) to every size and re-encoded as JPEG q90 (no large real "
        f"photos are at hand). Draft: libjpeg DCT scaling to no less than {DRAFT_MARGIN}x the model's input per "
        "side, then PIL bilinear to the input; exact: full-scale decode, then the same resize. Top-1 box: the "
        "default query's box of the top-1 class, counted only when both paths agree on the class. Decode ms: "
        f"decode + resize to the input, medians. {platform.machine()}, {len(os.sched_getaffinity(0))} cores; "
        f"load average {load_before:.1f} before the run.",
        "",
        *lines,
        "",
        f"Floors for default on: top-1 agreement >= {AGREEMENT_FLOOR:.1%} and top-1 box IoU >= {IOU} on >= "
        f"{IOU_FLOOR:.0%} at every size: {'met' if passes else 'not met'}. The noise columns apply the same "
        "measures to the exact path under an imperceptible change (every pixel value moved by -1, 0 or +1 at random): "
        f"the exact path itself, so changed, {'meets' if noise_passes else 'does not meet'} them.",
    ])
    print(report)
    if not args.no_report:
        from bench.report import update_section

        update_section("draft", report)


if __name__ == "__main__":
    main()
