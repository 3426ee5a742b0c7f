"""int8 against fp32 and against the authors' way, in one run on the same images.

For VGG16-SPA and InceptionV3-SPA (200 classes, random weights: speed does not depend on them), exported
here, made int8 by spa-quantize (calibrated on a few of the bench's JPEGs) twice, with the architecture's
recipe (the head int8 but its classifier) and with the whole head float, and fp16 (agreement only): per image,
alternating, (1) the authors' way: PyTorch eager forward + a per-image, per-class loop SCG (tests/scg_loops.py)
+ union boxes, (2) Localizer fp32, (3) Localizer int8 with the head float, (4) Localizer int8, all top-5 SCG on
decoded 500 x 375 JPEGs; then real spa-serve processes over loopback, one per VGG16-SPA variant, at 1 and 4
clients, their slices alternating with slices of the authors' way run here one image after another, so that
every ratio compares figures taken under the same load. Agreement: the bundled demo model (a trained network)
made int8 and fp16 on a generated validation set (spa-synth, seed 1, as scripts/make-demo-model's), and,
labelled as such, the random-weight models'. Results go to BENCHMARKS.md (section "precision").

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
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # bench.*; the loop SCG

from scg_loops import scg_loops  # noqa: E402
from spa_export.nets import build_model  # noqa: E402
from spa_export.quantize import (  # noqa: E402
    Floors,
    Source,
    cpu_localizer,
    dataset_images,
    make_variant,
    recipe_for,
)
from spa_export.to_onnx import export_model  # noqa: E402
from spa_service.card import Agreement, ModelCard, load_card  # noqa: E402
from spa_service.offline.synth import SynthConfig, generate  # noqa: E402
from spa_service.pipeline.imaging import DecodedImage, decode_image  # noqa: E402
from spa_service.pipeline.localize import LocalizeOptions, Localizer  # noqa: E402
from spa_service.threads import limit_blas_threads  # noqa: E402

from bench.bench_http import (  # noqa: E402
    IMAGE_SIZE,
    Level,
    Rate,
    free_port,
    http_slice,
    jpegs,
    post,
    start_server,
)

TOPK = 5
DEMO = ROOT / "models" / "demo"
# Report only: random weights (agreement says nothing), and the float-head variant is measured for what it costs.
NO_FLOORS = Floors(min_top1=0.0, min_box_iou_ge_0_9=0.0, max_heatmap_diff_p99=1.0, min_int8_macs=0.0)
TARGET_VS_AUTHORS, TARGET_VS_FP32 = 3.5, 2.7  # int8 HTTP at 4 clients, issues 11 and 23
# Localizer variants, in the order they run: fp32, int8 with the whole head float, int8 by the arch's recipe.
VARIANTS = ("fp32", "int8-float-head", "int8")


def cpu_description() -> str:
    """The CPU's model name and its int8 dot-product instructions, from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")),
                 platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    vnni = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-VNNI" if "avx_vnni" in flags else "no VNNI"
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {simd}, {vnni}"


