"""int8 against fp32 and against the authors' way, in one run on the same images.

For VGG16-SPA and InceptionV3-SPA (200 classes, random weights: speed does not depend on them), exported
here, made int8 with spa-quantize's recipe (calibrated on a few of the bench's JPEGs) and fp16 (agreement
only): per image, alternating, (1) the authors' way: PyTorch eager forward + a per-image, per-class loop SCG
(tests/scg_loops.py) + union boxes, (2) Localizer fp32, (3) Localizer int8, all top-5 SCG on decoded 500 x 375
JPEGs; then real spa-serve processes over loopback, fp32 and int8 slices alternating, at 1, 4 and 16 clients.
Agreement: the bundled demo model (a trained network) made int8 and fp16 on a generated validation set
(spa-synth, seed 1, as scripts/make-demo-model's), and, labelled as such, the random-weight models'.
Results go to BENCHMARKS.md (section "precision").

    python -m bench.bench_precision [--rounds 2] [--seconds 24] [--no-report]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # bench.*; the loop SCG

from bench.bench_http import IMAGE_SIZE, Level, free_port, http_slice, jpegs, post, start_server  # noqa: E402
from scg_loops import scg_loops  # noqa: E402

from spa_export.nets import build_model  # noqa: E402
from spa_export.quantize import Floors, Source, cpu_localizer, dataset_images, make_variant  # noqa: E402
from spa_export.to_onnx import export_model  # noqa: E402
from spa_service.card import Agreement, ModelCard, load_card  # noqa: E402
from spa_service.threads import limit_blas_threads  # noqa: E402
from spa_service.imaging import DecodedImage, decode_image  # noqa: E402
from spa_service.localize import Localizer, LocalizeOptions  # noqa: E402
from spa_service.synth import SynthConfig, generate  # noqa: E402

TOPK = 5
DEMO = ROOT / "models" / "demo"
NO_FLOORS = Floors(min_top1=0.0, min_box_iou_ge_0_9=0.0, max_heatmap_diff_p99=1.0)  # random weights: report only
TARGET_VS_AUTHORS, TARGET_VS_FP32 = 3.5, 2.7  # int8 HTTP at 4 clients, issue 11


@dataclass
class Arch:
    """One architecture's models and its in-process timings (ms per image)."""

    name: str
    torch_model: torch.nn.Module
    card: ModelCard
    fp32: Localizer
    int8: Localizer
    int8_dir: Path
    agreement: dict[str, Agreement]
    ms: dict[str, list[float]] = field(default_factory=lambda: {"authors": [], "fp32": [], "int8": []})


def authors_way(model: torch.nn.Module, card: ModelCard, image: DecodedImage) -> list[tuple[int, int, int, int]]:
    """The authors' evaluation for one image: torchvision-style preprocessing, eager forward, softmax top-5,
    then for each class the loop SCG at the image size and the box of the pixels above the threshold."""
    height, width = card.input_size
    pixels = np.asarray(image.image.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255.0
    tensor = torch.from_numpy((pixels - np.float32(card.mean)) / np.float32(card.std)).permute(2, 0, 1)[None]
    with torch.no_grad():
        class_map, feat_a, feat_b = (t.numpy() for t in model(tensor))
    top = np.argsort(-torch.softmax(torch.from_numpy(class_map.mean(axis=(2, 3))), 1).numpy()[0])[:TOPK]
    (heatmaps,) = scg_loops([feat_a, feat_b], class_map, top[None], [(image.height, image.width)], card.scg)
    boxes = []
    for heatmap in heatmaps:
        ys, xs = np.nonzero(heatmap >= card.box_threshold["scg"])
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()) if len(xs) else (0, 0, 0, 0))
    return boxes


def prepare(name: str, work: Path, images: list[bytes]) -> Arch:
    torch.manual_seed(0)
    model = build_model(name, 200).eval()
    fp32_dir = work / f"{name}-fp32"
    export_model(model, arch=name, out_dir=fp32_dir, name=f"{name}-spa-random-init-seed0")
    folder = work / "jpegs"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(images):
        (folder / f"{i:03d}.jpg").write_bytes(data)
    source = Source(f"folder of {len(images)} bench JPEGs", sorted(folder.glob("*.jpg")))
    agreement = {}
    for precision in ("int8", "fp16"):
        card, _ = make_variant(fp32_dir, work / f"{name}-{precision}", precision, source, calibration_images=8,
                               held_out_images=len(images) - 8, floors=NO_FLOORS)
        agreement[precision] = card.variant.agreement
    card, fp32_onnx = load_card(fp32_dir)
    _, int8_onnx = load_card(work / f"{name}-int8")
    return Arch(name, model, card, cpu_localizer(fp32_onnx, card), cpu_localizer(int8_onnx, card),
                work / f"{name}-int8", agreement)


