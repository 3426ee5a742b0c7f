"""spa-synth: deterministic bytes, exact boxes and masks, classes that differ only in the cap."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from spa_service.offline.evaluation.datasets import load_mask, read_cub
from spa_service.offline.synth import (
    SynthConfig,
    class_names,
    generate,
    main,
    mask_box,
    render,
)

SMALL = SynthConfig(seed=7, classes=3, train_per_class=2, test_per_class=3, size=96)


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    generate(tmp_path / "a", SMALL)
    generate(tmp_path / "b", SMALL)
    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert len(a) == 2 * 15 + 6  # images, masks, five text files and synth.json
    assert a == b
    generate(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 8}))
    c = files(tmp_path / "c")
    image = "images/001.Red_Solid_Cap/Red_Solid_Cap_0001.jpg"
    assert a[image] != c[image]


def test_layout_reads_as_cub(tmp_path: Path) -> None:
    generate(tmp_path, SMALL)
    test = read_cub(tmp_path, split="test").samples
    train = read_cub(tmp_path, split="train").samples
    assert len(train) == 6 and len(test) == 9
    assert [s.class_id for s in test] == [0] * 3 + [1] * 3 + [2] * 3
    assert all(s.has_mask and s.image_path.is_file() for s in test + train)
    classes = (tmp_path / "classes.txt").read_text().splitlines()
    assert classes == ["1 001.Red_Solid_Cap", "2 002.Blue_Striped_Cap", "3 003.Yellow_Checked_Cap"]


def test_boxes_are_the_masks_components(tmp_path: Path) -> None:
    generate(tmp_path, SynthConfig(seed=3, classes=2, train_per_class=0, test_per_class=25, size=128))
    samples = read_cub(tmp_path, split="test").samples
    two = 0
    for sample in samples:
        height, width = cv2.imread(str(sample.image_path)).shape[:2]
        assert max(height, width) == 128 and min(height, width) >= round(0.7 * 128)
        loaded = load_mask(sample, (width, height))
        assert loaded is not None
        mask = loaded.object >= 128
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        components = {(x, y, x + w - 1, y + h - 1) for x, y, w, h in stats[1:count, :4].tolist()}
        assert set(sample.boxes) == components  # one bird, one connected silhouette, one box
        xs = [b[0] for b in sample.boxes] + [b[2] for b in sample.boxes]
        ys = [b[1] for b in sample.boxes] + [b[3] for b in sample.boxes]
        assert mask_box(mask) == (min(xs), min(ys), max(xs), max(ys))
        two += len(sample.boxes) == 2
    assert 1 <= two <= 15  # some images hold two birds (M-Ins), most one


def test_classes_differ_only_in_the_cap() -> None:
    images = [render(np.random.default_rng((5, 1)), class_id, 160) for class_id in range(8)]
    base = images[0]
    object_area = base.mask.sum()
    near_object = cv2.dilate(base.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    for other in images[1:]:
        # Same random draws: the same scene, bird and pose; only the cap's pixels (and their blur) change.
        assert np.array_equal(other.mask, base.mask) and other.boxes == base.boxes
        changed = np.any(other.pixels != base.pixels, axis=-1)
        assert changed.any()
        assert not (changed & ~near_object).any()
        assert changed.sum() < 0.15 * object_area


def test_class_names_never_repeat() -> None:
    names = class_names(32)
    assert len(set(names)) == 32
    assert len({n.split("_")[0] for n in names[:8]}) == 8  # the first 8 classes differ in colour


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--out", str(tmp_path / "d"), "--classes", "2", "--train-per-class", "1", "--test-per-class", "1", "--size", "80"]
    assert main(args) == 0
    assert len(list((tmp_path / "d" / "images").rglob("*.jpg"))) == 4
    assert main(args) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "e"), "--classes", "0"]) == 2
    assert "classes must be between 1 and 32" in capsys.readouterr().err
