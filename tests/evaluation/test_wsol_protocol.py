"""The wsol protocol (wsolevaluation's conventions) on hand-computed cases, a loop version of its box
rule, and a small wsolevaluation-layout data set written here by hand."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from spa_service.offline.evaluation import metrics as m
from spa_service.offline.evaluation.datasets import load_mask, read_cub, read_wsol
from spa_service.offline.evaluation.tally import MethodTally

WSOL = m.WsolProtocol()


def test_protocol_sweeps() -> None:
    thresholds = WSOL.cam_thresholds()
    assert len(thresholds) == 1000 and thresholds[0] == 0.0 and thresholds[-1] < 1.0
    edges = WSOL.pxap_edges()
    assert len(edges) == 1003 and edges[-4:].tolist() == [thresholds[-1], 1.0, 2.0, 3.0]
    original = m.WsolProtocol(name="original")
    assert len(original.cam_thresholds()) == 100
    np.testing.assert_array_equal(original.pxap_edges(), edges)  # PxAP's bins do not depend on the protocol


# --- the grid ------------------------------------------------------------------------------------------


def test_grid_boxes_hand_computed() -> None:
    # Inclusive (10, 20, 99, 199) in a 448 x 336 image is (10, 20, 100, 200) in wsolevaluation's files;
    # scaled: 10 * 224 / 448 = 5, 20 * 224 / 336 = 13.3, 100 * 224 / 448 = 50, 200 * 224 / 336 = 133.3.
    np.testing.assert_array_equal(m.grid_boxes(np.array([[10, 20, 99, 199]]), (448, 336)), [[5, 13, 50, 133]])
    # The whole image ends at 224, one past the grid's last pixel, as wsolevaluation has it.
    np.testing.assert_array_equal(m.grid_boxes(np.array([[0, 0, 447, 335]]), (448, 336)), [[0, 0, 224, 224]])


def test_grid_levels_nearest() -> None:
    # 448 -> 224: grid pixel i reads source pixel 2 i; odd source pixels are never read.
    levels = np.zeros((448, 448), dtype=np.uint8)
    levels[2, 4] = 255
    levels[5, 5] = 255
    np.testing.assert_array_equal(np.argwhere(m.grid_levels(levels)), [[1, 2]])


def test_grid_scoremap() -> None:
    coarse = np.array([[0.0, 0.2], [0.1, 0.9]], dtype=np.float32)
    grid = m.grid_scoremap(coarse)
    assert grid.shape == (224, 224) and grid.dtype == np.float64
    assert grid.min() == 0.0 and grid.max() == 1.0  # bicubic overshoots; the min-max puts it back
    y, x = np.unravel_index(np.argmax(grid), grid.shape)
    assert y >= 112 and x >= 112  # the coarse map's maximum is its bottom-right cell
    assert not m.grid_scoremap(np.zeros((14, 14), dtype=np.float32)).any()  # an empty map stays empty
    assert not m.grid_scoremap(np.array([[np.nan, 1.0], [0.0, 0.0]])).any()
    same = np.random.default_rng(0).random((224, 224))
    np.testing.assert_array_equal(m.grid_scoremap(same), (same - same.min()) / (same - same.min()).max())


# --- the box rule --------------------------------------------------------------------------------------


def test_threshold_is_strict_on_uint8_levels() -> None:
    scoremap = np.zeros((224, 224))
    scoremap[10:30, 10:30] = 0.5  # level uint8(127.5) = 127
    scoremap[200, 200] = 1.0  # level 255: the map's maximum
    gt = np.array([[10, 10, 30, 30]])  # the block's contour box: x = 10, w = 20 -> ends at 30
    hits = m.wsol_box_hits(scoremap, gt, np.array([0.49, 0.5]))
    # 0.49: int(124.95) = 124 < 127, the block is in; 0.5: int(127.5) = 127, not > 127 (s >= t would keep it).
    np.testing.assert_array_equal(hits, [[True] * 3, [False] * 3])


def test_threshold_scales_with_the_maps_maximum() -> None:
    # A map whose maximum level is 200: threshold 0.5 cuts at int(0.5 * 200) = 100.
    scoremap = np.zeros((224, 224))
    scoremap[0:20, 0:20] = 101 / 255 + 1e-9
    scoremap[100, 100] = 200 / 255 + 1e-9
    gt = np.array([[0, 0, 20, 20]])
    assert m.wsol_box_hits(scoremap, gt, np.array([0.5]))[0].all()
    scoremap[0:20, 0:20] = 100 / 255 + 1e-9
    assert not m.wsol_box_hits(scoremap, gt, np.array([0.5]))[0].any()


def test_box_ends_at_x_plus_w_capped() -> None:
    binary = np.zeros((224, 224), dtype=bool)
    binary[0:5, 0:10] = True  # x 0, w 10, y 0, h 5 -> (0, 0, 10, 5)
    binary[100:224, 214:224] = True  # x + w = 224 and y + h = 224: capped at 223
    boxes = {tuple(b) for b in m.contour_boxes(binary, wsol_ends=True).tolist()}
    assert boxes == {(0, 0, 10, 5), (214, 100, 223, 223)}
    assert {tuple(b) for b in m.contour_boxes(binary).tolist()} == {(0, 0, 9, 4), (214, 100, 223, 223)}


def test_single_contour_keeps_the_largest() -> None:
    scoremap = np.zeros((224, 224))
    scoremap[10:20, 10:20] = 1.0  # the object, polygon area 81
    scoremap[100:140, 100:140] = 1.0  # a larger distractor, area 1521
    gt = np.array([[10, 10, 20, 20]])
    thresholds = np.array([0.5])
    assert m.wsol_box_hits(scoremap, gt, thresholds).all()
    assert not m.wsol_box_hits(scoremap, gt, thresholds, multi_contour=False).any()
    single = m.contour_boxes(scoremap > 0.5, multi_contour=False, wsol_ends=True)
    np.testing.assert_array_equal(single, [[100, 100, 140, 140]])


def test_nothing_above_the_threshold_scores_the_origin_box() -> None:
    # An all-zero map has no pixel above any cut: wsolevaluation scores box (0, 0, 0, 0) at every threshold,
    # which matches a one-pixel ground truth there and nothing else.
    assert not m.wsol_box_hits(np.zeros((224, 224)), np.array([[5, 5, 9, 9]]), np.array([0.0])).any()
    assert m.wsol_box_hits(np.zeros((224, 224)), np.array([[0, 0, 0, 0]]), np.array([0.0])).all()


def _loop_best_ious(scoremap: np.ndarray, gt: list[tuple[int, int, int, int]], thresholds: np.ndarray) -> list[float]:
    """For maps whose regions have no holes: per threshold, the best IoU of any 8-connected component's
    wsolevaluation box (x0, y0, min(x1 + 1, W - 1), min(y1 + 1, H - 1)) with a ground-truth box."""
    h, w = scoremap.shape
    levels = [[int(scoremap[y, x] * 255) for x in range(w)] for y in range(h)]
    peak_level = max(max(row) for row in levels)
    out = []
    for t in thresholds:
        cut = int(t * peak_level)
        seen: set[tuple[int, int]] = set()
        boxes = []
        for y in range(h):
            for x in range(w):
                if levels[y][x] > cut and (y, x) not in seen:
                    queue, xs, ys = deque([(y, x)]), [], []
                    seen.add((y, x))
                    while queue:
                        cy, cx = queue.popleft()
                        xs.append(cx)
                        ys.append(cy)
                        for dy in (-1, 0, 1):
                            for dx in (-1, 0, 1):
                                ny, nx = cy + dy, cx + dx
                                if 0 <= ny < h and 0 <= nx < w and (ny, nx) not in seen and levels[ny][nx] > cut:
                                    seen.add((ny, nx))
                                    queue.append((ny, nx))
                    boxes.append((min(xs), min(ys), min(max(xs) + 1, w - 1), min(max(ys) + 1, h - 1)))
        if not boxes:
            boxes = [(0, 0, 0, 0)]
        best = 0.0
        for b in boxes:
            for g in gt:
                iw = min(b[2], g[2]) - max(b[0], g[0]) + 1
                ih = min(b[3], g[3]) - max(b[1], g[1]) + 1
                inter = max(iw, 0) * max(ih, 0)
                area = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
                best = max(best, inter / area)
        out.append(best)
    return out


def test_box_hits_against_a_loop_version() -> None:
    rng = np.random.default_rng(8)
    ys, xs = np.mgrid[0:28, 0:32]
    thresholds = np.arange(0, 1, 0.02)
    for _ in range(6):
        # Two Gaussian blobs: their thresholded regions never have holes.
        heat = np.zeros((28, 32))
        for _ in range(2):
            cy, cx, s = rng.uniform(0, 28), rng.uniform(0, 32), rng.uniform(2, 6)
            heat += rng.uniform(0.3, 1) * np.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * s * s))
        heat /= heat.max()
        corners = rng.integers(0, 24, (2, 2))
        boxes = [(int(x), int(y), int(x + rng.integers(2, 10)), int(y + rng.integers(2, 10))) for x, y in corners]
        best = np.array(_loop_best_ious(heat, boxes, thresholds))
        expected = best[:, None] >= np.array(m.MAXBOXACC_IOUS)[None, :]
        np.testing.assert_array_equal(m.wsol_box_hits(heat, np.array(boxes), thresholds), expected)


# --- a wsolevaluation-layout data set, by hand ----------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")


@pytest.fixture
def wsol_data(tmp_path: Path) -> Path:
    """Two 448 x 224 images with a box each, one with a mask and an ignore region (OpenImages style)."""
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (448, 224)).save(tmp_path / name)
    obj = np.zeros((224, 448), dtype=np.uint8)
    obj[:, :224] = 255  # the left half: grid columns 0..111
    ignore = np.zeros((224, 448), dtype=np.uint8)
    ignore[:, 112:336] = 255  # grid columns 56..167; 56..111 of them are object
    (tmp_path / "masks").mkdir()
    Image.fromarray(obj).save(tmp_path / "masks" / "c.png")
    Image.fromarray(ignore).save(tmp_path / "masks" / "c_ignore.png")
    _write(
        tmp_path / "meta",
        {
            "image_ids.txt": "a.png\nb.png\nc.png\n",
            "class_labels.txt": "a.png,0\nb.png,0\nc.png,0\n",
            # x0, y0, x0 + w, y0 + h: a box 224 x 112 at the origin, pixels 0..223 x 0..111.
            "localization.txt": "a.png,0,0,224,112\nb.png,0,0,224,112\nc.png,masks/c.png,masks/c_ignore.png\n",
        },
    )
    return tmp_path


def test_wsol_and_cub_readers_give_the_same_box(wsol_data: Path, tmp_path: Path) -> None:
    cub = tmp_path / "cub"
    _write(
        cub,
        {
            "images.txt": "1 a.png\n",
            "image_class_labels.txt": "1 1\n",
            "train_test_split.txt": "1 0\n",
            "bounding_boxes.txt": "1 0.0 0.0 224.0 112.0\n",
        },
    )
    wsol = read_wsol(wsol_data / "meta", image_root=wsol_data).samples[0]
    assert wsol.boxes == read_cub(cub).samples[0].boxes == ((0, 0, 223, 111),)


def test_hand_written_data_set_through_the_tally(wsol_data: Path) -> None:
    samples = read_wsol(wsol_data / "meta", image_root=wsol_data).samples
    tally = MethodTally(np.array([0.5]), protocol=WSOL)
    # Maps already on the 224 grid (the bicubic resize is then the identity): a's block is exactly the
    # ground truth's grid box, b's a part of it.
    heatmap = np.zeros((224, 448), dtype=np.float32)  # the original-size heatmap (Loc figures only)
    a = np.zeros((224, 224))
    a[0:112, 0:112] = 1.0  # contour box (0, 0, 112, 112)
    b = np.zeros((224, 224))
    b[0:112, 0:40] = 1.0  # box (0, 0, 40, 112): IoU 41 * 113 / (113 * 113) = 0.363
    # (0, 0, 223, 111) in 448 x 224 is (0, 0, 224, 112) in the file: 224 * 224 / 448, 112 * 224 / 224.
    np.testing.assert_array_equal(m.grid_boxes(np.array(samples[0].boxes), (448, 224)), [[0, 0, 112, 112]])
    for sample, coarse in zip(samples[:2], (a, b)):
        tally.add(ranking=[0], label=0, heatmap=heatmap, boxes=np.array(sample.boxes), coarse_map=coarse)
    # c: columns 0..55 at 0.9 (object), 56..111 at 0.2 (object inside the ignore box: counted), 112..167
    # at 0.95 (ignored), 168..223 at 0.5 (background). After the min-max the order is the same.
    c = np.zeros((224, 224))
    c[:, 0:56], c[:, 56:112], c[:, 112:168], c[:, 168:] = 0.9, 0.2, 0.95, 0.5
    levels = load_mask(samples[2], (448, 224))
    tally.add(ranking=[0], label=0, heatmap=heatmap, boxes=np.zeros((0, 4)), coarse_map=c, mask=levels)
    s = tally.summary()
    # a hits at every IoU threshold, b at 0.3 only: (100 + 50 + 50) / 3.
    assert s["maxboxacc_acc"]["0.3"]["acc"] == 100.0 and s["maxboxacc_acc"]["0.5"]["acc"] == 50.0
    assert s["maxboxacc_v2_acc"] == pytest.approx(200 / 3, abs=1e-4)
    # Ranked 0.9 + (recall 1/2, precision 1), 0.5 - , 0.2 + (recall 1, precision 2/3): 1/2 + 1/3.
    assert s["pxap"] == pytest.approx(100 * 5 / 6, abs=1e-4)
    assert s["empty_heatmaps"] == 3  # the all-zero original-size heatmaps given here
