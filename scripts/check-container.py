"""Checks a running SPA Localizer container against the same model run on this machine, and (`compose`) the
compose file and its GPU override.

Called by scripts/test-container; exits non-zero with a message on the first failed check.
"""

from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

from spa_service.pipeline.heatmap_png import heatmap_to_uint8
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import Localizer, LocalizeOptions
from spa_service.pipeline.resize import resize_maps
from spa_service.settings import Settings


def fail(message: str) -> None:
    print(f"[check-container] FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def say(message: str) -> None:
    print(f"[check-container] {message}", file=sys.stderr)


def engine_cmd(engine: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([engine, *args], capture_output=True, text=True, timeout=120)


def wait_ready(client: httpx.Client, engine: str, container: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = engine_cmd(engine, "inspect", container, "--format", "{{.State.Running}}").stdout.strip()
        if state == "false":
            fail(f"container stopped before it was ready:\n{engine_cmd(engine, 'logs', container).stderr[-2000:]}")
        time.sleep(0.5)
    fail(f"not ready after {timeout_s:.0f} s")


def check_answers(client: httpx.Client, model_dir: Path) -> None:
    """Same classes, scores, boxes and heatmap pixels as the host's Localizer on the same model."""
    localizer = Localizer.from_settings(Settings(model_dir=model_dir, providers="cpu"))
    name = localizer.card.name
    served = [card.get("name") for card in client.get("/v1/models").json().get("models", [])]
    if name not in served:
        fail(f"container serves {served}, not {name!r}")
    samples = sorted((model_dir / "samples").glob("*.jpg"))
    if not samples:
        fail(f"no sample images in {model_dir / 'samples'}")
    cases = [
        LocalizeOptions(topk=3, method="scg", box_mode="all"),
        LocalizeOptions(topk=1, method="cam", box_mode="union"),
    ]
    for path in samples:
        data = path.read_bytes()
        image = decode_image(data, max_pixels=40_000_000)
        for options in cases:
            params = {"topk": options.topk, "method": options.method, "box_mode": options.box_mode}
            response = client.post(
                f"/v1/models/{name}/localize", params=params, files={"image": (path.name, data, "image/jpeg")}
            )
            if response.status_code != 200:
                fail(f"{path.name} {params}: HTTP {response.status_code} {response.text[:300]}")
            got = response.json()
            (want,) = localizer.localize([image], [options])
            if (got["width"], got["height"]) != (want.width, want.height):
                fail(f"{path.name}: size {got['width']}x{got['height']} != {want.width}x{want.height}")
            for g, w in zip(got["predictions"], want.predictions, strict=True):
                if g["class_id"] != w.class_id or abs(g["score"] - w.score) > 1e-4 * max(1.0, w.score):
                    fail(f"{path.name} {params}: class/score {g['class_id']}/{g['score']} != {w.class_id}/{w.score}")
                if [tuple(b) for b in g["boxes"]] != w.boxes:
                    fail(f"{path.name} {params}: boxes {g['boxes']} != {w.boxes}")
                png = base64.b64decode(g["heatmap"].split(",", 1)[1])
                pixels = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
                width, height = g["heatmap_size"]  # the image's size, or smaller (the map's detail, the side limit)
                expected = heatmap_to_uint8(resize_maps(w.map, (height, width)))
                diff = np.abs(pixels.astype(int) - expected.astype(int))
                if diff.max() > 1:
                    fail(f"{path.name} {params}: heatmap differs by up to {diff.max()} levels")
    say(f"answers equal the host's for {len(samples)} images x {len(cases)} option sets")


def check_user_and_filesystem(engine: str, container: str) -> None:
    uid = engine_cmd(engine, "exec", container, "id", "-u").stdout.strip()
    if uid in ("", "0"):
        fail(f"container process runs as uid {uid or '?'}, expected non-root")
    for path in ("/opt/spa/written-by-test", "/models/written-by-test"):
        if engine_cmd(engine, "exec", container, "touch", path).returncode == 0:
            fail(f"could write {path}: root filesystem is not read-only")
    if engine_cmd(engine, "exec", container, "touch", "/tmp/written-by-test").returncode != 0:
        fail("/tmp is not writable")
    say(f"runs as uid {uid}; root filesystem read-only; /tmp writable")


def check_healthcheck(engine: str, container: str) -> None:
    if engine == "podman":
        result = engine_cmd(engine, "healthcheck", "run", container)
        if result.returncode != 0:
            fail(f"HEALTHCHECK failed: {result.stdout} {result.stderr}")
    else:
        deadline = time.monotonic() + 90
        status = ""
        while time.monotonic() < deadline:
            status = engine_cmd(engine, "inspect", container, "--format", "{{.State.Health.Status}}").stdout.strip()
            if status == "healthy":
                break
            time.sleep(2)
        if status != "healthy":
            fail(f"HEALTHCHECK status {status!r}")
    say("HEALTHCHECK passes")


def check_graceful_sigterm(url: str, engine: str, container: str, sample: Path) -> None:
    """SIGTERM while a request's body is still arriving: the request completes, the container exits."""
    data = sample.read_bytes()
    result: dict[str, object] = {}

    def slow_body():
        for start in range(0, len(data), max(1, len(data) // 20)):
            time.sleep(0.1)
            yield data[start : start + max(1, len(data) // 20)]

    def send() -> None:
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                response = client.post("/v1/localize", content=slow_body(), headers={"content-type": "image/jpeg"})
                result["status"] = response.status_code
        except httpx.HTTPError as exc:
            result["error"] = repr(exc)

    sender = threading.Thread(target=send)
    sender.start()
    time.sleep(0.6)
    engine_cmd(engine, "kill", "--signal", "TERM", container)
    sender.join(timeout=90)
    if result.get("status") != 200:
        fail(f"request in flight during SIGTERM got {result}")
    wait = engine_cmd(engine, "wait", container)
    say(f"request in flight during SIGTERM completed with 200; container stopped (wait: {wait.stdout.strip()})")


def check_compose(cpu: dict, gpu: dict, raw: dict) -> None:
    """`docker compose up` (`cpu`: the resolved compose file) and the GPU override (`gpu`: resolved with
    docker-compose.gpu.yml) each start exactly one service on container port 8000, the same one, so they
    are alternatives; the override swaps the build and reserves an NVIDIA device; both keep every shared
    setting (`x-spa-environment`)."""
    shared = raw.get("x-spa-environment") or {}
    if not shared:
        fail("compose file has no x-spa-environment block of shared settings")
    wanted = {"cpu": (cpu, "Dockerfile"), "gpu": (gpu, "docker/Dockerfile.gpu")}
    names = set()
    for variant, (resolved, dockerfile) in wanted.items():
        services = resolved.get("services") or {}
        if len(services) != 1:
            fail(f"the {variant} compose configuration starts {sorted(services)}, expected exactly one service")
        [(name, service)] = services.items()
        names.add(name)
        if service.get("profiles"):
            fail(f"{variant}: service {name} sits behind profiles {service['profiles']}: `docker compose up` skips it")
        build = service.get("build") or {}
        if (build.get("dockerfile") or "Dockerfile") != dockerfile:
            fail(f"{variant}: service {name} builds {build.get('dockerfile')!r}, expected {dockerfile}")
        targets = [int(str(port.get("target") if isinstance(port, dict) else port).rsplit(":", 1)[-1])
                   for port in service.get("ports") or []]
        if targets != [8000]:
            fail(f"{variant}: service {name} publishes container ports {targets}, expected [8000]")
        environment = service.get("environment") or {}
        missing = sorted(set(shared) - set(environment))
        if missing:
            fail(f"{variant}: service {name} lost the shared settings {missing} (replaced, not extended)")
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
        if any(device.get("driver") == "nvidia" for device in devices) != (variant == "gpu"):
            fail(f"{variant}: service {name} {'reserves no' if variant == 'gpu' else 'reserves an'} nvidia device")
    if len(names) != 1:
        fail(f"the GPU override starts {names - set(cpu['services'])} beside the CPU service: they would share a port")
    say(f"compose: `up` and the GPU override each start the one service {names.pop()!r} on port 8000, "
        f"with the {len(shared)} shared settings")


def compose_main(argv: list[str]) -> None:
    import yaml

    parser = argparse.ArgumentParser(prog="check-container.py compose", description=check_compose.__doc__)
    parser.add_argument("--resolved-cpu", type=Path, required=True, help="`docker-compose config` output")
    parser.add_argument("--resolved-gpu", type=Path, required=True,
                        help="`docker-compose -f docker-compose.yml -f docker-compose.gpu.yml config` output")
    parser.add_argument("--file", type=Path, required=True, help="the compose file itself")
    args = parser.parse_args(argv)
    check_compose(yaml.safe_load(args.resolved_cpu.read_text()), yaml.safe_load(args.resolved_gpu.read_text()),
                  yaml.safe_load(args.file.read_text()))


def main() -> None:
    if sys.argv[1:2] == ["compose"]:
        compose_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--engine", required=True)
    parser.add_argument("--container", required=True)
    parser.add_argument("--quick", action="store_true", help="readiness, health and answers only")
    args = parser.parse_args()
    with httpx.Client(base_url=args.url, timeout=60) as client:
        wait_ready(client, args.engine, args.container)
        say("ready")
        check_healthcheck(args.engine, args.container)
        check_answers(client, args.model_dir)
    if args.quick:
        return
    check_user_and_filesystem(args.engine, args.container)
    sample = sorted((args.model_dir / "samples").glob("*.jpg"))[0]
    check_graceful_sigterm(args.url, args.engine, args.container, sample)


if __name__ == "__main__":
    main()
