"""The whole runtime pipeline split by stage, VGG16-SPA (fresh weights, 200 classes), batch 1.

Run from the repository root with the export extra installed (writes its section of BENCHMARKS.md):
    python -m bench.bench_pipeline
Stages: decode (Pillow, EXIF, RGB), preprocess (PIL bilinear to 224, normalise), backbone
(onnxruntime), scg (class scores + SCG for the top-5), boxes (the maps resized to the original
size band by band, thresholded), encode (heatmap PNGs). As in spa-serve, numpy runs with one BLAS thread.
"""

from __future__ import annotations

import argparse
import datetime
import io
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from spa_service.pipeline.heatmap_png import encode_heatmap_png
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import Settings
from threadpoolctl import threadpool_limits

from bench.bench_http import export_vgg16
from bench.report import update_section

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
SIZES = ((500, 375), (4000, 3000))  # (width, height)
STAGES = ("decode", "preprocess", "backbone", "scg", "boxes", "encode")


def jpeg_of_size(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((width, height), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def one_request(localizer: Localizer, data: bytes, options: LocalizeOptions) -> dict[str, float]:
    start = time.perf_counter()
    image = decode_image(data, max_pixels=40_000_000)
    decode_ms = (time.perf_counter() - start) * 1e3
    (result,) = localizer.localize([image], [options])
    start = time.perf_counter()
    for prediction in result.predictions:
        encode_heatmap_png(prediction.map, prediction.size, max_side=2048)
    encode_ms = (time.perf_counter() - start) * 1e3
    return {"decode": decode_ms, **result.timings_ms, "encode": encode_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--model-dir", type=Path, help="an exported VGG16-SPA (default: export a fresh one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or export_vgg16(Path(tmp) / "vgg16")
        localizer = Localizer.from_settings(Settings(model_dir=model_dir, providers="cpu"))
        options = LocalizeOptions(topk=5, method="scg")
        rows = []
        with threadpool_limits(limits=1, user_api="blas"):
            localizer.warmup()
            for width, height in SIZES:
                data = jpeg_of_size(width, height)
                for _ in range(2):
                    one_request(localizer, data, options)
                runs = [one_request(localizer, data, options) for _ in range(args.repeat)]
                medians = {stage: statistics.median(run[stage] for run in runs) for stage in STAGES}
                total = statistics.median(sum(run[s] for s in STAGES) for run in runs)
                rows.append((width, height, len(data), medians, total))
    header = "| image | JPEG KB | " + " | ".join(STAGES) + " | total | SCG / backbone |"
    lines = [header, "|" + "---|" * (len(STAGES) + 4)]
    for width, height, nbytes, medians, total in rows:
        cells = " | ".join(f"{medians[s]:.1f}" for s in STAGES)
        ratio = medians["scg"] / medians["backbone"] * 100
        lines.append(f"| {width} x {height} | {nbytes // 1000} | {cells} | {total:.1f} | {ratio:.1f}% |")
    markdown = "\n".join(
        [
            "## Pipeline by stage: VGG16-SPA, one image, top-5, SCG",
            "",
            f"`python -m bench.bench_pipeline --repeat {args.repeat}` ({datetime.date.today()}; "
            f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
            f"onnxruntime {ort.__version__} CPU, numpy {np.__version__}, one BLAS thread as in spa-serve).",
            "",
            "Median milliseconds per stage over the runs; boxes from the maps at the original size, "
            "heatmap PNGs capped at 2048 px.",
            "",
            *lines,
        ]
    )
    update_section("pipeline", markdown)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
