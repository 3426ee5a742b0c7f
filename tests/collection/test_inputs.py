"""Listing a source (folder tree, .txt / .csv / .parquet manifests, local and fsspec URLs) and reading files."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from spa_service.offline.collection.inputs import (
    SourceError,
    UnreadableFileError,
    list_inputs,
    read_bytes,
)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_folder_is_walked_for_image_suffixes_sorted(tmp_path: Path) -> None:
    _touch(tmp_path, "b.JPG", "a/c.png", "a/d/e.webp", "notes.txt", "f.jpeg.bak", "g.tiff")
    assert list_inputs(str(tmp_path)) == [
        str(tmp_path / n) for n in ("a/c.png", "a/d/e.webp", "b.JPG", "g.tiff")
    ]


def test_text_manifest_skips_blanks_and_comments_and_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.txt"
    manifest.write_text("# header\nx.jpg\n\n  ../y.png  \n/abs/z.jpg\ns3://bucket/w.jpg\nx.jpg\n")
    assert list_inputs(str(manifest)) == [
        str(tmp_path / "lists" / "x.jpg"), str(tmp_path / "y.png"), "/abs/z.jpg", "s3://bucket/w.jpg"
    ]


def test_csv_manifest_reads_the_path_column(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("label,path\n3,a.jpg\n5,b/c.jpg\n")
    assert list_inputs(str(manifest)) == [str(tmp_path / "a.jpg"), str(tmp_path / "b" / "c.jpg")]


def test_csv_manifest_without_a_path_column_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label\na.jpg,3\n")
    with pytest.raises(SourceError, match="'path' column"):
        list_inputs(str(manifest))


def test_parquet_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["a.jpg", "/b.jpg"], "label": [1, 2]}), manifest)
    assert list_inputs(str(manifest)) == [str(tmp_path / "a.jpg"), "/b.jpg"]


def test_missing_source_and_unknown_file_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        list_inputs(str(tmp_path / "nowhere"))
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(SourceError, match="not a folder or a manifest"):
        list_inputs(str(tmp_path / "m.json"))


def test_fsspec_url_folder_and_manifest() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/spa-inputs/a.jpg": b"A", "/spa-inputs/sub/b.png": b"B", "/spa-inputs/list.txt": b"sub/b.png\n"})
    try:
        assert list_inputs("memory://spa-inputs") == ["memory:///spa-inputs/a.jpg", "memory:///spa-inputs/sub/b.png"]
        assert list_inputs("memory://spa-inputs/list.txt") == ["memory:///spa-inputs/sub/b.png"]
        assert read_bytes("memory:///spa-inputs/sub/b.png") == b"B"
    finally:
        fs.rm("/spa-inputs", recursive=True)


def test_unreadable_files_raise_with_a_code(tmp_path: Path) -> None:
    with pytest.raises(UnreadableFileError, match="no such file") as missing:
        read_bytes(str(tmp_path / "gone.jpg"))
    assert missing.value.code == "unreadable_file"
    with pytest.raises(UnreadableFileError, match="is a folder"):
        read_bytes(str(tmp_path))
    with pytest.raises(UnreadableFileError, match="no such file"):
        read_bytes("memory:///spa-inputs-nothing/gone.jpg")
