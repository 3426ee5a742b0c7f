"""Evaluation data sets: the CUB-200-2011 layout and the wsolevaluation metadata layout.

Both give `Sample`s: an image path, the class id (0-based), ground-truth boxes (x0, y0, x1, y1)
inclusive, and the object mask's files when the data set has them. The same image gets the same box
from either layout: both files give a box's end one past its last pixel (CUB as x + w, wsolevaluation's
localization.txt as x1 = x0 + w).

CUB-200-2011 (`--data` is the folder holding images.txt):
    images.txt              `<id> <path under images/>`
    image_class_labels.txt  `<id> <class, 1-based>`
    train_test_split.txt    `<id> <1 train | 0 test>`
    bounding_boxes.txt      `<id> <x> <y> <w> <h>`; an id may repeat, one line per object (CUB has one)
    segmentations/<path with .png>  optional masks
wsolevaluation (`--data` is the folder holding image_ids.txt, or the folder above `<split>/`):
    image_ids.txt           `<image path>` relative to the image root
    class_labels.txt        `<image path>,<class, 0-based>`
    localization.txt        `<image path>,<x0>,<y0>,<x1>,<y1>` per box (x1 = x0 + w, y1 = y0 + h; w or h
                            may be 0, as wsolevaluation allows), or
                            `<image path>,<mask path>[,<ignore mask path>]` per mask (OpenImages style)
Boxes and masks are on the image's stored pixel grid, EXIF orientation not applied (runner.py reads the
images so), as wsolevaluation and the SPA code read them.
Masks are read as grey levels; which levels are object is the metric protocol's choice (metrics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from spa_service.errors import SpaError

Box = tuple[int, int, int, int]
Layout = Literal["cub", "wsol"]
Split = Literal["train", "test", "all"]


class DatasetError(SpaError):
    """A data set that is missing, malformed or inconsistent; the message names the file and line."""

    code = "dataset_error"


@dataclass(frozen=True)
class Sample:
    image_path: Path
    class_id: int  # 0-based
    boxes: tuple[Box, ...]  # inclusive original-image pixels; empty if the data set gives only masks
    mask_paths: tuple[Path, ...] = ()  # the object mask is their union; empty if none
    ignore_path: Path | None = None  # a region to leave out of the mask metrics, where it is not object
    key: str = ""  # the image's id in the data set's files

    @property
    def has_mask(self) -> bool:
        return bool(self.mask_paths)


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: Layout
    split: str
    samples: list[Sample] = field(repr=False)

    @property
    def mask_count(self) -> int:
        return sum(s.has_mask for s in self.samples)


def open_dataset(data: Path, *, split: Split = "test", image_root: Path | None = None) -> Dataset:
    """The data set at `data` in whichever layout it has; raises DatasetError if neither fits."""
    data = Path(data)
    if not data.is_dir():
        raise DatasetError(f"{data}: no such data set directory")
    if (data / "images.txt").is_file():
        return read_cub(data, split=split)
    for metadata in (data, data / split):
        if (metadata / "image_ids.txt").is_file():
            return read_wsol(metadata, image_root=image_root or data, split=split)
    raise DatasetError(
        f"{data}: neither a CUB-200-2011 layout (images.txt) nor a wsolevaluation one (image_ids.txt, "
        f"or {split}/image_ids.txt)"
    )


def _lines(path: Path) -> list[tuple[int, str]]:
    """Numbered (1-based) non-blank lines of a text file."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read it ({exc})") from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _bad(path: Path, number: int, line: str, expected: str) -> DatasetError:
    return DatasetError(f"{path}:{number}: expected {expected}, got {line!r}")


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _cub_table(path: Path, fields: int, expected: str) -> list[tuple[int, str, list[str]]]:
    """(line number, image id, the other fields) for each line of a CUB file."""
    rows = []
    for number, line in _lines(path):
        parts = line.split(maxsplit=fields) if fields == 1 else line.split()
        if len(parts) != fields + 1 or not parts[0].isdigit():
            raise _bad(path, number, line, expected)
        rows.append((number, parts[0], parts[1:]))
    return rows


