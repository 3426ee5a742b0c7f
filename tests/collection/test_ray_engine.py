"""`--engine ray` on a real local Ray cluster (2 CPUs, a small object store, no dashboard) gives
the rows and COCO file of `--engine local`, and leaves no Ray process behind."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from collection_helpers import DEMO_MODEL, Collection
from spa_service.offline.collection.store import Store

pytestmark = pytest.mark.system

pytest.importorskip("ray")

SPA_BATCH = Path(sys.executable).with_name("spa-batch")
TAG = "SPA_BATCH_TEST_RUN"


def _processes_tagged(value: str) -> list[int]:
    """Live processes whose environment holds TAG=value: the run and every Ray process it started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if f"{TAG}={value}".encode() in environ.split(b"\0"):
            found.append(int(pid))
    return found


def _rows(out: Path) -> list[dict]:
    return sorted(Store(str(out), "parquet").rows(), key=lambda r: r["path"])


def test_ray_engine_gives_the_local_engines_rows(collection: Collection, tmp_path: Path) -> None:
    common = [str(collection.root), "--model-dir", str(DEMO_MODEL), "--topk", "2", "--box-mode", "all",
              "--coco", "--batch-size", "3", "--no-progress"]
    local = subprocess.run([str(SPA_BATCH), *common, "--out", str(tmp_path / "local")], capture_output=True)
    assert local.returncode == 1, local.stderr.decode()
    tag = uuid.uuid4().hex
    ray = subprocess.run(
        [str(SPA_BATCH), *common, "--out", str(tmp_path / "ray"), "--engine", "ray", "--ray-actors", "2",
         "--ray-num-cpus", "2", "--ray-object-store-mb", "80"],
        capture_output=True, env={**os.environ, TAG: tag, "RAY_ADDRESS": ""}, timeout=300,
    )
    assert ray.returncode == 1, ray.stderr.decode()
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    assert (tmp_path / "ray" / "_coco.json").read_bytes() == (tmp_path / "local" / "_coco.json").read_bytes()
    deadline = time.monotonic() + 60
    while left := _processes_tagged(tag):
        assert time.monotonic() < deadline, f"Ray processes still running after the run: {left}"
        time.sleep(0.2)
