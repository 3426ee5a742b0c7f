"""Large images and hostile clients: bounded memory, admission by cost, slow bodies and heads, drains."""

from __future__ import annotations

import dataclasses
import io
import signal
import socket
import time
import tracemalloc
from pathlib import Path

import httpx
import pytest
from box_oracles import full_size_boxes
from helpers.serve import spa_serve, wait_for
from PIL import Image
from service_helpers import make_image, serving
from spa_service.http.app import create_app
from spa_service.http.render import render_localization
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.pipeline.resize import resize_maps
from spa_service.settings import BUNDLED_MODEL_DIR, Settings

BIG = (6000, 6000)  # (H, W): 36 MP, under the default 40 MP limit


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM): a bound on every moment, no sampling needed."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def big_jpeg() -> bytes:
    """A 36 MP JPEG with a blob, cheap to make: a small image scaled up."""
    small = Image.open(io.BytesIO(make_image(7, (300, 300), "PNG")))
    buffer = io.BytesIO()
    small.resize((BIG[1], BIG[0]), Image.BILINEAR).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def test_postprocess_of_a_36_mp_image_allocates_no_full_size_maps(tiny_model_dir: Path) -> None:
    localizer = Localizer.from_settings(Settings(model_dir=tiny_model_dir, providers="cpu"))
    image = decode_image(make_image(3, (96, 96)), max_pixels=40_000_000)
    run = dataclasses.replace(localizer.run_backbone([image]), sizes=[BIG])  # as if the image were 36 MP
    every = localizer.card.num_classes
    full_maps_bytes = every * BIG[0] * BIG[1] * 4
    for mode in ("union", "largest"):
        options = LocalizeOptions(topk=every, box_mode=mode)
        tracemalloc.start()
        try:
            [result] = localizer.postprocess(run, [options])
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # union: bands of 16 MB; largest: one class at a time, its uint8 mask and 16-bit labels (108 MB).
        bound = 40e6 if mode == "union" else 130e6
        assert peak < bound < full_maps_bytes / 8, f"{mode}: {peak / 1e6:.0f} MB"
    # The boxes are those of the full-size heatmaps, here made on purpose for one class.
    prediction = result.predictions[0]
    threshold = localizer.card.box_threshold["scg"]
    assert prediction.boxes == full_size_boxes(resize_maps(prediction.map[None], BIG), threshold, "largest")[0]
    tracemalloc.start()
    try:
        render_localization(result, model_name="m", heatmap="png", heatmap_max_side=2048, heatmap_cell_px=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 30e6, f"PNGs: {peak / 1e6:.0f} MB"  # one 2048 x 2048 uint8 page + its PNG at a time


@pytest.mark.system
def test_a_36_mp_request_for_every_class_stays_within_its_memory_bound(tmp_path: Path) -> None:
    data = big_jpeg()
    with spa_serve(BUNDLED_MODEL_DIR, tmp_path / "server.log") as server:
        idle = peak_rss_mb(server.process.pid)
        every = httpx.get(f"{server.url}/v1/models").json()["models"][0]["num_classes"]
        response = httpx.post(
            f"{server.url}/v1/localize", params={"topk": every}, files={"image": ("big.jpg", data)}, timeout=120
        )
        assert response.status_code == 200, response.text
        peak = peak_rss_mb(server.process.pid)
    # The decoded image (108 MB of RGB) plus bands; the old path held 8 full-size float maps (1.2 GB).
    assert peak - idle < 400, f"peak {peak:.0f} MB, idle {idle:.0f} MB"
    expected = Localizer.from_settings(Settings(model_dir=BUNDLED_MODEL_DIR, providers="cpu")).localize(
        [decode_image(data, max_pixels=40_000_000)], [LocalizeOptions(topk=every)]
    )[0]
    got = response.json()["predictions"]
    assert [p["class_id"] for p in got] == [p.class_id for p in expected.predictions]
    assert [[tuple(b) for b in p["boxes"]] for p in got] == [p.boxes for p in expected.predictions]


@pytest.mark.anyio
async def test_a_request_over_the_work_budget_is_413_naming_the_limit(settings_for) -> None:
    app = create_app(settings_for(max_request_work_mp=0.05))
    async with serving(app) as client:
        small = await client.post("/v1/localize", files={"image": ("a.png", make_image(1, (64, 48)))})
        assert small.status_code == 200
        big = await client.post("/v1/localize", params={"topk": 5}, files={"image": ("b.png", make_image(1, (400, 300)))})
        assert big.status_code == 413
        error = big.json()["error"]
        assert error["code"] == "request_too_costly" and "SPA_MAX_REQUEST_WORK_MP" in error["message"]


@pytest.mark.anyio
async def test_a_batch_larger_than_the_queue_is_413_not_503(settings_for) -> None:
    app = create_app(settings_for(max_queue_size=2, max_batch_images=8))
    async with serving(app) as client:
        files = [("images", (f"{i}.png", make_image(i, (40, 30)))) for i in range(3)]
        response = await client.post("/v1/localize/batch", files=files)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "too_many_images"
        assert "SPA_MAX_QUEUE_SIZE=2" in response.json()["error"]["message"]


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


@pytest.mark.system
def test_trickled_body_and_trickled_head_are_cut_off_while_others_are_served(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {"SPA_BODY_DEADLINE_S": "2", "SPA_BODY_TIMEOUT_S": "30", "SPA_HEAD_TIMEOUT_S": "1.5"}
    with spa_serve(tiny_model_dir, tmp_path / "server.log", **env) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as body_trickle, \
                socket.create_connection(("127.0.0.1", server.port), timeout=30) as head_trickle:
            body_trickle.sendall(
                b"POST /v1/localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"
            )
            head_trickle.sendall(b"POST /v1/localize HTTP/1.1\r\n")
            started = time.monotonic()
            closed: dict[str, float] = {}
            body_trickle.setblocking(False)
            head_trickle.setblocking(False)
            answers = {"body": b"", "head": b""}
            # One byte every 0.2 s on each, for at most 15 s: both must be cut off well before that.
            while len(closed) < 2 and time.monotonic() - started < 15:
                for name, sock, byte in (("body", body_trickle, b"\0"), ("head", head_trickle, b"X")):
                    if name in closed:
                        continue
                    try:
                        sock.sendall(byte)
                        chunk = sock.recv(65536)
                        answers[name] += chunk
                        if chunk == b"":
                            closed[name] = time.monotonic() - started
                    except BlockingIOError:
                        pass
                    except (BrokenPipeError, ConnectionResetError):
                        closed[name] = time.monotonic() - started
                if len(closed) < 2:
                    ok = httpx.post(f"{server.url}/v1/localize", files={"image": ("a.png", make_image(2))}, timeout=30)
                    assert ok.status_code == 200  # others are served meanwhile
                time.sleep(0.2)
        assert set(closed) == {"body", "head"}, f"still open after 15 s: {answers}"
        assert closed["body"] < 10 and b"408" in answers["body"].split(b"\r\n", 1)[0]
        assert b"body_timeout" in answers["body"]
        assert closed["head"] < 10


@pytest.mark.system
def test_a_stalled_upload_during_a_drain_gets_the_json_503(tiny_model_dir: Path, tmp_path: Path) -> None:
    with spa_serve(tiny_model_dir, tmp_path / "server.log", SPA_SHUTDOWN_TIMEOUT_S="4") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/localize HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
                + b"\0" * 100
            )
            wait_for(
                lambda: 'spa_requests_in_progress{route="/v1/localize"} 1.0'
                in httpx.get(f"{server.url}/metrics", timeout=10).text
            )
            server.process.send_signal(signal.SIGTERM)
            answer = read_until_closed(sock)  # the rest of the body never comes
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b'"shutting_down"' in answer
        assert server.process.wait(30) == 0
    assert "Traceback" not in server.log()
