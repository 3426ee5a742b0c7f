"""The real-photo model over HTTP beside its raw backbone: where the request's time goes.

One run, in rounds; each round measures in turn, for the same photos:
  raw       onnxruntime alone on the model's ONNX file with onnxruntime's own session defaults
            (a thread per core, spinning), batch 1, on pre-made (1, 3, H, W) tensors, in this process;
  localizer Localizer.localize on one image already decoded to the model's input (what the
            server runs after decoding), batch 1, in this process;
  http x1   a real spa-serve over loopback, one keep-alive client posting JPEG bodies;
  http x4   the same, four keep-alive clients;
and with --baseline DIR, http x1 and x4 once more against a second spa-serve importing spa_service
from DIR (a checkout of older code: DIR/spa_service and DIR/spa_models linking to its service/ and
models/), so that before and after are measured in the same rounds; with --variant SETTINGS, the
same against a spa-serve run with those SPA_* settings (e.g. SPA_ORT_SPINNING=always).
The servers are idle while the in-process stages run. Per round: median latencies, throughputs
and CPU time per image; the report gives medians over rounds, ratios to the raw backbone's best
round. Photos: the project's real photos (tests/data and the model's samples), each also mirrored,
resized to 500 x 375 (bicubic) and re-encoded as JPEG quality 90. Results go to BENCHMARKS.md
(section "http-photo-side", or "http-photo-variants" with --variant).

    python -m bench.bench_photo_http [--rounds 5] [--seconds 4] [--baseline DIR] [--variant SETTINGS ...] [--no-report]
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import onnxruntime as ort
from PIL import Image, ImageOps
from spa_service.card import load_card
from spa_service.pipeline.imaging import decode_for_model
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.pipeline.preprocess import preprocess
from spa_service.settings import Settings
from spa_service.threads import limit_blas_threads

from bench.bench_http import free_port, post_image, serve_module, start_server

ROOT = Path(__file__).resolve().parents[1]
MODEL_DIR = ROOT / "models" / "imagenet-lite0"
PHOTO_SIZE = (500, 375)  # (width, height)
LATENCY_TARGET = 1.5  # one client's p50 at most this many times the raw backbone's batch-1 latency
THROUGHPUT_TARGET = 0.85  # four clients at least this share of the raw backbone's batch-1 throughput


def photos() -> list[bytes]:
    """The real photos at hand, and their mirror images, as 500 x 375 JPEGs (quality 90)."""
    paths = sorted({p.name: p for p in [*(ROOT / "tests" / "data").glob("*.jpg"),
                                        *(MODEL_DIR / "samples").glob("*.jpg")]}.values())
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB").resize(PHOTO_SIZE, Image.BICUBIC)
        for variant in (image, ImageOps.mirror(image)):
            buffer = io.BytesIO()
            variant.save(buffer, "JPEG", quality=90)
            out.append(buffer.getvalue())
    return out


@dataclass
class Stage:
    latencies_ms: list[list[float]] = field(default_factory=list)  # per round
    rates: list[float] = field(default_factory=list)  # images per second, per round
    cpu_ms: list[float] = field(default_factory=list)  # CPU time per image (the process doing the work), per round

    def median_ms(self, rnd: int) -> float:
        return statistics.median(self.latencies_ms[rnd])


def timed_loop(fn: Callable[[int], object], seconds: float) -> tuple[list[float], float]:
    latencies, i = [], 0
    started = time.perf_counter()
    while i < 3 or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        fn(i)
        latencies.append((time.perf_counter() - t0) * 1e3)
        i += 1
    return latencies, i / (time.perf_counter() - started)


def http_round(url: str, images: list[bytes], clients: int, seconds: float) -> tuple[list[float], float, int]:
    """`clients` keep-alive clients, a thread each, posting one photo after another: latencies, req/s, errors.

    With the standard library's client (`bench_http.post_image`).
    """
    address = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(first: int) -> None:
        nonlocal errors
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=120)
        i = first
        post_image(connection, images[i % len(images)])  # the connection opens before the clock
        start.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            i += clients
            t0 = time.perf_counter()
            status = post_image(connection, images[i % len(images)])
            with lock:
                if status == 200:
                    latencies.append((time.perf_counter() - t0) * 1e3)
                else:
                    errors += 1
        connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return latencies, len(latencies) / (time.perf_counter() - started), errors


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_line() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    vnni = "AVX-512 VNNI" if "avx512_vnni" in info else "no AVX-512 VNNI"
    return f"{model} ({vnni})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_photo_http", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=MODEL_DIR)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time of each stage per round")
    parser.add_argument("--no-report", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--baseline", type=Path, help="a directory holding older spa_service and spa_models packages")
    parser.add_argument("--server-pid-file", type=Path, help="write the server's pid here (for a profiler)")
    parser.add_argument("--variant", action="append", default=[], metavar="SPA_X=V[,SPA_Y=W]",
                        help="also measure a spa-serve with these settings (repeatable), in the same rounds")
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "bench.bench_photo_http", *(argv if argv is not None else sys.argv[1:])])
    limit_blas_threads()  # the in-process stages then run as they do inside spa-serve

    images = photos()
    settings = Settings(model_dir=args.model_dir)
    card, onnx_path = load_card(args.model_dir)
    # What a user would run by hand: onnxruntime's defaults, which are its fastest for one call at a time.
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    localizer = Localizer.from_settings(settings.model_copy(update={"max_batch_size": 1}))
    decoded = [decode_for_model(data, max_pixels=10**8, input_size=card.input_size) for data in images]
    tensors = [preprocess([d], input_size=card.input_size, mean=card.mean, std=card.std) for d in decoded]
    options = [LocalizeOptions()]
    variants = {variant: dict(item.split("=", 1) for item in variant.split(",")) for variant in args.variant}
    names = ["raw", "localizer", "http1", "http4"] + (["before1", "before4"] if args.baseline else [])
    names += [f"{variant} x{clients}" for variant in variants for clients in (1, 4)]
    stages = {name: Stage() for name in names}
    errors = 0
    load_before = os.getloadavg()

    def raw(i: int) -> None:
        session.run(None, {card.io.image: tensors[i % len(tensors)]})

    def localize(i: int) -> None:
        localizer.localize([decoded[i % len(decoded)]], options)

    timed_loop(raw, 0)  # warm-up
    timed_loop(localize, 0)
    with tempfile.TemporaryDirectory(prefix="spa-bench-") as tmp:
        port = free_port()
        server: subprocess.Popen = start_server(args.model_dir, port, Path(tmp) / "server.log")
        if args.server_pid_file:
            args.server_pid_file.write_text(str(server.pid))
        url = f"http://127.0.0.1:{port}"
        servers = [server]
        try:
            http = [("http1", url, 1, server), ("http4", url, 4, server)]
            if args.baseline:
                before_port = free_port()
                before = start_server(args.model_dir, before_port, Path(tmp) / "before.log",
                                      env={"PYTHONPATH": str(args.baseline.resolve())}, module=serve_module(args.baseline))
                servers.append(before)
                before_url = f"http://127.0.0.1:{before_port}"
                http += [("before1", before_url, 1, before), ("before4", before_url, 4, before)]
            for k, (variant, env) in enumerate(variants.items()):
                variant_port = free_port()
                servers.append(start_server(args.model_dir, variant_port, Path(tmp) / f"variant{k}.log", env=env))
                http += [(f"{variant} x{clients}", f"http://127.0.0.1:{variant_port}", clients, servers[-1])
                         for clients in (1, 4)]
            for rnd in range(args.rounds):
                for name, fn in (("raw", raw), ("localizer", localize)):
                    cpu_before = time.process_time()
                    latencies, rate = timed_loop(fn, args.seconds)
                    stages[name].cpu_ms.append((time.process_time() - cpu_before) / len(latencies) * 1e3)
                    stages[name].latencies_ms.append(latencies)
                    stages[name].rates.append(rate)
                for name, server_url, clients, process in http:
                    pid = process.pid
                    cpu_before = process_cpu_s(pid)
                    latencies, rate, failed = http_round(server_url, images, clients, args.seconds)
                    stages[name].cpu_ms.append((process_cpu_s(pid) - cpu_before) / max(1, len(latencies)) * 1e3)
                    stages[name].latencies_ms.append(latencies)
                    stages[name].rates.append(rate)
                    errors += failed
                print(f"round {rnd + 1}: " + ", ".join(
                    f"{name} p50 {stage.median_ms(rnd):.1f} ms {stage.rates[rnd]:.1f}/s" for name, stage in stages.items()
                ), flush=True)
        finally:
            for process in servers:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    load_after = os.getloadavg()
    report = markdown(stages, errors, command, card, (load_before, load_after), args)
    print(report)
    if not args.no_report:
        from bench.report import update_section

        update_section("http-photo-variants" if args.variant else "http-photo-side", report)


def markdown(stages: dict[str, Stage], errors: int, command: str, card, load, args) -> str:
    rounds = range(args.rounds)

    def med(values) -> float:
        return statistics.median(list(values))

    raw, h1, h4 = (stages[n] for n in ("raw", "http1", "http4"))
    # Ratios are to the raw backbone's best round: a round where something else slowed the machine
    # (this VM's raw latency jumps from ~8.6 to ~11.7 ms now and then) must not flatter them.
    raw_ms, raw_rate = min(raw.median_ms(r) for r in rounds), max(raw.rates)
    latency_ratio = med(h1.median_ms(r) for r in rounds) / raw_ms
    throughput_share = med(h4.rates) / raw_rate
    rows = [
        "| stage | p50 ms | img/s | p50 vs raw | img/s vs raw | CPU ms per image |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    labels = {
        "raw": "raw backbone (onnxruntime defaults, batch 1, in process)",
        "localizer": "Localizer.localize (batch 1, in process)",
        "http1": "spa-serve, 1 keep-alive client",
        "http4": "spa-serve, 4 keep-alive clients",
        "before1": "before (--baseline), 1 keep-alive client",
        "before4": "before (--baseline), 4 keep-alive clients",
    }
    for name, stage in stages.items():
        variant, _, clients = name.rpartition(" x")
        label = labels.get(name) or f"spa-serve with {variant}, {clients} keep-alive client{'s' if clients != '1' else ''}"
        rows.append(
            f"| {label} | {med(stage.median_ms(r) for r in rounds):.1f} | {med(stage.rates):.1f} "
            f"| {med(stage.median_ms(r) for r in rounds) / raw_ms:.2f}x "
            f"| {med(stage.rates) / raw_rate:.0%} | {med(stage.cpu_ms):.1f} |"
        )
    meets = lambda ok: "meets" if ok else "misses"  # noqa: E731
    return "\n".join([
        f"## Real-photo model over HTTP beside its raw backbone ({card.name})",
        "",
        f"`{command}`",
        "",
        f"{card.name} ({card.arch}, {card.num_classes} classes, input {card.input_size[0]}x{card.input_size[1]}); "
        f"the project's real photos (tests/data, the model's samples) and their mirror images, resized to "
        f"{PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} and re-encoded (JPEG q90); default query (top-1, SCG, heatmap PNG), "
        f"default server settings, loopback, keep-alive http.client clients (a thread each). {args.rounds} rounds of {args.seconds:g} s per stage, stages "
        "alternating; each figure is the median over rounds of that round's median (latency) or rate; ratios are "
        "to the raw backbone's best round (its lowest p50, its highest rate). CPU ms per image: CPU time of the "
        "process doing the work (this one in process, the server over HTTP; all threads) over images done.",
        f"CPU: {cpu_line()}, {len(os.sched_getaffinity(0))} cores; onnxruntime {ort.__version__}, Python "
        f"{platform.python_version()}; load average (1 min) {load[0][0]:.1f} before, {load[1][0]:.1f} after "
        "(other work on the machine shows up here).",
        "",
        *rows,
        "",
        f"- One client's p50 is {latency_ratio:.2f}x the raw backbone's batch-1 latency "
        f"({meets(latency_ratio <= LATENCY_TARGET)} the {LATENCY_TARGET}x target).",
        f"- Four clients reach {throughput_share:.0%} of the raw backbone's batch-1 throughput "
        f"({meets(throughput_share >= THROUGHPUT_TARGET)} the {THROUGHPUT_TARGET:.0%} target).",
        f"- HTTP errors: {errors}.",
        *([f"- Before (the code in --baseline, same rounds): one client {med(stages['before1'].median_ms(r) for r in rounds) / raw_ms:.2f}x "
           f"the raw backbone, four clients {med(stages['before4'].rates) / raw_rate:.0%} of it."]
          if args.baseline else []),
    ])


if __name__ == "__main__":
    main()
