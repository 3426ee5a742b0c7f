"""`spa-serve` as a real process on a loopback port: answers, limits on the wire, logs, SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers.serve import SPA_SERVE, Server, spa_serve, wait_for
from service_helpers import make_image, png_from_data_uri, reference
from spa_service.pipeline.heatmap_png import heatmap_to_uint8
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import Settings

pytestmark = pytest.mark.system

BODY_LIMIT = 200_000


def exchange(port: int, head: bytes, *body_parts: bytes, pause_s: float = 0.0, timeout_s: float = 10.0) -> bytes:
    """Send a raw HTTP request in parts and read the response until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(head)
        for part in body_parts:
            time.sleep(pause_s)
            sock.sendall(part)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log_path = tmp_path_factory.mktemp("spa-serve") / "server.log"
    with spa_serve(tiny_model_dir, log_path, SPA_MAX_BODY_BYTES=str(BODY_LIMIT), SPA_LOG_LEVEL="INFO") as server:
        yield server


def test_answers_match_the_localizer(server: Server, tiny_model_dir: Path) -> None:
    localizer = Localizer.from_settings(Settings(model_dir=tiny_model_dir))
    data = make_image(40, (150, 100), "JPEG")
    multipart = httpx.post(f"{server.url}/v1/localize?topk=2", files={"image": ("a.jpg", data)}, timeout=30)
    raw = httpx.post(
        f"{server.url}/v1/localize?topk=2", content=data, headers={"Content-Type": "image/jpeg"}, timeout=30
    )
    expected = reference(localizer, data, LocalizeOptions(topk=2))
    for response in (multipart, raw):
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert [p["class_id"] for p in predictions] == [p.class_id for p in expected.predictions]
        for got, want in zip(predictions, expected.predictions):
            assert [tuple(b) for b in got["boxes"]] == want.boxes
            # The server runs numpy with one BLAS thread, this process with more: maps may differ in the
            # last float bit, so a value on a rounding edge may be one level apart.
            served = np.asarray(png_from_data_uri(got["heatmap"]), dtype=np.int16)
            assert np.abs(served - heatmap_to_uint8(want.heatmap_at_image_size())).max() <= 1
    assert httpx.get(f"{server.url}/v1/models").json()["default"] == localizer.card.name
    assert 'spa_requests_total{route="/v1/localize",status="200"}' in httpx.get(f"{server.url}/metrics").text


def test_declared_length_over_limit_is_refused_without_the_body(server: Server) -> None:
    head = (
        b"POST /v1/localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
        b"Content-Length: 1000000000\r\n\r\n"
    )
    status, body = status_and_body(exchange(server.port, head))
    assert status == 413 and b"body_too_large" in body


def test_chunked_body_is_cut_off_at_the_limit(server: Server) -> None:
    """The body never ends; the 413 comes once the limit is passed."""
    head = b"POST /v1/localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"%x\r\n" % 50_000 + b"\0" * 50_000 + b"\r\n"
    status, body = status_and_body(exchange(server.port, head, *[chunk] * 5))
    assert status == 413 and b"body_too_large" in body
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_one_structured_log_line_per_request(server: Server) -> None:
    httpx.post(f"{server.url}/v1/localize", files={"image": ("a.png", make_image(41, (77, 55)))}, timeout=30)
    deadline = time.monotonic() + 5
    while "image_size=77x55" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    [line] = [line for line in server.log().splitlines() if "image_size=77x55" in line]
    for field in ("route=/v1/localize", "method=POST", "status=200", "latency_ms=", "batch_size=1"):
        assert field in line


def metrics_text(server: Server) -> str:
    return httpx.get(f"{server.url}/metrics", timeout=10).text


def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = make_image(42, (120, 90), "PNG")
    head = (
        b"POST /v1/localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\n\r\n" % len(data)
    )
    with spa_serve(tiny_model_dir, tmp_path / "server.log") as server:
        half = len(data) // 2

        def sigterm_midway() -> bytes:
            with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
                sock.sendall(head + data[:half])
                wait_for(lambda: 'spa_requests_in_progress{route="/v1/localize"} 1.0' in metrics_text(server))
                server.process.send_signal(signal.SIGTERM)
                wait_for(lambda: "shutting down" in server.log())  # the drain has begun
                sock.sendall(data[half:])
                received = b""
                while chunk := sock.recv(65536):
                    received += chunk
                return received

        status, body = status_and_body(sigterm_midway())
        assert status == 200, body
        assert server.process.wait(30) == 0, server.log()
    assert "batcher drained" in server.log()


def test_missing_model_dir_is_a_usage_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = subprocess.run([str(SPA_SERVE), "--model-dir", str(missing)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"model directory {missing} does not exist" in result.stderr


def test_unloadable_model_is_an_error_line(tmp_path: Path) -> None:
    result = subprocess.run([str(SPA_SERVE), "--model-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("spa-serve: error: ") and "model.json" in result.stderr
