"""The output folder: parts read back, resume bookkeeping, settings checked, temporary parts dropped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spa_service.errors import TruncatedImageError
from spa_service.offline.collection.rows import to_table
from spa_service.offline.collection.store import OutputMismatchError, Store

SETTINGS = {"model": "m", "options": {"topk": 2}}


def _row(path: str) -> dict:
    return {
        "path": path, "width": 20, "height": 10, "class_ids": [3, 1], "labels": ["c", "a"], "scores": [0.75, 0.125],
        "boxes": [[[0, 1, 5, 9]], [[2, 2, 3, 3], [10, 0, 19, 9]]], "heatmaps": [], "maps": [[0.5, 1.0], [0.0, 0.25]],
        "map_size": [1, 2], "error_code": None, "error_message": None,
    }


def _error_row(path: str) -> dict:
    error = TruncatedImageError("cut short")
    return {**_row(path), "width": None, "height": None, "class_ids": [], "labels": [], "scores": [], "boxes": [],
            "maps": [], "map_size": None, "error_code": error.code, "error_message": str(error)}


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_parts_round_trip_and_say_what_is_done(tmp_path: Path, fmt: str) -> None:
    store = Store(str(tmp_path / "out"), fmt)
    store.open_run(SETTINGS)
    first, second = [_row("a.jpg"), _error_row("b.jpg")], [_row("c.jpg")]
    store.write_part(to_table(first))
    store.write_part(to_table(second))
    assert sorted(store.rows(), key=lambda r: r["path"]) == first + second
    assert store.done() == {"a.jpg": None, "b.jpg": "truncated_image", "c.jpg": None}
    assert len(store.parts()) == 2


def test_a_rerun_with_other_settings_is_refused(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    Store(out, "parquet").open_run(SETTINGS)
    Store(out, "parquet").open_run(json.loads(json.dumps(SETTINGS)))  # the same settings: resumes
    with pytest.raises(OutputMismatchError, match="options differ"):
        Store(out, "parquet").open_run({**SETTINGS, "options": {"topk": 3}})


def test_temporary_parts_of_a_killed_run_are_dropped_and_never_read(tmp_path: Path) -> None:
    out = tmp_path / "out"
    store = Store(str(out), "parquet")
    store.open_run(SETTINGS)
    store.write_part(to_table([_row("a.jpg")]))
    (out / ".tmp-part-deadbeef").write_bytes(b"PAR1 half a file")
    assert store.done() == {"a.jpg": None}
    Store(str(out), "parquet").open_run(SETTINGS)
    assert not list(out.glob(".tmp-*"))
