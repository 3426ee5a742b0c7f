"""The GPU benchmark of scripts/gpu-check: backbone, SCG, HTTP and GPU-vs-CPU answers, as one markdown report.

A GPU machine here has no PyTorch and no package index, and VGG16-SPA's weights (~60 MB) do not fit
what travels to it, so the models go there as skeletons: `prepare` (here, with torch) exports
VGG16-SPA and InceptionV3-SPA (200 classes, torch seed 0) with spa-export and keeps each ONNX
graph with its small tensors, plus the mean and standard deviation of every large float tensor;
`restore` (there, numpy only) draws those tensors from a normal distribution with the same mean and
deviation (numpy seed 0) and writes a model directory with a card for it. Speed does not depend on
the weights, and the GPU-vs-CPU comparison runs both providers on the same restored weights. The
fp16 variants are made from the restored fp32 models with spa-quantize's fp16 conversion.

    python -m bench.bench_gpu prepare --out .gpu-check/skeletons         # here, needs torch
    python -m bench.bench_gpu restore --skeletons DIR --out MODELS        # numpy + onnx
    python -m bench.bench_gpu run --models MODELS --out report.md [--seconds 5]

Parts that need CUDA (the CUDA provider, cupy with a device) are skipped, each with its reason,
where they cannot run; everything else (numpy SCG, HTTP on the provider that does run, JPEG decode
+ PNG encode) still runs, so a CPU machine can dry-run the whole command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from spa_service.arrays import cupy_available
from spa_service.card import CARD_FILE, ModelCard, load_card, sha256_of, write_card
from spa_service.errors import ModelLoadError
from spa_service.pipeline.engine import CudaOptions, Engine, available_cores
from spa_service.pipeline.heatmap_png import encode_heatmap_png
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.pipeline.scg import normalize_cam, scg_maps, structure_affinity

from bench.bench_http import IMAGE_SIZE, free_port, jpegs, start_server

log = logging.getLogger("bench_gpu")

ARCHS = {"vgg16": "VGG16-SPA", "inceptionv3": "InceptionV3-SPA"}
NUM_CLASSES = 200
BATCHES = (1, 8, 32, 64)
SCG_BATCHES = (1, 32)
CLIENTS = (16, 64)
LARGE = 1024  # float tensors with at least this many elements travel as (mean, std) only
GRAPH_FILE, STATS_FILE = "graph.onnx", "weights.json"
MAX_PIXELS = 40_000_000


# --- skeletons -----------------------------------------------------------------------------------------------


def write_skeleton(arch: str, out_dir: Path) -> Path:
    """Export `arch` with spa-export and keep its graph, small tensors and large tensors' statistics."""
    import torch  # here only: the GPU machine restores without it
    from spa_export.nets import build_model
    from spa_export.to_onnx import export_model

    torch.manual_seed(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(build_model(arch, NUM_CLASSES), arch=arch, out_dir=Path(tmp), name=f"{arch}-spa-gpu-bench")
        card, onnx_path = load_card(Path(tmp))
        model = onnx.load(str(onnx_path))
    stats = {}
    for tensor in model.graph.initializer:
        if tensor.data_type == TensorProto.FLOAT and int(np.prod(tensor.dims)) >= LARGE:
            values = numpy_helper.to_array(tensor)
            stats[tensor.name] = [float(values.mean()), float(values.std())]
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
    onnx.save(model, str(out_dir / GRAPH_FILE))
    (out_dir / STATS_FILE).write_text(json.dumps(stats))
    write_card(card, out_dir)
    return out_dir


def restore(skeleton_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    """A servable model directory from a skeleton: large tensors drawn N(mean, std), numpy `seed`."""
    model = onnx.load(str(skeleton_dir / GRAPH_FILE))
    stats = json.loads((skeleton_dir / STATS_FILE).read_text())
    rng = np.random.default_rng(seed)
    for tensor in model.graph.initializer:
        if tensor.name in stats:
            mean, std = stats[tensor.name]
            tensor.raw_data = rng.normal(mean, std, tuple(tensor.dims)).astype(np.float32).tobytes()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(out_dir / "model.onnx"))
    card = ModelCard.model_validate_json((skeleton_dir / CARD_FILE).read_text())
    restored = card.model_copy(
        update={"name": f"{card.name}-restored-seed{seed}", "onnx_sha256": sha256_of(out_dir / "model.onnx"),
                "parity": {}, "onnx_file": "model.onnx"}
    )
    write_card(restored, out_dir)
    return out_dir


def make_fp16(fp32_dir: Path, out_dir: Path, images: Sequence[Path]) -> tuple[Path | None, str]:
    """spa-quantize's fp16 variant of `fp32_dir` (its agreement measured on `images`), or None and why not."""
    try:
        from spa_export.quantize import Source, make_variant
    except ImportError as exc:
        return None, f"spa-quantize's fp16 conversion is not importable here ({exc})"
    try:
        card, missed = make_variant(fp32_dir, out_dir, "fp16", Source(name="bench JPEGs", paths=list(images)),
                                    held_out_images=len(images), force=True)
    except Exception as exc:  # noqa: BLE001 - the GPU minutes still go to the fp32 rows; the report says why
        log.exception("fp16 variant of %s failed", fp32_dir)
        return None, f"the fp16 variant could not be made ({exc!r})"
    a = card.variant.agreement
    note = (f"fp16 made with spa-quantize; its agreement with fp32 on CPU, {a.images} images: top-1 {a.top1:.3f}, "
            f"box IoU >= 0.9 {a.box_iou_ge_0_9:.3f}, heatmap diff mean {a.heatmap_diff_mean:.2e} / p99 {a.heatmap_diff_p99:.2e}")
    return out_dir, note + (f" (misses the floor {missed})" if missed else "")


# --- inputs --------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], object], min_seconds: float, min_runs: int = 5) -> list[float]:
    """Seconds per call of `fn`, repeated for at least `min_seconds` and `min_runs` calls."""
    times: list[float] = []
    deadline = time.perf_counter() + min_seconds
    while len(times) < min_runs or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def cuda_unusable(model_dir: Path) -> str | None:
    """Why the CUDA provider cannot run `model_dir` here, or None when it runs."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider here"
    card, onnx_path = load_card(model_dir)
    try:
        Engine(onnx_path, card, providers="cuda")
    except ModelLoadError as exc:
        return str(exc)
    return None


# --- measurements --------------------------------------------------------------------------------------------


def backbone_rows(model_dir: Path, label: str, seconds: float, search: str) -> list[list[str]]:
    """img/s of the backbone alone on CUDA at each batch size, and its first call's time: what a warm-up
    at that batch size saves the first request (the cuDNN algorithm search, arena growth)."""
    card, onnx_path = load_card(model_dir)
    engine = Engine(onnx_path, card, providers="cuda", cuda=CudaOptions(conv_algo_search=search))
    rng = np.random.default_rng(0)
    rows = []
    for batch in BATCHES:
        x = rng.standard_normal((batch, 3, *card.input_size)).astype(np.float32)
        start = time.perf_counter()
        engine.run(x)
        first_ms = (time.perf_counter() - start) * 1e3
        times = timed(lambda: engine.run(x), seconds)
        rows.append([label, search, str(batch), f"{batch / np.median(times):.0f}",
                     f"{np.median(times) * 1e3:.2f}", f"{first_ms:.0f}"])
    return rows


def scg_rows(model_dir: Path, label: str, seconds: float) -> tuple[list[list[str]], list[str]]:
    """SCG (affinity + maps of the top class) per image, numpy vs cupy, reference and paper modes."""
    card, onnx_path = load_card(model_dir)
    engine = Engine(onnx_path, card, providers="cpu")
    rng = np.random.default_rng(0)
    gpu = cupy_available()
    skipped = [] if gpu else [f"SCG on cupy ({label}): cupy has no CUDA device here"]
    rows = []
    for batch in SCG_BATCHES:
        out = engine.run(rng.standard_normal((batch, 3, *card.input_size)).astype(np.float32))
        host = [np.asarray(a) for a in (out.class_map[:, :1], out.feat_a, out.feat_b)]
        for mode in ("reference", "paper"):
            cells = []
            for on_gpu in (False, True):
                if on_gpu and not gpu:
                    cells.append("skipped")
                    continue
                xp = _cupy() if on_gpu else np
                cams, feat_a, feat_b = (xp.asarray(a) for a in host)

                def step() -> None:
                    affinity = structure_affinity([feat_a, feat_b], card.scg, mode=mode)
                    scg_maps(affinity, normalize_cam(cams), card.scg, mode=mode)
                    if on_gpu:
                        xp.cuda.Device().synchronize()

                step()  # cupy compiles its kernels on the first call
                cells.append(f"{np.median(timed(step, seconds, min_runs=3)) * 1e3 / batch:.3f}")
            rows.append([label, str(batch), mode, *cells])
    return rows, skipped


def _cupy() -> Any:
    import cupy

    return cupy


async def http_rate(url: str, images: list[bytes], clients: int, seconds: float) -> tuple[float, int]:
    """Images per second answered 200 with `clients` clients posting one image after another; errors."""
    done, errors = 0, 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        deadline = time.perf_counter() + seconds

        async def worker(offset: int) -> None:
            nonlocal done, errors
            i = offset
            while time.perf_counter() < deadline:
                response = await client.post("/v1/localize", content=images[i % len(images)],
                                             headers={"Content-Type": "image/jpeg"})
                done, errors = (done + 1, errors) if response.status_code == 200 else (done, errors + 1)
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(clients)))
        return done / (time.perf_counter() - start), errors


def codec_rate(images: list[bytes], map_size: tuple[int, int], threads: int, seconds: float) -> float:
    """Images per second through JPEG decode + one heatmap PNG encode alone, on `threads` threads."""
    heatmap = np.random.default_rng(0).random(map_size, dtype=np.float32)

    def one(data: bytes) -> None:
        image = decode_image(data, max_pixels=MAX_PIXELS)
        encode_heatmap_png(heatmap, (image.height, image.width), max_side=2048)

    count = 0
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - start < seconds:
            list(pool.map(one, images))
            count += len(images)
    return count / (time.perf_counter() - start)


def http_rows(model_dir: Path, label: str, seconds: float, threads: int, work: Path,
              cuda: bool) -> tuple[list[list[str]], str]:
    """spa-serve at each client count next to decode + encode alone, alternating, on the same cores."""
    images = jpegs(32)
    card, _ = load_card(model_dir)
    port = free_port()
    env = {"SPA_PROVIDERS": "cuda" if cuda else "cpu", "SPA_DECODE_THREADS": str(threads),
           "SPA_MAX_BATCH_SIZE": "32", "SPA_MAX_QUEUE_SIZE": str(4 * max(CLIENTS)), "SPA_LOG_LEVEL": "WARNING"}
    # warm-up on CUDA runs every batch size
    server = start_server(model_dir, port, work / f"spa-serve-{card.arch}.log", env, ready_timeout_s=600)
    try:
        url = f"http://127.0.0.1:{port}"
        served = httpx.get(f"{url}/v1/models", timeout=10).json()["models"][0]  # the default model
        provider = ",".join(served.get("providers", [])) or "?"
        rows = []
        for clients in CLIENTS:
            asyncio.run(http_rate(url, images, clients, seconds / 2))  # unmeasured: new batch sizes' first calls
            bound_before = codec_rate(images, card.map_size, threads, seconds / 2)
            rate, errors = asyncio.run(http_rate(url, images, clients, seconds))
            bound = (bound_before + codec_rate(images, card.map_size, threads, seconds / 2)) / 2
            rows.append([label, provider, str(clients), f"{rate:.1f}", str(errors), f"{bound:.1f}",
                         f"{100 * rate / bound:.0f}%"])
    finally:
        server.terminate()
        server.wait(timeout=60)
    return rows, provider


def agreement_row(model_dir: Path, label: str, images: list[bytes], tf32: bool) -> list[str]:
    """The CUDA and the CPU provider on the same images: top-5 classes, boxes, heatmaps."""
    card, onnx_path = load_card(model_dir)
    decoded = [decode_image(data, max_pixels=MAX_PIXELS) for data in images]
    options = [LocalizeOptions(topk=5, method="scg", box_mode="union")] * len(decoded)
    answers = {}
    for provider in ("cuda", "cpu"):
        engine = Engine(onnx_path, card, providers=provider, cuda=CudaOptions(use_tf32=tf32))
        localizer = Localizer(card=card, engine=engine, max_batch_size=8)
        answers[provider] = [a for i in range(0, len(decoded), 8)
                             for a in localizer.localize(decoded[i:i + 8], options[i:i + 8])]
    top1 = top5 = same_boxes = 0
    edge, diff_max, diff_sum, pixels = 0, 0.0, 0.0, 0
    for gpu, cpu in zip(answers["cuda"], answers["cpu"], strict=True):
        top1 += gpu.predictions[0].class_id == cpu.predictions[0].class_id
        top5 += [p.class_id for p in gpu.predictions] == [p.class_id for p in cpu.predictions]
        g, c = gpu.predictions[0], cpu.predictions[0]
        if g.class_id == c.class_id:
            same_boxes += g.boxes == c.boxes
            if g.boxes and c.boxes and len(g.boxes) == len(c.boxes):
                edge = max(edge, int(np.abs(np.asarray(g.boxes) - np.asarray(c.boxes)).max()))
            diff = np.abs(g.heatmap_at_image_size().astype(np.float64) - c.heatmap_at_image_size())
            diff_max, diff_sum, pixels = max(diff_max, float(diff.max())), diff_sum + float(diff.sum()), pixels + diff.size
    n = len(images)
    return [label, "on" if tf32 else "off", str(n), f"{100 * top1 / n:.1f}%", f"{100 * top5 / n:.1f}%", f"{100 * same_boxes / n:.1f}%",
            str(edge), f"{diff_max:.2e}", f"{diff_sum / max(pixels, 1):.2e}"]


# --- report --------------------------------------------------------------------------------------------------


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def machine() -> list[str]:
    lines = [f"- CPU cores this process may use: {available_cores()}; Python {platform.python_version()}; "
             f"onnxruntime {ort.__version__} (providers {ort.get_available_providers()})"]
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
        lines.append(f"- GPU: {gpu or 'none visible to nvidia-smi'}")
    except (OSError, subprocess.TimeoutExpired):
        lines.append("- GPU: no nvidia-smi")
    if cupy_available():
        cupy = _cupy()
        lines.append(f"- cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
    lines.append(f"- load average before: {os.getloadavg()}")
    return lines


def run(models: Path, out: Path, seconds: float, threads: int, agreement_images: int) -> str:
    with tempfile.TemporaryDirectory(prefix="spa-gpu-check-") as tmp:
        report = _measure(models, Path(tmp), seconds, threads, agreement_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    return report


def _measure(models: Path, work: Path, seconds: float, threads: int, agreement_images: int) -> str:
    image_dir = work / "images"
    image_dir.mkdir()
    images = jpegs(agreement_images, seed=1)
    paths = []
    for i, data in enumerate(images):
        paths.append(image_dir / f"{i:03d}.jpg")
        paths[-1].write_bytes(data)
    variants: list[tuple[str, str, Path]] = []
    notes: list[str] = []
    for arch, name in ARCHS.items():
        variants.append((arch, f"{name} fp32", models / arch))
        fp16_dir, note = make_fp16(models / arch, work / f"{arch}-fp16", paths[:8])
        notes.append(f"{name}: {note}")
        if fp16_dir is not None:
            variants.append((arch, f"{name} fp16", fp16_dir))
    skipped: list[str] = []
    no_cuda = cuda_unusable(models / "vgg16")
    sections = ["# GPU check", "", f"`{shlex.join(sys.argv)}`", "", *machine(), ""]

    backbone: list[list[str]] = []
    for _, label, model_dir in variants:
        if no_cuda:
            skipped.append(f"backbone {label}: {no_cuda}")
            continue
        # heuristic search for fp32 too: whether a mode that needs no per-batch-size warm-up costs speed.
        for search in ("exhaustive", "heuristic") if label.endswith("fp32") else ("exhaustive",):
            backbone += backbone_rows(model_dir, label, seconds, search)
    sections += ["## Backbone on CUDA (img/s)", "", table(
        ["model", "cuDNN search", "batch", "img/s", "ms per call (median)", "first call ms"], backbone), ""]

    scg: list[list[str]] = []
    for arch, name in ARCHS.items():
        rows, why = scg_rows(models / arch, name, seconds)
        scg += rows
        skipped += why
    sections += ["## SCG per image (ms): numpy vs cupy", "", table(
        ["model", "batch", "mode", "numpy ms/img", "cupy ms/img"], scg), ""]

    http, provider = http_rows(models / "vgg16", "VGG16-SPA fp32", seconds, threads, work, cuda=not no_cuda)
    if no_cuda:
        skipped.append(f"HTTP through spa-serve ran on {provider}, not CUDA: not a GPU figure")
    sections += [f"## End-to-end HTTP, {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEGs, top-1 SCG + PNG heatmap", "",
                 f"decode + encode bound: JPEG decode and one heatmap PNG encode alone on {threads} threads "
                 "(the server's SPA_DECODE_THREADS), measured just before and after each HTTP level.", "",
                 table(["model", "server providers", "clients", "img/s", "errors", "decode+encode img/s",
                        "HTTP / bound"], http), ""]

    agreement: list[list[str]] = []
    for _, label, model_dir in variants:
        if no_cuda:
            skipped.append(f"GPU vs CPU answers {label}: {no_cuda}")
            continue
        # TF32 on too for fp32: what the setting SPA_USE_TF32 would cost in agreement.
        for tf32 in (False, True) if label.endswith("fp32") else (False,):
            agreement.append(agreement_row(model_dir, label, images, tf32))
    sections += ["## GPU vs CPU answers on the same images (top-5, SCG, union boxes)", "", table(
        ["model", "GPU TF32", "images", "top-1 same", "top-5 same", "top-1 boxes identical", "max box edge diff px",
         "heatmap max diff", "heatmap mean diff"], agreement), ""]

    sections += ["## Notes", "", *[f"- {n}" for n in notes], *[f"- skipped: {s}" for s in skipped], ""]
    return "\n".join(sections)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="[bench_gpu] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="export the skeletons (needs torch)")
    prepare.add_argument("--out", type=Path, required=True)
    restore_cmd = commands.add_parser("restore", help="servable models from the skeletons (numpy)")
    restore_cmd.add_argument("--skeletons", type=Path, required=True)
    restore_cmd.add_argument("--out", type=Path, required=True)
    run_cmd = commands.add_parser("run", help="measure and write the markdown report")
    run_cmd.add_argument("--models", type=Path, required=True, help="restore's output")
    run_cmd.add_argument("--out", type=Path, required=True)
    run_cmd.add_argument("--seconds", type=float, default=5.0, help="per measurement (default 5)")
    run_cmd.add_argument("--threads", type=int, default=available_cores(),
                         help="decode/encode threads, the server's and the bound's (default: all cores)")
    run_cmd.add_argument("--agreement-images", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        for arch in ARCHS:
            log.info("skeleton %s -> %s", arch, write_skeleton(arch, args.out / arch))
    elif args.command == "restore":
        for arch in ARCHS:
            if not (args.skeletons / arch / CARD_FILE).is_file():
                parser.error(f"{args.skeletons / arch} is not a skeleton (run `prepare` where torch is)")
            log.info("restored %s -> %s", arch, restore(args.skeletons / arch, args.out / arch))
    else:
        print(run(args.models, args.out, args.seconds, args.threads, args.agreement_images))


if __name__ == "__main__":
    main()
