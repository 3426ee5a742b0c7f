"""spa-eval reads data-set images on their stored pixel grid, as wsolevaluation and the SPA code do
(`Image.open(path).convert('RGB')`, no EXIF orientation), and takes a zero-width box line."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from spa_service.offline.evaluation.datasets import open_dataset
from spa_service.offline.evaluation.metrics import (
    OT,
    WsolProtocol,
    as_boxes,
    error_kinds,
    grid_boxes,
)
from spa_service.offline.evaluation.runner import evaluate
from spa_service.pipeline.imaging import DecodedImage, decode_image

MAX = 40_000_000
WIDTH, HEIGHT = 300, 200  # stored; EXIF Orientation 6 shows it 200 x 300, turned a quarter clockwise
# A white rectangle on black, on 16-pixel JPEG blocks so that it decodes to exactly 0 and 255:
# stored columns 16..111, rows 16..63.
RECT = (16, 16, 111, 63)


def oriented_jpeg() -> bytes:
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    x0, y0, x1, y1 = RECT
    pixels[y0 : y1 + 1, x0 : x1 + 1] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


class BrightnessLocalizer:
    """A stand-in for `Localizer`: one class, whose map is the image's brightness on the grid the
    runner decoded it to. A runner that turned the image would turn the map with it."""

    card = SimpleNamespace(num_classes=1)

    def run_backbone(self, images: list[DecodedImage]) -> SimpleNamespace:
        maps = [np.asarray(im.image.convert("L"), dtype=np.float32) / 255.0 for im in images]
        return SimpleNamespace(maps=maps, scores=np.ones((len(images), 1)))

    def postprocess(self, run: SimpleNamespace, options: list) -> list[SimpleNamespace]:
        return [SimpleNamespace(predictions=[SimpleNamespace(heatmap_at_image_size=lambda m=m: m, map=m)]) for m in run.maps]


@pytest.fixture
def oriented_set(tmp_path: Path) -> Path:
    """A wsolevaluation layout: the oriented JPEG with box 10,20,100,60 (inclusive 10..99 x 20..59), a
    zero-width box line and a mask of the stored size covering the box."""
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.jpg").write_bytes(oriented_jpeg())
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[20:60, 10:100] = 255
    Image.fromarray(mask).save(tmp_path / "images" / "a_mask.png")
    meta = tmp_path / "test"
    meta.mkdir()
    (meta / "image_ids.txt").write_text("images/a.jpg\n")
    (meta / "class_labels.txt").write_text("images/a.jpg,0\n")
    (meta / "localization.txt").write_text(
        "images/a.jpg,10,20,100,60\nimages/a.jpg,150,30,150,90\nimages/a.jpg,images/a_mask.png\n"
    )
    return tmp_path


def test_decode_keeps_the_stored_grid_on_request(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(oriented_jpeg())
    with Image.open(path) as reference:  # how wsolevaluation and the SPA code read an image
        expected = np.asarray(reference.convert("RGB"))
    stored = decode_image(path.read_bytes(), max_pixels=MAX, exif_transpose=False)
    assert np.array_equal(np.asarray(stored.image), expected)
    served = decode_image(path.read_bytes(), max_pixels=MAX)  # the service's default: as the phone shows it
    assert (served.width, served.height) == (HEIGHT, WIDTH)


def test_evaluation_scores_boxes_and_masks_on_the_stored_grid(oriented_set: Path) -> None:
    samples = open_dataset(oriented_set).samples
    # Original-size protocol: contour boxes as given, so the IoU is checked by hand.
    evaluation = evaluate(
        BrightnessLocalizer(), samples, methods=["cam"], thresholds=[0.5], batch_size=1, max_pixels=MAX,
        protocol=WsolProtocol(name="original"),
    )
    summary = evaluation.tallies["cam"].summary()
    # Box of the map (16..111 x 16..63) against the box 10..99 x 20..59: intersection 84 x 40 = 3360,
    # union 96 x 48 + 90 x 40 - 3360 = 4848, IoU 0.693; the zero-width line's box overlaps nothing.
    # On the turned grid the rectangle would be columns 136..183, rows 16..111: IoU 0 with the box.
    iou = 3360 / 4848
    assert summary["gt_known_loc_acc"] == 100.0  # IoU > 0.5
    assert {k: v["acc"] for k, v in summary["maxboxacc_acc"].items()} == {"0.3": 100.0, "0.5": 100.0, "0.7": 0.0}
    # The mask is the box's pixels: the thresholded map is the rectangle at every level 1..255.
    assert summary["peak_iou"] == pytest.approx(100 * iou, abs=1e-4)
    assert summary["errors"] == {"cls_err": 0.0, "mins_err": 0.0, "part_err": 0.0, "more_err": 0.0, "ot_err": 0.0}


def test_zero_width_box_line_is_read_as_wsolevaluation_reads_it(oriented_set: Path) -> None:
    (sample,) = open_dataset(oriented_set).samples
    assert sample.boxes == ((10, 20, 99, 59), (150, 30, 149, 89))  # the second covers no pixel column
    # wsolevaluation's resize_bbox of (150, 30, 150, 90) in a 300 x 200 image: each coordinate * 224 / side,
    # truncated: (112, 33, 112, 100), a one-column box under its inclusive IoU.
    assert grid_boxes(as_boxes(sample.boxes), (WIDTH, HEIGHT))[1].tolist() == [112, 33, 112, 100]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0 / 0 for the box of no pixel
        # A prediction over the line's column: IoU and IoG 0 with that box, so no M-Ins or More.
        kinds = error_kinds(True, as_boxes([(140, 0, 160, 199)]), as_boxes([sample.boxes[1]]))
    assert kinds.tolist() == [OT]