def _unique(path: Path, rows: list[tuple[int, str, list[str]]]) -> dict[str, tuple[int, list[str]]]:
    table: dict[str, tuple[int, list[str]]] = {}
    for number, key, values in rows:
        if key in table:
            raise DatasetError(f"{path}:{number}: image id {key} already listed on line {table[key][0]}")
        table[key] = (number, values)
    return table


def cub_box(x: float, y: float, w: float, h: float) -> Box:
    """CUB's (x, y, width, height) -> inclusive (x, y, x + w - 1, y + h - 1), rounded to pixels."""
    x0, y0 = round(x), round(y)
    return x0, y0, max(x0, round(x + w) - 1), max(y0, round(y + h) - 1)


def wsol_box(x0: int, y0: int, x1: int, y1: int) -> Box:
    """localization.txt's (x0, y0, x0 + w, y0 + h) -> inclusive (x0, y0, x0 + w - 1, y0 + h - 1).

    A zero-width (or zero-height) line gives a box of no pixel (x1 = x0 - 1): it overlaps nothing at the
    original size, and `metrics.grid_boxes` turns it back into wsolevaluation's box on its grid.
    """
    return x0, y0, x1 - 1, y1 - 1


def read_cub(root: Path, *, split: Split = "test") -> Dataset:
    """A CUB-200-2011 layout data set; `split` picks train_test_split.txt's 1 (train), 0 (test) or all."""
    root = Path(root)
    images_file = root / "images.txt"
    images = _unique(images_file, _cub_table(images_file, 1, "`<image id> <relative path>`"))
    labels_file = root / "image_class_labels.txt"
    labels = _unique(labels_file, _cub_table(labels_file, 1, "`<image id> <class id from 1>`"))
    split_file = root / "train_test_split.txt"
    flags = _unique(split_file, _cub_table(split_file, 1, "`<image id> <1 for train, 0 for test>`"))
    boxes_file = root / "bounding_boxes.txt"
    boxes: dict[str, list[Box]] = {}
    for number, key, values in _cub_table(boxes_file, 4, "`<image id> <x> <y> <width> <height>`"):
        try:
            x, y, w, h = (_number(v) for v in values)
        except ValueError:
            raise _bad(boxes_file, number, " ".join([key, *values]), "four numbers after the image id") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise DatasetError(f"{boxes_file}:{number}: box {values} has a negative origin or an empty size")
        boxes.setdefault(key, []).append(cub_box(x, y, w, h))

    for path, table in ((labels_file, labels), (split_file, flags)):
        missing = [k for k in images if k not in table]
        if missing:
            raise DatasetError(f"{path}: no line for image id {missing[0]} (listed in {images_file})")
    stray = [k for k in boxes if k not in images]
    if stray:
        raise DatasetError(f"{boxes_file}: image id {stray[0]} is not in {images_file}")

    wanted = {"train": {"1"}, "test": {"0"}, "all": {"0", "1"}}[split]
    samples = []
    for key, (_, (rel,)) in images.items():
        number, (flag,) = flags[key]
        if flag not in ("0", "1"):
            raise _bad(split_file, number, f"{key} {flag}", "`<image id> <1 for train, 0 for test>`")
        if flag not in wanted:
            continue
        label_line, (label,) = labels[key]
        if not label.isdigit() or int(label) < 1:
            raise _bad(labels_file, label_line, f"{key} {label}", "`<image id> <class id from 1>`")
        if key not in boxes:
            raise DatasetError(f"{boxes_file}: no box for image id {key} ({rel})")
        mask = root / "segmentations" / Path(rel).with_suffix(".png")
        samples.append(
            Sample(
                image_path=root / "images" / rel,
                class_id=int(label) - 1,
                boxes=tuple(boxes[key]),
                mask_paths=(mask,) if mask.is_file() else (),
                key=key,
            )
        )
    if not samples:
        raise DatasetError(f"{split_file}: no image in the {split} split")
    return Dataset(root=root, layout="cub", split=split, samples=samples)