@dataclass
class Arch:
    """One architecture's models and its in-process timings (ms per image)."""

    name: str
    torch_model: torch.nn.Module
    card: ModelCard
    dirs: dict[str, Path]  # variant -> model directory
    localizers: dict[str, Localizer]
    int8_macs: dict[str, float]  # int8 variant -> share of multiply-adds in int8 (its card's)
    agreement: dict[str, Agreement]
    ms: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in ("authors", *VARIANTS)})


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
    dirs = {variant: work / f"{name}-{variant}" for variant in VARIANTS}
    export_model(model, arch=name, out_dir=dirs["fp32"], name=f"{name}-spa-random-init-seed0")
    folder = work / "jpegs"
    folder.mkdir(exist_ok=True)
    for i, data in enumerate(images):
        (folder / f"{i:03d}.jpg").write_bytes(data)
    source = Source(f"folder of {len(images)} bench JPEGs", sorted(folder.glob("*.jpg")))
    agreement, int8_macs = {}, {}
    recipes = {"int8": recipe_for(name), "int8-float-head": replace(recipe_for(name), float_head=True), "fp16": None}
    for variant, recipe in recipes.items():
        out = dirs.get(variant, work / f"{name}-{variant}")
        card, _ = make_variant(dirs["fp32"], out, "fp16" if variant == "fp16" else "int8", source, recipe=recipe,
                               calibration_images=8, held_out_images=len(images) - 8, floors=NO_FLOORS)
        agreement[variant] = card.variant.agreement
        if card.variant.int8_macs is not None:
            int8_macs[variant] = card.variant.int8_macs
    card, _ = load_card(dirs["fp32"])
    localizers = {variant: cpu_localizer(load_card(path)[1], card) for variant, path in dirs.items()}
    return Arch(name, model, card, dirs, localizers, int8_macs, agreement)


def demo_agreement(work: Path, per_class: int) -> dict[str, Agreement]:
    """The demo model's int8 and fp16 variants against it, spa-quantize's defaults, on generated images."""
    root = work / "demo-val"
    count = generate(root, SynthConfig(seed=1, train_per_class=0, test_per_class=per_class))
    source = Source(f"spa-synth seed 1 ({count} images)", dataset_images(root, "all"))
    return {precision: make_variant(DEMO, work / f"demo-{precision}", precision, source,
                                    floors=NO_FLOORS)[0].variant.agreement for precision in ("int8", "fp16")}


def in_process(archs: list[Arch], decoded: list[DecodedImage], rounds: int) -> None:
    """Per image, the pipelines one after another (alternating), `rounds` passes over the images."""
    options = [LocalizeOptions(topk=TOPK, method="scg")]
    for arch in archs:  # warm-up: first calls pay for allocation and kernel selection
        authors_way(arch.torch_model, arch.card, decoded[0])
        for localizer in arch.localizers.values():
            localizer.localize(decoded[:1], options)
    for _ in range(rounds):
        for image in decoded:
            for arch in archs:
                runs = {"authors": lambda arch=arch, image=image: authors_way(arch.torch_model, arch.card, image)}
                runs |= {variant: lambda localizer=localizer, image=image: localizer.localize([image], options)
                         for variant, localizer in arch.localizers.items()}
                for key, run in runs.items():
                    start = time.perf_counter()
                    run()
                    arch.ms[key].append((time.perf_counter() - start) * 1e3)


def authors_slice(arch: Arch, decoded: list[DecodedImage], rate: Rate, seconds: float, start: int) -> int:
    """The authors' way over the images one after another for `seconds`; returns where it stopped."""
    began = time.perf_counter()
    done = 0
    while time.perf_counter() - began < seconds:
        authors_way(arch.torch_model, arch.card, decoded[(start + done) % len(decoded)])
        done += 1
    rate.add(done, time.perf_counter() - began)
    return start + done


async def http(urls: dict[str, str], images: list[bytes], clients: int, seconds: float, slices: int,
               authors: Callable[[Rate, float, int], int]) -> tuple[dict[str, Level], Rate]:
    """One server per variant, `clients` concurrent clients each, their slices alternating with slices of the
    authors' way (run here, no server busy meanwhile)."""
    levels = {key: Level(clients) for key in urls}
    authors_rate, position = Rate(), 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    sessions = {key: httpx.AsyncClient(base_url=url, limits=limits, timeout=300) for key, url in urls.items()}
    try:
        for key, client in sessions.items():
            await asyncio.gather(*(post(client, images, i) for i in range(clients)))  # connections open, warm
        for _ in range(slices):
            for key, client in sessions.items():
                await http_slice(client, images, levels[key], seconds / slices, max_requests=10_000)
            position = authors(authors_rate, seconds / slices, position)
    finally:
        for client in sessions.values():
            await client.aclose()
    return levels, authors_rate