def demo_agreement(work: Path, per_class: int) -> dict[str, Agreement]:
    """The demo model's int8 and fp16 variants against it, spa-quantize's defaults, on generated images."""
    root = work / "demo-val"
    count = generate(root, SynthConfig(seed=1, train_per_class=0, test_per_class=per_class))
    source = Source(f"spa-synth seed 1 ({count} images)", dataset_images(root, "all"))
    return {precision: make_variant(DEMO, work / f"demo-{precision}", precision, source,
                                    floors=NO_FLOORS)[0].variant.agreement for precision in ("int8", "fp16")}


def in_process(archs: list[Arch], decoded: list[DecodedImage], rounds: int) -> None:
    """Per image, the three pipelines one after another (alternating), `rounds` passes over the images."""
    options = [LocalizeOptions(topk=TOPK, method="scg")]
    for arch in archs:  # warm-up: first calls pay for allocation and kernel selection
        authors_way(arch.torch_model, arch.card, decoded[0])
        arch.fp32.localize(decoded[:1], options)
        arch.int8.localize(decoded[:1], options)
    for _ in range(rounds):
        for image in decoded:
            for arch in archs:
                runs = {"authors": lambda: authors_way(arch.torch_model, arch.card, image),
                        "fp32": lambda: arch.fp32.localize([image], options),
                        "int8": lambda: arch.int8.localize([image], options)}
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    arch.ms[key].append((time.perf_counter() - start) * 1e3)


async def http(urls: dict[str, str], images: list[bytes], clients: int, seconds: float,
               slices: int) -> dict[str, Level]:
    """fp32 and int8 servers, slices alternating, `clients` concurrent clients each."""
    levels = {key: Level(clients) for key in urls}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    sessions = {key: httpx.AsyncClient(base_url=url, limits=limits, timeout=300) for key, url in urls.items()}
    try:
        for key, client in sessions.items():
            await asyncio.gather(*(post(client, images, i) for i in range(clients)))  # connections open, warm
        for _ in range(slices):
            for key, client in sessions.items():
                await http_slice(client, images, levels[key], seconds / slices, max_requests=10_000)
    finally:
        for client in sessions.values():
            await client.aclose()
    return levels


def median(values: list[float]) -> float:
    return float(np.median(values))


def agreement_row(label: str, a: Agreement) -> str:
    return (f"| {label} | {a.images} | {a.top1:.2%} | {a.top5_overlap:.2%} | {a.box_iou_mean:.3f} | "
            f"{a.box_iou_ge_0_9:.2%} | {a.box_iou_ge_0_5:.2%} | {a.heatmap_diff_mean:.4f} | {a.heatmap_diff_p99:.4f} |")