def read_wsol(metadata: Path, *, image_root: Path, split: str = "test") -> Dataset:
    """A wsolevaluation metadata folder; image and mask paths are relative to `image_root`."""
    metadata, image_root = Path(metadata), Path(image_root)
    ids_file = metadata / "image_ids.txt"
    ids: dict[str, int] = {}
    for number, line in _lines(ids_file):
        if "," in line:
            raise _bad(ids_file, number, line, "one image path per line")
        if line in ids:
            raise DatasetError(f"{ids_file}:{number}: {line} already listed on line {ids[line]}")
        ids[line] = number

    labels_file = metadata / "class_labels.txt"
    labels: dict[str, int] = {}
    for number, line in _lines(labels_file):
        image, _, label = line.rpartition(",")
        image = image.strip()
        if not image or not label.strip().isdigit():
            raise _bad(labels_file, number, line, "`<image path>,<class id from 0>`")
        if image in labels:
            raise DatasetError(f"{labels_file}:{number}: a second class for {image}")
        labels[image] = int(label)

    loc_file = metadata / "localization.txt"
    boxes: dict[str, list[Box]] = {}
    masks: dict[str, list[Path]] = {}
    ignores: dict[str, Path] = {}
    for number, line in _lines(loc_file):
        parts = [p.strip() for p in line.split(",")]
        image = parts[0]
        if image not in ids:
            raise DatasetError(f"{loc_file}:{number}: {image} is not in {ids_file}")
        if len(parts) == 5:
            try:
                x0, y0, x1, y1 = (round(_number(v)) for v in parts[1:])
            except ValueError:
                raise _bad(loc_file, number, line, "`<image path>,<x0>,<y0>,<x1>,<y1>` with numbers") from None
            if x1 < x0 or y1 < y0 or x0 < 0 or y0 < 0:
                raise DatasetError(
                    f"{loc_file}:{number}: box ({x0}, {y0}, {x1}, {y1}) ends before it starts or is negative"
                )
            boxes.setdefault(image, []).append(wsol_box(x0, y0, x1, y1))
        elif len(parts) in (2, 3) and parts[1]:
            masks.setdefault(image, []).append(image_root / parts[1])
            if len(parts) == 3 and parts[2]:
                ignores[image] = image_root / parts[2]
        else:
            raise _bad(
                loc_file, number, line, "`<image path>,<x0>,<y0>,<x1>,<y1>` or `<image path>,<mask>[,<ignore mask>]`"
            )

    samples = []
    for image in ids:
        if image not in labels:
            raise DatasetError(f"{labels_file}: no class for {image} (listed in {ids_file})")
        if image not in boxes and image not in masks:
            raise DatasetError(f"{loc_file}: no box and no mask for {image}")
        samples.append(
            Sample(
                image_path=image_root / image,
                class_id=labels[image],
                boxes=tuple(boxes.get(image, ())),
                mask_paths=tuple(masks.get(image, ())),
                ignore_path=ignores.get(image),
                key=image,
            )
        )
    if not samples:
        raise DatasetError(f"{ids_file}: lists no images")
    return Dataset(root=metadata, layout="wsol", split=split, samples=samples)


class MaskLevels(NamedTuple):
    """A sample's masks as grey levels, each (H, W) uint8 at the image's size."""

    object: np.ndarray  # the pixelwise maximum over its instance masks: their union at any level
    ignore: np.ndarray | None  # the ignore region's; None when the sample has none


def _read_levels(path: Path, size: tuple[int, int]) -> np.ndarray:
    try:
        with Image.open(path) as image:
            if image.size != size:
                raise DatasetError(
                    f"{path}: mask is {image.size[0]} x {image.size[1]} but its image is {size[0]} x {size[1]}"
                )
            return np.asarray(image.convert("L"))
    except (OSError, UnidentifiedImageError) as exc:
        raise DatasetError(f"{path}: cannot read the mask ({exc})") from None


def load_mask(sample: Sample, size: tuple[int, int]) -> MaskLevels | None:
    """The sample's mask grey levels, or None when it has no mask. `size` is the image's (width, height);
    masks of another size are an error."""
    if not sample.mask_paths:
        return None
    levels = np.maximum.reduce([_read_levels(p, size) for p in sample.mask_paths])
    ignore = None if sample.ignore_path is None else _read_levels(sample.ignore_path, size)
    return MaskLevels(object=levels, ignore=ignore)
