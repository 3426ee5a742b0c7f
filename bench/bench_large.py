"""Large photos through a real spa-serve: milliseconds per request and the server's peak memory.

Run from the repository root (writes its section of BENCHMARKS.md):
    python -m bench.bench_large [--draft]
0.2, 3, 12 and 36 MP JPEGs (one photo scaled), the bundled demo model, default query and topk=5,
sizes alternating within each round. Peak RSS is the server's VmHWM, read after each size's first
request in ascending size order (so each reading is that size's peak), and once more after four
36 MP requests at once. `--draft` serves with SPA_JPEG_DRAFT=true (JPEGs decoded at a reduced DCT
scale) and writes section "large-draft" instead of "large".
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import httpx
import onnxruntime as ort
from PIL import Image
from spa_service.settings import BUNDLED_MODEL_DIR

from bench.bench_http import free_port, post_image, start_server, status_mb
from bench.report import update_section

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"
SIZES = ((516, 387), (2000, 1500), (4000, 3000), (6000, 6000))  # (width, height): 0.2, 3, 12, 36 MP
QUERIES = ({}, {"topk": 5})


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(PHOTO).convert("RGB").resize((width, height), Image.BICUBIC).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def post(connection: http.client.HTTPConnection, data: bytes, query: dict) -> float:
    """Milliseconds for one request on a kept-alive connection (a new client per request would add its
    own start-up to every size alike, flattering the ratios)."""
    started = time.perf_counter()
    status = post_image(connection, data, "/v1/localize?" + urlencode(query))
    if status != 200:
        raise RuntimeError(f"HTTP {status}")
    return (time.perf_counter() - started) * 1e3


async def four_at_once(url: str, data: bytes) -> None:
    async with httpx.AsyncClient(timeout=300) as client:
        responses = await asyncio.gather(
            *(client.post(f"{url}/v1/localize", params={"topk": 8}, files={"image": ("i.jpg", data)}) for _ in range(4))
        )
    for response in responses:
        response.raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--draft", action="store_true", help="serve with SPA_JPEG_DRAFT=true")
    args = parser.parse_args()
    images = {size: jpeg(*size) for size in SIZES}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        server = start_server(BUNDLED_MODEL_DIR, port, Path(tmp) / "server.log",
                              env={"SPA_JPEG_DRAFT": "true" if args.draft else "false"})
        url = f"http://127.0.0.1:{port}"
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            idle = status_mb(server.pid, "VmRSS")
            peaks = {}
            for size in SIZES:  # ascending: each high-water mark belongs to this size
                post(connection, images[size], {"topk": 8})
                peaks[size] = status_mb(server.pid, "VmHWM")
            after_one = status_mb(server.pid, "VmRSS")
            asyncio.run(four_at_once(url, images[SIZES[-1]]))
            connection.close()  # it may have idled past the server's keep-alive: the next request reopens it
            peak_four = status_mb(server.pid, "VmHWM")
            times: dict[tuple, list[float]] = {(size, i): [] for size in SIZES for i in range(len(QUERIES))}
            for _ in range(args.rounds):
                for size in SIZES:
                    for i, query in enumerate(QUERIES):
                        times[(size, i)].append(post(connection, images[size], query))
            after_all = status_mb(server.pid, "VmRSS")
        finally:
            connection.close()
            server.terminate()
            server.wait(60)
    small = {i: statistics.median(times[(SIZES[0], i)]) for i in range(len(QUERIES))}
    lines = [
        "| image | MP | JPEG KB | default query, ms | vs 0.2 MP | topk=5, ms | vs 0.2 MP | peak RSS, topk=8, MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in SIZES:
        width, height = size
        medians = [statistics.median(times[(size, i)]) for i in range(len(QUERIES))]
        lines.append(
            f"| {width} x {height} | {width * height / 1e6:.1f} | {len(images[size]) // 1000} | "
            f"{medians[0]:.0f} | {medians[0] / small[0]:.1f}x | {medians[1]:.0f} | {medians[1] / small[1]:.1f}x | "
            f"{peaks[size]:.0f} |"
        )
    markdown = "\n".join(
        [
            "## Large images: spa-serve, demo model" + (", JPEGs decoded at a reduced scale" if args.draft else ""),
            "",
            f"`python -m bench.bench_large --rounds {args.rounds}{' --draft' if args.draft else ''}` "
            f"(SPA_JPEG_DRAFT={'true' if args.draft else 'false'}; {platform.machine()}, "
            f"{len(os.sched_getaffinity(0))} cores, onnxruntime {ort.__version__} CPU; load average "
            f"{load_before:.1f} before the run: other work on the machine shows up here).",
            "",
            "Median ms per request over the rounds (one kept-alive http.client connection, JPEG bodies), sizes "
            "alternating; peak RSS is the server's high-water mark after its first request of that size "
            "(ascending sizes).",
            "",
            *lines,
            "",
            f"Server RSS: {idle:.0f} MB idle after warm-up, {after_one:.0f} MB after the 36 MP request, "
            f"peak {peak_four:.0f} MB with four 36 MP topk=8 requests at once, {after_all:.0f} MB at the end.",
        ]
    )
    update_section("large-draft" if args.draft else "large", markdown)
    print(markdown)


if __name__ == "__main__":
    sys.exit(main())
