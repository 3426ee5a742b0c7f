"""spa-batch end to end on a generated collection with broken files and the bundled demo model:
rows and error codes, the COCO file against the HTTP API's answers, resume, usage errors."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from collection_helpers import DEMO_MODEL, Collection, write_images
from fastapi.testclient import TestClient
from PIL import Image
from spa_service.card import load_card
from spa_service.http.app import create_app
from spa_service.offline.collection.cli import main
from spa_service.offline.collection.store import Store
from spa_service.settings import Settings

SPA_BATCH = Path(sys.executable).with_name("spa-batch")


def spa_batch(*args: str) -> int:
    """spa-batch in this process; its exit status."""
    try:
        return main([*args, "--model-dir", str(DEMO_MODEL), "--no-progress", "--log-level", "WARNING"])
    except SystemExit as exc:  # argparse's usage errors
        return int(exc.code)


def rows_of(out: Path, fmt: str = "parquet") -> list[dict]:
    rows = list(Store(str(out), fmt).rows())
    assert len({r["path"] for r in rows}) == len(rows), "a path has two rows"
    return sorted(rows, key=lambda r: r["path"])


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_rows_coco_and_heatmaps_equal_the_apis(collection: Collection, tmp_path: Path) -> None:
    from pycocotools.coco import COCO

    out = tmp_path / "out"
    assert spa_batch(str(collection.root), "--out", str(out), "--topk", "2", "--coco", "--heatmaps", "png",
                     "--batch-size", "3") == 1  # some images are broken
    rows = {r["path"]: r for r in rows_of(out)}
    assert sorted(rows) == collection.paths
    coco = COCO(str(out / "_coco.json"))
    image_ids = {img["file_name"]: img["id"] for img in coco.dataset["images"]}
    assert sorted(image_ids) == collection.good
    labels = load_card(DEMO_MODEL)[0].labels
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == labels

    with TestClient(create_app(Settings(model_dir=DEMO_MODEL))) as client:
        for path, code in collection.broken.items():
            answer = client.post("/v1/localize", files={"image": Path(path).read_bytes()})
            assert answer.json()["error"]["code"] == code == rows[path]["error_code"]
            assert rows[path]["error_message"]
        for path in collection.good:
            answer = client.post("/v1/localize?topk=2&heatmap=png", files={"image": Path(path).read_bytes()})
            assert answer.status_code == 200, answer.text
            api = answer.json()
            row = rows[path]
            assert (row["width"], row["height"]) == (api["width"], api["height"])
            assert row["class_ids"] == [p["class_id"] for p in api["predictions"]]
            assert row["boxes"] == [[list(b) for b in p["boxes"]] for p in api["predictions"]]
            assert row["scores"] == pytest.approx([p["score"] for p in api["predictions"]], rel=1e-6)
            expected = sorted(
                (p["class_id"] + 1, [x0, y0, x1 - x0 + 1, y1 - y0 + 1])
                for p in api["predictions"] for x0, y0, x1, y1 in p["boxes"]
            )
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_ids[path]]))
            assert sorted((a["category_id"], a["bbox"]) for a in anns) == expected
            for name, prediction in zip(row["heatmaps"], api["predictions"]):
                api_png = base64.b64decode(prediction["heatmap"].split(",", 1)[1])
                assert np.array_equal(png_pixels((out / name).read_bytes()), png_pixels(api_png))


def test_rerun_skips_done_images_and_refuses_other_options(collection: Collection, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert spa_batch(str(collection.root), "--out", str(out), "--batch-size", "4") == 1
    before = rows_of(out)
    parts = sorted(out.glob("part-*"))
    write_images(collection.root / "new", 2, seed=1)
    assert spa_batch(str(collection.root), "--out", str(out), "--batch-size", "4") == 1
    after = rows_of(out)
    assert len(sorted(out.glob("part-*"))) == len(parts) + 1  # the two new images, one batch
    assert [r for r in after if "/new/" not in r["path"]] == before
    assert len(after) == len(before) + 2
    assert spa_batch(str(collection.root), "--out", str(out), "--topk", "3") == 2


def test_all_good_images_exit_zero_and_jsonl_holds_the_same_rows(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 5)
    assert spa_batch(str(images), "--out", str(tmp_path / "pq"), "--box-mode", "all") == 0
    assert spa_batch(str(images), "--out", str(tmp_path / "js"), "--box-mode", "all", "--format", "jsonl") == 0
    assert rows_of(tmp_path / "js", "jsonl") == rows_of(tmp_path / "pq")


def test_manifest_with_missing_paths_gives_error_rows(collection: Collection, tmp_path: Path) -> None:
    manifest = tmp_path / "list.csv"
    listed = [collection.good[0], "gone/missing.jpg", collection.good[1], str(tmp_path / "also-missing.png")]
    manifest.write_text("path,label\n" + "".join(f"{p},0\n" for p in listed))
    out = tmp_path / "out"
    assert spa_batch(str(manifest), "--out", str(out)) == 1
    rows = {r["path"]: r for r in rows_of(out)}
    assert sorted(rows) == sorted([collection.good[0], collection.good[1], str(tmp_path / "gone" / "missing.jpg"),
                                   str(tmp_path / "also-missing.png")])
    for path in (str(tmp_path / "gone" / "missing.jpg"), str(tmp_path / "also-missing.png")):
        assert rows[path]["error_code"] == "unreadable_file"
        assert "no such file" in rows[path]["error_message"]
    assert rows[collection.good[0]]["error_code"] is None


def test_maps_at_the_models_resolution(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_images(images, 3)
    assert spa_batch(str(images), "--out", str(tmp_path / "out"), "--heatmaps", "map", "--topk", "2") == 0
    h, w = load_card(DEMO_MODEL)[0].map_size
    for row in rows_of(tmp_path / "out"):
        assert row["map_size"] == [h, w]
        maps = np.asarray(row["maps"], dtype=np.float32)
        assert maps.shape == (2, h * w) and maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--topk", "99"], "topk must be between 1 and 8"),
        (["--class-id", "8"], "class_id [8] out of range"),
        (["--threshold", "1.5"], "threshold must be in [0, 1]"),
        (["--batch-size", "0"], "is not a positive integer"),
    ],
)
def test_bad_usage_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         args: list[str], message: str) -> None:
    write_images(tmp_path / "images", 1)
    assert spa_batch(str(tmp_path / "images"), "--out", str(tmp_path / "out"), *args) == 2
    assert message in capsys.readouterr().err


def test_missing_source_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert spa_batch(str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")) == 2
    assert "does not exist" in capsys.readouterr().err


def _wait_for(condition, what: str, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert process.poll() is None, f"spa-batch exited before {what}: {process.stderr.read().decode()}"
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        time.sleep(0.05)


@pytest.mark.system
def test_resume_after_sigkill_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    """The 7th image is a FIFO nobody writes to: the run blocks in its batch after writing the
    batches before it, is killed there, and the rerun (with the image in its place) completes."""
    images = tmp_path / "images"
    paths = write_images(images, 12)
    blocker = Path(paths[6])
    real = blocker.read_bytes()
    blocker.unlink()
    os.mkfifo(blocker)
    manifest = tmp_path / "list.txt"
    manifest.write_text("\n".join(paths) + "\n")
    out = tmp_path / "out"
    command = [str(SPA_BATCH), str(manifest), "--out", str(out), "--model-dir", str(DEMO_MODEL),
               "--batch-size", "2", "--no-progress"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: out.is_dir() and any(out.glob("part-*")), "first part", process)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    killed = rows_of(out)
    assert 1 <= len(killed) <= 6 and all(r["error_code"] is None for r in killed)

    blocker.unlink()
    blocker.write_bytes(real)
    assert subprocess.run(command, capture_output=True).returncode == 0
    resumed = rows_of(out)
    assert [r["path"] for r in resumed] == sorted(paths)
    assert spa_batch(str(manifest), "--out", str(tmp_path / "whole"), "--batch-size", "2") == 0
    assert resumed == rows_of(tmp_path / "whole")


def test_without_method_the_cards_default_method_is_used(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    card = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**card, "default_method": "cam"}))
    images = tmp_path / "images"
    write_images(images, 3)

    def run(out: str, *args: str) -> list[dict]:
        assert main([str(images), "--out", str(tmp_path / out), "--model-dir", str(model), "--heatmaps", "map",
                     "--no-progress", "--log-level", "WARNING", *args]) == 0
        return rows_of(tmp_path / out)

    default, cam, scg = run("default"), run("cam", "--method", "cam"), run("scg", "--method", "scg")
    assert default == cam and [r["maps"] for r in cam] != [r["maps"] for r in scg]
    assert run("default", "--method", "cam") == default  # the run records the method it used, not "none given"


def test_the_output_folder_reads_as_one_table_with_pandas_and_pyarrow(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow.dataset as ds

    images, out = tmp_path / "images", tmp_path / "out"
    write_images(images, 5)
    assert spa_batch(str(images), "--out", str(out), "--batch-size", "2", "--coco", "--heatmaps", "png") == 0
    assert {p.name for p in out.iterdir() if not p.name.startswith("part-")} == {
        "_spa-batch.json", "_coco.json", "_heatmaps"}
    expected = sorted(r["path"] for r in rows_of(out))
    assert len(expected) == 5
    assert sorted(pd.read_parquet(out)["path"]) == expected
    assert sorted(ds.dataset(out, format="parquet").to_table()["path"].to_pylist()) == expected