def markdown(archs: list[Arch], levels: dict[int, dict[str, Level]], demo: dict[str, Agreement], command: str,
             load: tuple[float, float], decoded_count: int, rounds: int) -> str:
    vgg = archs[0]
    authors_rate = 1e3 / median(vgg.ms["authors"])
    lines = [
        "## Precision: int8 and fp16 against fp32, and against the authors' way",
        "",
        f"`{command}`",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (AVX2, no AVX-512 / VNNI), onnxruntime "
        f"{ort.__version__} (CPU), torch {torch.__version__}; shared with other work: 1-minute load average "
        f"{load[0]:.1f} before the run, {load[1]:.1f} after. Models: 200 classes, random weights (torch seed 0), "
        "int8 by `spa-quantize` (its default recipe, 8 calibration JPEGs). Images: "
        f"{decoded_count} distinct {IMAGE_SIZE[0]} x {IMAGE_SIZE[1]} JPEGs, top-5 SCG, union boxes.",
        "",
        f"In process, one image at a time, the three alternating per image (passes over the images: {rounds}): "
        "median ms per image (decoded image to boxes).",
        "",
        "| model | authors' way (PyTorch eager + loop SCG) | Localizer fp32 | Localizer int8 | fp32 / int8 "
        "| authors' / int8 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arch in archs:
        a, f, i = (median(arch.ms[k]) for k in ("authors", "fp32", "int8"))
        lines.append(f"| {arch.name} | {a:.1f} | {f:.1f} | {i:.1f} | {f / i:.2f}x | {a / i:.2f}x |")
    lines += [
        "",
        f"HTTP, {vgg.name}: spa-serve over loopback (default settings), fp32 and int8 servers, slices alternating; "
        "requests of one image, default query (top-1, SCG, heatmap PNG). The authors' way for the ratio: "
        f"{authors_rate:.2f} img/s (the in-process median above).",
        "",
        "| clients | fp32 req/s | int8 req/s | int8 / fp32 | int8 / authors' | fp32 p50 / p99 ms | int8 p50 / p99 ms "
        "| mean batch fp32 / int8 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdict = []
    for clients, pair in levels.items():
        f, i = pair["fp32"], pair["int8"]
        fr, ir = f.http.per_second, i.http.per_second
        lines.append(f"| {clients} | {fr:.2f} | {ir:.2f} | {ir / fr:.2f}x | {ir / authors_rate:.2f}x "
                     f"| {f.percentile(50):.0f} / {f.percentile(99):.0f} | {i.percentile(50):.0f} / "
                     f"{i.percentile(99):.0f} | {f.mean_batch:.2f} / {i.mean_batch:.2f} |")
        if clients == 4:
            verdict = [
                f"- 4 clients: int8 HTTP is {ir / authors_rate:.2f}x the authors' way (target {TARGET_VS_AUTHORS}x: "
                f"{'met' if ir / authors_rate >= TARGET_VS_AUTHORS else 'missed'}) and {ir / fr:.2f}x fp32 HTTP "
                f"(target {TARGET_VS_FP32}x: {'met' if ir / fr >= TARGET_VS_FP32 else 'missed'}).",
            ]
    lines += ["", *verdict, "",
              "Agreement with fp32 (each model's top-1 answer; docs/precision.md defines the figures):", "",
              "| model | held-out images | top-1 | top-5 overlap | box IoU mean | IoU >= 0.9 | IoU >= 0.5 "
              "| heatmap diff mean | p99 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for precision, agreement in demo.items():
        lines.append(agreement_row(f"demo model {precision} (trained; {agreement.source})", agreement))
    for arch in archs:
        for precision, agreement in arch.agreement.items():
            lines.append(agreement_row(f"{arch.name} {precision} (random weights: not representative)", agreement))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="distinct JPEGs (8 of them calibrate int8)")
    parser.add_argument("--rounds", type=int, default=2, help="in-process passes over the images")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=24.0, help="HTTP time per model and concurrency level")
    parser.add_argument("--slices", type=int, default=4, help="fp32 / int8 alternations per level")
    parser.add_argument("--archs", nargs="+", default=["vgg16", "inceptionv3"], choices=["vgg16", "inceptionv3"])
    parser.add_argument("--demo-per-class", type=int, default=100, help="generated demo validation images per class")
    parser.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_precision", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING)
    limit_blas_threads()  # numpy as inside spa-serve: onnxruntime (and torch) own the cores
    load_before = os.getloadavg()[0]
    images = jpegs(args.images)
    decoded = [decode_image(data, max_pixels=10**8) for data in images]
    with tempfile.TemporaryDirectory(prefix="spa-bench-precision-") as tmp:
        work = Path(tmp)
        demo = demo_agreement(work, args.demo_per_class)
        archs = [prepare(name, work, images) for name in args.archs]
        print("models ready", flush=True)
        in_process(archs, decoded, args.rounds)
        for arch in archs:
            print(arch.name, {k: round(median(v), 1) for k, v in arch.ms.items()}, flush=True)
        vgg = archs[0]
        servers = {}
        levels: dict[int, dict[str, Level]] = {}
        try:
            for key, model_dir in (("fp32", work / f"{vgg.name}-fp32"), ("int8", vgg.int8_dir)):
                port = free_port()
                servers[key] = (start_server(model_dir, port, work / f"{key}.log"), f"http://127.0.0.1:{port}")
            for clients in args.clients:
                urls = {key: url for key, (_, url) in servers.items()}
                levels[clients] = asyncio.run(http(urls, images, clients, args.seconds, args.slices))
                print(clients, {k: round(v.http.per_second, 2) for k, v in levels[clients].items()}, flush=True)
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        report = markdown(archs, levels, demo, command, (load_before, os.getloadavg()[0]), len(decoded), args.rounds)
    print(report)
    if not args.no_report:
        from bench.report import update_section

        update_section("precision", report)


if __name__ == "__main__":
    main()
