"""spa-quantize: the bundled (trained) demo network made int8 and fp16 on generated images; the card's agreement
recomputed by the test's own run of both ONNX files; the int8 model served over HTTP; bad inputs refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from scg_loops import scg_loops
from spa_export import quantize
from spa_service.card import ModelCard, load_card
from spa_service.http.app import create_app
from spa_service.offline.synth import SynthConfig, generate
from spa_service.settings import Settings

DEMO = Path(__file__).resolve().parents[2] / "models" / "demo"
CALIBRATION, HELD_OUT, SEED = 16, 32, 3


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 generated images (6 per class) of the distribution the demo model was trained on."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(seed=11, train_per_class=0, test_per_class=6))
    return root


def run_quantize(model_dir: Path, out: Path, *args: str) -> None:
    quantize.main([str(model_dir), "--out", str(out), "--seed", str(SEED), *args])


@pytest.fixture(scope="module")
def int8_dir(synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo-int8")
    # --force: the floors are for real validation sets; 32 images make a coarse figure either way.
    run_quantize(DEMO, out, "--precision", "int8", "--calibration-data", str(synth), "--calibration-images",
                 str(CALIBRATION), "--held-out-images", str(HELD_OUT), "--force")
    return out


# --- the independent oracle: the test's own preprocessing, sessions, top-k, loop SCG, union boxes and IoU ------


def held_out_paths(synth: Path, calibration: int, count: int) -> list[Path]:
    """The documented split: numpy default_rng(seed).permutation over the data set's images in images.txt
    order; the first `calibration` calibrate, the next `count` are held out."""
    rows = [line.split() for line in (synth / "images.txt").read_text().splitlines() if line.strip()]
    paths = [synth / "images" / rel for _, rel in rows]
    order = np.random.default_rng(SEED).permutation(len(paths))
    return [paths[i] for i in order[calibration:calibration + count]]


def tensor(path: Path, card: ModelCard) -> np.ndarray:
    height, width = card.input_size
    pixels = np.asarray(Image.open(path).convert("RGB").resize((width, height), Image.BILINEAR), dtype=np.float64)
    normalized = (pixels / 255.0 - np.asarray(card.mean)) / np.asarray(card.std)
    return normalized.transpose(2, 0, 1).astype(np.float32)


def union_box(heatmap: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    ys, xs = np.nonzero(heatmap >= threshold)
    return None if len(xs) == 0 else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def iou(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> float:
    if a is None or b is None:
        return float(a == b)
    inter = [max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1), max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)]
    area_a = (a[2] - a[0] + 1) * (a[3] - a[1] + 1)
    area_b = (b[2] - b[0] + 1) * (b[3] - b[1] + 1)
    return inter[0] * inter[1] / (area_a + area_b - inter[0] * inter[1])


def answers(onnx_path: Path, paths: list[Path], card: ModelCard) -> list[dict]:
    """Per image: the top-5 classes by spatially averaged class map, and the top-1 class's SCG heatmap and box."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    results = []
    for path in paths:
        class_map, feat_a, feat_b = session.run(["class_map", "feat_a", "feat_b"], {"image": tensor(path, card)[None]})
        top5 = np.argsort(-class_map.mean(axis=(2, 3))[0], kind="stable")[:5]
        width, height = Image.open(path).size
        (heatmap,) = scg_loops([feat_a, feat_b], class_map, top5[None, :1], [(height, width)], card.scg)[0]
        results.append({"top5": top5.tolist(), "heatmap": heatmap,
                        "box": union_box(heatmap, card.box_threshold["scg"])})
    return results


def test_int8_card_agreement_is_recomputed_by_an_independent_run(int8_dir: Path, synth: Path) -> None:
    card, onnx_path = load_card(int8_dir)
    fp32_card, fp32_onnx = load_card(DEMO)
    assert card.precision == "int8" and card.variant is not None
    assert card.variant.reference_sha256 == fp32_card.onnx_sha256
    calibration, agreement = card.variant.calibration, card.variant.agreement
    assert calibration.images == CALIBRATION and calibration.seed == SEED and calibration.method == "MinMax"
    assert str(synth) in calibration.source and agreement.images == HELD_OUT
    paths = held_out_paths(synth, CALIBRATION, HELD_OUT)
    ref, new = answers(fp32_onnx, paths, fp32_card), answers(onnx_path, paths, fp32_card)
    top1 = np.mean([r["top5"][0] == n["top5"][0] for r, n in zip(ref, new)])
    top5 = np.mean([len(set(r["top5"]) & set(n["top5"])) / 5 for r, n in zip(ref, new)])
    ious = np.array([iou(r["box"], n["box"]) for r, n in zip(ref, new)])
    diffs = np.concatenate([np.abs(r["heatmap"] - n["heatmap"]).ravel() for r, n in zip(ref, new)])
    assert agreement.top1 == pytest.approx(top1, abs=1e-12)
    assert agreement.top5_overlap == pytest.approx(top5, abs=1e-12)
    # The loop SCG and the service's agree to ~1e-3 (tests/test_localize.py); a box edge pixel may move.
    assert agreement.box_iou_mean == pytest.approx(ious.mean(), abs=5e-3)
    assert agreement.box_iou_ge_0_9 == pytest.approx((ious >= 0.9).mean(), abs=1 / HELD_OUT + 1e-9)
    assert agreement.box_iou_ge_0_5 == pytest.approx((ious >= 0.5).mean(), abs=1 / HELD_OUT + 1e-9)
    assert agreement.heatmap_diff_mean == pytest.approx(diffs.mean(), abs=2e-3)
    assert agreement.heatmap_diff_p99 == pytest.approx(np.percentile(diffs, 99), abs=5e-3)
    assert 0 < agreement.heatmap_diff_mean  # int8 is not fp32: the figures measure something


