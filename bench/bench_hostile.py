"""Hostile uploads against a real spa-serve (issue 20): what each costs the server, and whether its
event loop and queue stay free.

Run from the repository root (writes its section of BENCHMARKS.md):
    python -m bench.bench_hostile [--baseline DIR]

spa-serve with default settings, both bundled models (the real-photo one is the default). For each
upload, the server's peak RSS over idle (VmHWM, restarted before each request through
/proc/PID/clear_refs); four 16-bit 36 MP uploads at once; RSS once they are all done; the
slowest /healthz while 4 clients post batches of 16 small PNGs that each carry 60 zTXt chunks; a
small request's latency after 32 clients sent a 12 MP photo and hung up 0.3 s later. With
--baseline DIR, the same against a server importing spa_service and spa_models from DIR (a
checkout of older code: DIR/spa_service and DIR/spa_models linking to its service/ and models/),
in the same run, on the same machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from bench.bench_http import free_port, jpegs, serve_module, start_server, status_mb
from bench.report import update_section

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the hostile files, built as the tests build them

from helpers.hostile_files import blocks, encode, text_bomb_png  # noqa: E402

PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
HUNG_UP_CLIENTS = 32
FLOOD_CLIENTS, FLOOD_ROUNDS, FLOOD_IMAGES = 4, 6, 16


def uploads() -> dict[str, tuple[bytes, str]]:
    photo = Image.open(PHOTO).convert("RGB")
    return {
        "PNG 16,000,000 x 2": (encode(Image.new("L", (16_000_000, 2), 90), "PNG"), "image/png"),
        "PNG 39,000,000 x 1": (encode(Image.new("L", (39_000_000, 1), 90), "PNG"), "image/png"),
        "16-bit greyscale PNG 6000 x 6000": (encode(Image.fromarray(blocks(np.uint16)), "PNG"), "image/png"),
        "32-bit integer TIFF 6000 x 6000, deflate": (
            encode(Image.fromarray(blocks(np.int32)), "TIFF", compression="tiff_adobe_deflate"), "image/tiff"),
        "float TIFF 6000 x 6000, deflate": (
            encode(Image.fromarray(blocks(np.float32)), "TIFF", compression="tiff_adobe_deflate"), "image/tiff"),
        "JPEG photo 6000 x 6000": (encode(photo.resize((6000, 6000), Image.BICUBIC), "JPEG", quality=90), "image/jpeg"),
    }


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def post(url: str, data: bytes, content_type: str) -> tuple[int, float]:
    started = time.perf_counter()
    response = httpx.post(f"{url}/v1/localize", content=data, headers={"content-type": content_type}, timeout=600)
    return response.status_code, time.perf_counter() - started


def hang_up_after(port: int, data: bytes, seconds: float, sent: threading.Barrier) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(
            f"POST /v1/localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
            .encode() + data
        )
        sent.wait()
        time.sleep(seconds)  # the client's patience


def dropped_images(url: str) -> float | None:
    values = [
        sample.value
        for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=30).text)
        for sample in family.samples
        if sample.name == "spa_images_dropped_total"
    ]
    return sum(values) if values else None


@dataclass
class Figures:
    idle_mb: float = 0.0
    rows: dict[str, tuple[int, float, float, float]] = field(default_factory=dict)  # status, RSS before, peak, s
    four_peak_mb: float = 0.0
    four_codes: list[int] = field(default_factory=list)
    after_mb: float = 0.0
    healthz_ms: list[float] = field(default_factory=list)
    flood_codes: set[int] = field(default_factory=set)
    flood_entries: set[str] = field(default_factory=set)
    small_alone_ms: float = 0.0
    small_after_ms: float = 0.0
    small_after_code: int = 0
    dropped: float | None = None


def measure(python_path: str | None, images: dict[str, tuple[bytes, str]], log_path: Path) -> Figures:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_server(None, port, log_path, env={"PYTHONPATH": python_path} if python_path else None,
                          ready_timeout_s=180, module=serve_module(Path(python_path) if python_path else None))
    figures = Figures()
    try:
        [small] = jpegs(1)
        figures.small_alone_ms = 1e3 * statistics.median(post(url, small, "image/jpeg")[1] for _ in range(5))
        figures.idle_mb = status_mb(server.pid, "VmRSS")

        for name, (data, content_type) in images.items():
            reset_peak(server.pid)
            before = status_mb(server.pid, "VmRSS")
            code, seconds = post(url, data, content_type)
            figures.rows[name] = (code, before, status_mb(server.pid, "VmHWM"), seconds)
        flood_batch = [("images", (f"{i}.png", text_bomb_png(i), "image/png")) for i in range(FLOOD_IMAGES)]
        reset_peak(server.pid)
        before, started = status_mb(server.pid, "VmRSS"), time.perf_counter()
        response = httpx.post(f"{url}/v1/localize/batch", files=flood_batch, timeout=600)
        figures.rows[f"batch of {FLOOD_IMAGES} PNGs of 60 KB with 60 zTXt chunks"] = (
            response.status_code, before, status_mb(server.pid, "VmHWM"), time.perf_counter() - started)

        sixteen, content_type = images["16-bit greyscale PNG 6000 x 6000"]
        reset_peak(server.pid)
        codes: list[int] = []
        threads = [threading.Thread(target=lambda: codes.append(post(url, sixteen, content_type)[0])) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        figures.four_peak_mb, figures.four_codes = status_mb(server.pid, "VmHWM"), codes
        time.sleep(2.0)  # what the server holds once it is idle again, not while it finishes
        figures.after_mb = status_mb(server.pid, "VmRSS")

        answers: list[httpx.Response] = []

        def flood() -> None:
            with httpx.Client(timeout=600) as client:
                for _ in range(FLOOD_ROUNDS):
                    answers.append(client.post(f"{url}/v1/localize/batch", files=flood_batch))

        flooders = [threading.Thread(target=flood) for _ in range(FLOOD_CLIENTS)]
        for thread in flooders:
            thread.start()
        with httpx.Client(timeout=60) as probe:
            while any(thread.is_alive() for thread in flooders):
                started = time.perf_counter()
                probe.get(f"{url}/healthz")
                figures.healthz_ms.append((time.perf_counter() - started) * 1e3)
        for thread in flooders:
            thread.join()
        figures.flood_codes = {r.status_code for r in answers}
        figures.flood_entries = {
            e.get("error", {}).get("code", "ok") for r in answers if r.status_code == 200 for e in r.json()["results"]
        }

        heavy = encode(Image.open(PHOTO).convert("RGB").resize((4000, 3000), Image.BICUBIC), "JPEG", quality=90)
        sent = threading.Barrier(HUNG_UP_CLIENTS)
        clients = [
            threading.Thread(target=hang_up_after, args=(port, heavy, 0.3, sent)) for _ in range(HUNG_UP_CLIENTS)
        ]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        figures.small_after_code, seconds = post(url, small, "image/jpeg")
        figures.small_after_ms = seconds * 1e3
        figures.dropped = dropped_images(url)
    finally:
        server.terminate()
        server.wait(120)
    return figures


def report(runs: dict[str, Figures], images: dict[str, tuple[bytes, str]], baseline: str | None) -> str:
    names = list(runs)
    head = "| upload | bytes | " + " | ".join(f"{n}: answer | {n}: s | {n}: RSS before -> peak, MB" for n in names) + " |"
    lines = [head, "|---|---:|" + "---|---:|---:|" * len(names)]
    sizes = {name: len(data) for name, (data, _) in images.items()}
    sizes[f"batch of {FLOOD_IMAGES} PNGs of 60 KB with 60 zTXt chunks"] = FLOOD_IMAGES * len(text_bomb_png(0))
    for row in runs[names[0]].rows:
        cells = []
        for name in names:
            code, before, peak, seconds = runs[name].rows[row]
            cells.append(f"{code} | {seconds:.1f} | {before:,.0f} -> {peak:,.0f}")
        lines.append(f"| {row} | {sizes[row] / 1e3:,.0f} KB | " + " | ".join(cells) + " |")

    def line(label: str, fn) -> str:
        return f"| {label} | " + " | ".join(fn(runs[n]) for n in names) + " |"

    done = [
        "| Done when (issue 20) | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        line("idle RSS, MB", lambda f: f"{f.idle_mb:.0f}"),
        line("largest single-request peak over idle, MB (<= 400)",
             lambda f: f"{max(r[2] for r in f.rows.values()) - f.idle_mb:,.0f}"),
        line("four 16-bit 36 MP uploads at once: peak RSS, MB (<= 1,200)",
             lambda f: f"{f.four_peak_mb:,.0f} ({f.four_peak_mb - f.idle_mb:+,.0f} over idle; answers {sorted(f.four_codes)})"),
        line("RSS 2 s after them, MB over idle (<= 150)", lambda f: f"{f.after_mb - f.idle_mb:+.0f}"),
        line("/healthz during the text-chunk flood: slowest, ms (<= 500)",
             lambda f: f"{max(f.healthz_ms):.0f} (median {statistics.median(f.healthz_ms):.0f}, {len(f.healthz_ms)} probes)"),
        line("flood answers", lambda f: f"{sorted(f.flood_codes)}, entries {sorted(f.flood_entries)}"),
        line(f"small request after {HUNG_UP_CLIENTS} hung-up 12 MP requests, ms (<= 1,500)",
             lambda f: f"{f.small_after_ms:,.0f} (alone {f.small_alone_ms:.0f}; answer {f.small_after_code})"),
        line("images dropped (spa_images_dropped_total)", lambda f: "-" if f.dropped is None else f"{f.dropped:.0f}"),
    ]
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.machine())
    vnni = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    return "\n".join([
        "## Hostile uploads: spa-serve, default settings, both bundled models",
        "",
        f"`python -m bench.bench_hostile{' --baseline DIR' if baseline else ''}` ({cpu}, {'with' if vnni else 'no'} "
        f"AVX-512 VNNI, {len(os.sched_getaffinity(0))} cores, load average {os.getloadavg()[0]:.1f} at the end). "
        "Peak RSS is the server's VmHWM, restarted from its RSS before each request; one request at a time, "
        "in this order, so RSS a request leaves behind shows in the next one's."
        + (" `before` is the code in DIR, `after` this checkout, measured in the same run." if baseline else ""),
        "",
        *lines,
        "",
        *done,
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, help="a directory holding older spa_service and spa_models packages")
    args = parser.parse_args()
    images = uploads()
    runs: dict[str, Figures] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            runs["before"] = measure(str(args.baseline.resolve()), images, Path(tmp) / "before.log")
        runs["after" if args.baseline else "this code"] = measure(None, images, Path(tmp) / "after.log")
    markdown = report(runs, images, args.baseline)
    update_section("hostile", markdown)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
