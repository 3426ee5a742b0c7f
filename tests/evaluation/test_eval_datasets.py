"""The CUB-200-2011 and wsolevaluation readers on small hand-written files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from spa_service.offline.evaluation.datasets import (
    DatasetError,
    Sample,
    load_mask,
    open_dataset,
    read_cub,
    read_wsol,
)


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


CUB = {
    "images.txt": "1 001.A/a1.jpg\n2 001.A/a2.jpg\n3 002.B/b1.jpg\n",
    "image_class_labels.txt": "1 1\n2 1\n3 2\n",
    "train_test_split.txt": "1 1\n2 0\n3 0\n",
    # Image 3 holds two objects: its id repeats.
    "bounding_boxes.txt": "1 0.0 0.0 10.0 10.0\n2 60.0 27.0 325.0 304.0\n3 5.0 6.0 1.0 1.0\n3 20.0 20.0 8.0 4.0\n",
}


def test_cub_test_split(tmp_path: Path) -> None:
    write(tmp_path, CUB)
    (tmp_path / "segmentations" / "002.B").mkdir(parents=True)
    Image.new("L", (4, 4)).save(tmp_path / "segmentations" / "002.B" / "b1.png")
    data = open_dataset(tmp_path)
    assert data.layout == "cub" and data.split == "test" and data.mask_count == 1
    a2, b1 = data.samples
    assert a2 == Sample(tmp_path / "images" / "001.A" / "a2.jpg", 0, ((60, 27, 384, 330),), (), None, "2")
    assert b1.class_id == 1
    assert b1.boxes == ((5, 6, 5, 6), (20, 20, 27, 23))  # x, y, x + w - 1, y + h - 1
    assert b1.mask_paths == (tmp_path / "segmentations" / "002.B" / "b1.png",)


def test_cub_train_and_all(tmp_path: Path) -> None:
    write(tmp_path, CUB)
    assert [s.key for s in read_cub(tmp_path, split="train").samples] == ["1"]
    assert [s.key for s in read_cub(tmp_path, split="all").samples] == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bounding_boxes.txt", "1 0 0 10 10\n2 60 27 x 304\n3 5 6 1 1\n", "bounding_boxes.txt:2: expected four numbers"),
        ("bounding_boxes.txt", "1 0 0 10 10\n2 60 27 304\n3 5 6 1 1\n", "bounding_boxes.txt:2: expected"),
        ("bounding_boxes.txt", "1 0 0 10 10\n2 60 27 0 5\n3 5 6 1 1\n", "bounding_boxes.txt:2: box"),
        ("bounding_boxes.txt", "1 0 0 10 10\n3 5 6 1 1\n", "no box for image id 2"),
        ("bounding_boxes.txt", "1 0 0 10 10\n2 0 0 1 1\n3 5 6 1 1\n9 0 0 1 1\n", "image id 9 is not in"),
        ("images.txt", "1 001.A/a1.jpg\n\nx 001.A/a2.jpg\n", "images.txt:3: expected `<image id> <relative path>`"),
        ("images.txt", "1 001.A/a1.jpg\n1 001.A/a2.jpg\n", "images.txt:2: image id 1 already listed on line 1"),
        ("image_class_labels.txt", "1 1\n2 1\n", "image_class_labels.txt: no line for image id 3"),
        ("image_class_labels.txt", "1 1\n2 0\n3 2\n", "image_class_labels.txt:2: expected `<image id> <class id from 1>`"),
        ("train_test_split.txt", "1 1\n2 2\n3 0\n", "train_test_split.txt:2: expected"),
    ],
)
def test_cub_malformed(tmp_path: Path, name: str, text: str, message: str) -> None:
    write(tmp_path, {**CUB, name: text})
    with pytest.raises(DatasetError, match=message.replace("`", ".").replace("<", ".").replace(">", ".")):
        read_cub(tmp_path, split="all")


def test_cub_missing_file(tmp_path: Path) -> None:
    write(tmp_path, {k: v for k, v in CUB.items() if k != "train_test_split.txt"})
    with pytest.raises(DatasetError, match="train_test_split.txt: missing"):
        open_dataset(tmp_path)


def test_cub_empty_split(tmp_path: Path) -> None:
    write(tmp_path, {**CUB, "train_test_split.txt": "1 1\n2 1\n3 1\n"})
    with pytest.raises(DatasetError, match="no image in the test split"):
        open_dataset(tmp_path)


WSOL = {
    "image_ids.txt": "test/a.jpg\ntest/b.jpg\ntest/c.jpg\n",
    "class_labels.txt": "test/a.jpg,0\ntest/b.jpg,3\ntest/c.jpg,1\n",
    "localization.txt": (
        "test/a.jpg,1,2,30,40\n"
        "test/a.jpg,50,50,60,61\n"
        "test/b.jpg,4.0,5.0,6.0,7.0\n"
        "test/c.jpg,masks/c_0.png,masks/c_ignore.png\n"
        "test/c.jpg,masks/c_1.png\n"
    ),
}


def test_wsol_layout_in_a_split_folder(tmp_path: Path) -> None:
    write(tmp_path / "meta" / "test", WSOL)
    data = open_dataset(tmp_path / "meta", split="test", image_root=tmp_path / "images")
    assert data.layout == "wsol" and data.mask_count == 1
    a, b, c = data.samples
    # x0, y0, x0 + w, y0 + h in the file; inclusive here, as the CUB reader gives them.
    assert a == Sample(tmp_path / "images" / "test/a.jpg", 0, ((1, 2, 29, 39), (50, 50, 59, 60)), (), None, "test/a.jpg")
    assert b.class_id == 3 and b.boxes == ((4, 5, 5, 6),)
    assert c.boxes == () and c.mask_paths == (tmp_path / "images/masks/c_0.png", tmp_path / "images/masks/c_1.png")
    assert c.ignore_path == tmp_path / "images/masks/c_ignore.png"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("localization.txt", "test/a.jpg,1,2,30\n", "localization.txt:1: expected"),
        ("localization.txt", "test/a.jpg,1,2,30,x\n", "localization.txt:1: expected .* with numbers"),
        ("localization.txt", "test/a.jpg,9,2,3,40\n", "localization.txt:1: box .* ends before it starts"),
        ("localization.txt", "test/a.jpg,3,41,4,40\n", "localization.txt:1: box .* ends before it starts"),
        ("localization.txt", "test/a.jpg,-1,2,3,40\n", "localization.txt:1: box .* is negative"),
        ("localization.txt", "test/z.jpg,1,2,3,4\n", "localization.txt:1: test/z.jpg is not in"),
        ("localization.txt", "test/a.jpg,1,2,3,4\n", "no box and no mask for test/b.jpg"),
        ("class_labels.txt", "test/a.jpg,0\ntest/b.jpg,three\n", "class_labels.txt:2: expected"),
        ("class_labels.txt", "test/a.jpg,0\n", "class_labels.txt: no class for test/b.jpg"),
        ("class_labels.txt", "test/a.jpg,0\ntest/a.jpg,1\n", "class_labels.txt:2: a second class for test/a.jpg"),
        ("image_ids.txt", "test/a.jpg\ntest/a.jpg\n", "image_ids.txt:2: test/a.jpg already listed on line 1"),
    ],
)
def test_wsol_malformed(tmp_path: Path, name: str, text: str, message: str) -> None:
    write(tmp_path, {**WSOL, name: text})
    with pytest.raises(DatasetError, match=message):
        read_wsol(tmp_path, image_root=tmp_path)


def test_neither_layout(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="neither a CUB-200-2011 layout"):
        open_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such data set directory"):
        open_dataset(tmp_path / "nope")


def test_load_mask_levels_union_and_size(tmp_path: Path) -> None:
    first = np.zeros((3, 4), np.uint8)
    first[0, 0] = 255
    second = np.zeros((3, 4), np.uint8)
    second[2, 3] = 200
    second[1, 1] = 100
    ignore = np.zeros((3, 4), np.uint8)
    ignore[0, 1] = 255
    for name, pixels in (("m0.png", first), ("m1.png", second), ("ig.png", ignore)):
        Image.fromarray(pixels).save(tmp_path / name)
    sample = Sample(tmp_path / "x.jpg", 0, (), (tmp_path / "m0.png", tmp_path / "m1.png"), tmp_path / "ig.png")
    loaded = load_mask(sample, (4, 3))
    assert loaded is not None
    # The pixelwise maximum: the union of the instances at any level the protocol picks.
    assert loaded.object.tolist() == [[255, 0, 0, 0], [0, 100, 0, 0], [0, 0, 0, 200]]
    assert loaded.ignore is not None and loaded.ignore.tolist() == ignore.tolist()
    assert load_mask(Sample(tmp_path / "x.jpg", 0, ((0, 0, 1, 1),)), (4, 3)) is None
    with pytest.raises(DatasetError, match=r"m0.png: mask is 4 x 3 but its image is 5 x 3"):
        load_mask(sample, (5, 3))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="bad.png: cannot read the mask"):
        load_mask(Sample(tmp_path / "x.jpg", 0, (), (tmp_path / "bad.png",)), (4, 3))