def test_int8_model_is_served_over_http(int8_dir: Path, synth: Path) -> None:
    card, onnx_path = load_card(int8_dir)
    path = held_out_paths(synth, CALIBRATION, 1)[0]
    (expected,) = answers(onnx_path, [path], card)
    with TestClient(create_app(Settings(model_dir=int8_dir))) as client:
        listing = client.get("/v1/models").json()
        # The card is /v1/models itself, or (with several models served) its entry under "models".
        models = next(m for m in listing["models"] if m["name"] == card.name) if "models" in listing else listing
        response = client.post("/v1/localize", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
    assert models["precision"] == "int8" and models["onnx_sha256"] == card.onnx_sha256
    assert models["variant"]["agreement"] == json.loads(card.variant.agreement.model_dump_json())
    assert response.status_code == 200
    (top,) = response.json()["predictions"]
    assert top["class_id"] == expected["top5"][0]
    assert iou(tuple(top["boxes"][0]), expected["box"]) > 0.95


def test_fp16_variant_keeps_float32_io_and_agrees(synth: Path, tmp_path: Path) -> None:
    run_quantize(DEMO, tmp_path, "--precision", "fp16", "--calibration-data", str(synth), "--held-out-images", "24")
    card, onnx_path = load_card(tmp_path)
    assert card.precision == "fp16" and card.variant.calibration is None
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert {t.type for t in [*session.get_inputs(), *session.get_outputs()]} == {"tensor(float)"}
    fp32_card, fp32_onnx = load_card(DEMO)
    paths = held_out_paths(synth, 0, 24)
    ref, new = answers(fp32_onnx, paths, fp32_card), answers(onnx_path, paths, fp32_card)
    assert card.variant.agreement.top1 == np.mean([r["top5"][0] == n["top5"][0] for r, n in zip(ref, new)])
    assert card.variant.agreement.heatmap_diff_p99 < 0.05  # default floors passed, no --force needed


# --- refusals: exit 2, one line, no card ---------------------------------------------------------------------


def refuse(capsys: pytest.CaptureFixture[str], out: Path, *args: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run_quantize(DEMO, out, "--precision", "int8", *args)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("spa-quantize: ")
    assert not (out / "model.json").exists()
    return lines[0]


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    assert "no image files" in refuse(capsys, tmp_path / "out", "--calibration", str(tmp_path / "images"))


def test_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such folder" in refuse(capsys, tmp_path / "out", "--calibration", str(tmp_path / "nowhere"))


def test_unreadable_image(tmp_path: Path, capsys: pytest.CaptureFixture[str], synth: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, path in enumerate(sorted((synth / "images").rglob("*.jpg"))[:4]):
        (folder / f"{i}.jpg").write_bytes(path.read_bytes())
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    line = refuse(capsys, tmp_path / "out", "--calibration", str(folder), "--calibration-images", "4")
    assert "broken.jpg: cannot use it as an image" in line


def test_not_a_data_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "neither a CUB-200-2011 layout" in refuse(capsys, tmp_path / "out", "--calibration-data", str(tmp_path))


def test_too_few_images(tmp_path: Path, capsys: pytest.CaptureFixture[str], synth: Path) -> None:
    line = refuse(capsys, tmp_path / "out", "--calibration-data", str(synth), "--calibration-images", "48")
    assert "48 images: need more than the 48 used for calibration" in line


def test_out_may_not_be_the_fp32_directory(capsys: pytest.CaptureFixture[str], synth: Path) -> None:
    before = (DEMO / "model.json").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        run_quantize(DEMO, DEMO, "--precision", "int8", "--calibration-data", str(synth))
    assert exit_info.value.code == 2 and "fp32 model's own directory" in capsys.readouterr().err
    assert (DEMO / "model.json").read_bytes() == before


def test_below_the_floor_writes_no_card(tmp_path: Path, capsys: pytest.CaptureFixture[str], synth: Path) -> None:
    line = refuse(capsys, tmp_path / "out", "--calibration-data", str(synth), "--calibration-images", "8",
                  "--held-out-images", "8", "--min-top1", "0", "--min-box-iou90", "0", "--max-heatmap-diff-p99", "0")
    assert "agreement below the floor: heatmap |difference| 99th percentile" in line and "no card written" in line


def test_cli_error_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    spa_quantize = Path(sys.executable).with_name("spa-quantize")
    result = subprocess.run([str(spa_quantize), str(DEMO), "--precision", "int8", "--calibration", str(tmp_path),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"spa-quantize: {tmp_path}: no image files in it "
                                                  "(extensions Pillow decodes: .jpg, .png, ...)"]


def test_box_iou_of_inclusive_boxes() -> None:
    assert quantize.box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert quantize.box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)
    assert quantize.box_iou((0, 0, 0, 0), (1, 1, 1, 1)) == 0.0
    assert quantize.box_iou(None, None) == 1.0 and quantize.box_iou(None, (0, 0, 1, 1)) == 0.0


def test_head_nodes_are_those_after_the_feature_blocks() -> None:
    import onnx
    from spa_export.onnx_graph import head_nodes
    from spa_service.card import OutputNames

    names = head_nodes(onnx.load(str(DEMO / "model.onnx")), OutputNames())
    assert names == ["/cls/cls.0/Conv", "/cls/cls.1/Relu", "/cls/cls.2/Conv"]


def test_the_head_of_a_network_whose_features_branch_off_is_not_the_whole_network() -> None:
    """EfficientNet-Lite0's feature outputs are average-pooled side branches off two of its blocks: the head is
    what comes after the later one (the blocks after it, the head Conv, the classifier), not everything class_map
    depends on."""
    import onnx
    from spa_export.nets.efficientnet_lite0 import FEATURE_BLOCKS
    from spa_export.onnx_graph import head_nodes
    from spa_service.card import OutputNames

    model = onnx.load(str(DEMO.parent / "imagenet-lite0" / "model.onnx"))
    convs = {n.name for n in model.graph.node if n.op_type == "Conv"}
    head = set(head_nodes(model, OutputNames())) & convs
    later = tuple(f"/_blocks.{i}/" for i in range(max(FEATURE_BLOCKS) + 1, 16))
    assert head == {name for name in convs if name.startswith(later) or name in ("/_conv_head/Conv", "/Conv")}
    assert len(head) == 3 * len(later) + 2  # expand, depthwise and project Convs per block


def test_int8_model_keeps_the_head_float_and_quantizes_the_rest(int8_dir: Path) -> None:
    import onnx

    model = onnx.load(str(int8_dir / "model.onnx"))
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert convs["/cls/cls.2/Conv"].input[1] in floats and convs["/cls/cls.0/Conv"].input[1] in floats
    assert convs["/stem/stem.0/Conv"].input[1] not in floats  # its weight comes through DequantizeLinear
    assert sum(n.op_type == "DequantizeLinear" for n in model.graph.node) > 0


def test_quantize_head_makes_the_head_int8_but_the_classifier(synth: Path, tmp_path: Path) -> None:
    import onnx

    run_quantize(DEMO, tmp_path, "--precision", "int8", "--calibration-data", str(synth), "--calibration-images", "8",
                 "--held-out-images", "8", "--quantize-head", "--force")
    card, onnx_path = load_card(tmp_path)
    assert card.variant.recipe["float_head"] is False
    model = onnx.load(str(onnx_path))
    floats = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = {n.name: n for n in model.graph.node if n.op_type == "Conv"}
    assert convs["/cls/cls.0/Conv"].input[1] not in floats
    assert convs["/cls/cls.2/Conv"].input[1] in floats  # the classifier: an 8-bit class map flips the top-1 class
    # All Convs but the 1 x 1 classifier (128 x 8 of the 14 x 14 map's multiply-adds) are int8.
    assert card.variant.int8_macs == pytest.approx(1 - 196 * 128 * 8 / 127_547_392, abs=1e-9)


def test_too_few_int8_multiply_adds_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           synth: Path) -> None:
    """With its head float, the demo network does 77% of its multiply-adds in int8 (the head: a 3 x 3 Conv 128 ->
    128 and the classifier on the 14 x 14 map, of 127.5 M): refused under a floor of 80%."""
    line = refuse(capsys, tmp_path / "out", "--calibration-data", str(synth), "--calibration-images", "8",
                  "--held-out-images", "8", "--float-head", "--min-int8-macs", "0.8", "--force")
    share = 1 - 196 * (128 * 128 * 9 + 128 * 8) / 127_547_392
    assert line == (f"spa-quantize: only {share:.1%} of the multiply-adds run in int8, under the floor of 80% "
                    "(--min-int8-macs): this is not an int8 model; no card written")