def median(values: list[float]) -> float:
    return float(np.median(values))


def agreement_row(label: str, a: Agreement) -> str:
    return (f"| {label} | {a.images} | {a.top1:.2%} | {a.top5_overlap:.2%} | {a.box_iou_mean:.3f} | "
            f"{a.box_iou_ge_0_9:.2%} | {a.box_iou_ge_0_5:.2%} | {a.heatmap_diff_mean:.4f} | {a.heatmap_diff_p99:.4f} |")


def markdown(archs: list[Arch], levels: dict[int, dict[str, Level]], authors: dict[int, Rate],
             demo: dict[str, Agreement], command: str, loads: dict[str, float], decoded_count: int,
             rounds: int) -> str:
    vgg = archs[0]
    load_text = ", ".join(f"{value:.1f} {when}" for when, value in loads.items())
    lines = [
        "## Precision: int8 and fp16 against fp32, and against the authors' way",
        "",
        f"`{command}`",
        "",
        f"Machine: {cpu_description()}, {os.cpu_count()} cores, onnxruntime {ort.__version__} (CPU), torch "
        f"{torch.__version__}; shared with other work: 1-minute load average {load_text}. Models: 200 classes, "
        "random weights (torch seed 0), int8 by `spa-quantize` (8 calibration JPEGs): `int8` with the "
        "architecture's recipe (the head int8 but its classifier), `int8 float head` with the whole head float "
        f"(`--float-head`). Images: {decoded_count} distinct {IMAGE_SIZE[0]} x {IMAGE_SIZE[1]} JPEGs, top-5 SCG, "
        "union boxes.",
        "",
        "Share of the multiply-adds run in int8 (the cards' `int8_macs`): "
        + "; ".join(f"{arch.name} int8 {arch.int8_macs['int8']:.1%}, float head {arch.int8_macs['int8-float-head']:.1%}"
                    for arch in archs) + ".",
        "",
        f"In process, one image at a time, the pipelines alternating per image (passes over the images: {rounds}): "
        "median ms per image (decoded image to boxes).",
        "",
        "| model | authors' way (PyTorch eager + loop SCG) | Localizer fp32 | int8 float head | int8 | fp32 / int8 "
        "| authors' / int8 | authors' / int8 float head |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for arch in archs:
        a, f, h, i = (median(arch.ms[k]) for k in ("authors", *VARIANTS))
        lines.append(f"| {arch.name} | {a:.1f} | {f:.1f} | {h:.1f} | {i:.1f} | {f / i:.2f}x | {a / i:.2f}x "
                     f"| {a / h:.2f}x |")
    lines += [
        "",
        f"HTTP, {vgg.name}: one spa-serve per variant over loopback (default settings), requests of one image, "
        "default query (top-1, SCG, heatmap PNG); the servers' slices alternate with slices of the authors' way "
        "(one image after another in this process, top-5 as the authors evaluate), so each row's figures share "
        "their load.",
        "",
        "| clients | authors' img/s | fp32 req/s | int8 float head req/s | int8 req/s | int8 / fp32 | int8 / authors' "
        "| int8 float head / authors' | p50 ms fp32 / float head / int8 | mean batch fp32 / int8 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    verdict = []
    for clients, pair in levels.items():
        f, h, i = (pair[k] for k in VARIANTS)
        ar = authors[clients].per_second
        fr, hr, ir = f.http.per_second, h.http.per_second, i.http.per_second
        lines.append(f"| {clients} | {ar:.2f} | {fr:.2f} | {hr:.2f} | {ir:.2f} | {ir / fr:.2f}x | {ir / ar:.2f}x "
                     f"| {hr / ar:.2f}x | {f.percentile(50):.0f} / {h.percentile(50):.0f} / {i.percentile(50):.0f} "
                     f"| {f.mean_batch:.2f} / {i.mean_batch:.2f} |")
        if clients == 4:
            verdict = [
                f"- 4 clients: int8 HTTP is {ir / ar:.2f}x the authors' way (target {TARGET_VS_AUTHORS}x: "
                f"{'met' if ir / ar >= TARGET_VS_AUTHORS else 'missed'}) and {ir / fr:.2f}x fp32 HTTP "
                f"(target {TARGET_VS_FP32}x: {'met' if ir / fr >= TARGET_VS_FP32 else 'missed'}); with the head "
                f"float it was {hr / ar:.2f}x the authors' way.",
            ]
    lines += ["", *verdict, "",
              "Agreement with fp32 (each model's top-1 answer; docs/precision.md defines the figures):", "",
              "| model | held-out images | top-1 | top-5 overlap | box IoU mean | IoU >= 0.9 | IoU >= 0.5 "
              "| heatmap diff mean | p99 |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for precision, agreement in demo.items():
        lines.append(agreement_row(f"demo model {precision} (trained; {agreement.source})", agreement))
    for arch in archs:
        for variant, agreement in arch.agreement.items():
            lines.append(agreement_row(f"{arch.name} {variant} (random weights: not representative)", agreement))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_precision", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24, help="distinct JPEGs (8 of them calibrate int8)")
    parser.add_argument("--rounds", type=int, default=2, help="in-process passes over the images")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=24.0, help="HTTP time per pipeline and concurrency level")
    parser.add_argument("--slices", type=int, default=4, help="alternations per level")
    parser.add_argument("--archs", nargs="+", default=["vgg16", "inceptionv3"], choices=["vgg16", "inceptionv3"])
    parser.add_argument("--demo-per-class", type=int, default=100, help="generated demo validation images per class")
    parser.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_precision", *(argv if argv is not None else sys.argv[1:])])
    logging.basicConfig(level=logging.WARNING)
    limit_blas_threads()  # numpy as inside spa-serve: onnxruntime (and torch) own the cores
    loads = {"at the start": os.getloadavg()[0]}
    images = jpegs(args.images)
    decoded = [decode_image(data, max_pixels=10**8) for data in images]
    with tempfile.TemporaryDirectory(prefix="spa-bench-precision-") as tmp:
        work = Path(tmp)
        demo = demo_agreement(work, args.demo_per_class)
        archs = [prepare(name, work, images) for name in args.archs]
        print("models ready", {arch.name: arch.int8_macs for arch in archs}, flush=True)
        loads["before the timings"] = os.getloadavg()[0]
        in_process(archs, decoded, args.rounds)
        for arch in archs:
            print(arch.name, {k: round(median(v), 1) for k, v in arch.ms.items()}, flush=True)
        loads["after the in-process timings"] = os.getloadavg()[0]
        vgg = archs[0]
        servers = {}
        levels: dict[int, dict[str, Level]] = {}
        authors: dict[int, Rate] = {}
        try:
            for key in VARIANTS:
                port = free_port()
                servers[key] = (start_server(vgg.dirs[key], port, work / f"{key}.log"), f"http://127.0.0.1:{port}")
            urls = {key: url for key, (_, url) in servers.items()}
            for clients in args.clients:
                run_authors = lambda rate, seconds, start: authors_slice(vgg, decoded, rate, seconds, start)  # noqa: E731
                levels[clients], authors[clients] = asyncio.run(
                    http(urls, images, clients, args.seconds, args.slices, run_authors))
                print(clients, "authors", round(authors[clients].per_second, 2),
                      {k: round(v.http.per_second, 2) for k, v in levels[clients].items()}, flush=True)
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(60)
        loads["after HTTP"] = os.getloadavg()[0]
        report = markdown(archs, levels, authors, demo, command, loads, len(decoded), args.rounds)
    print(report)
    if not args.no_report:
        from bench.report import update_section

        update_section("precision", report)


if __name__ == "__main__":
    main()
