"""spa-eval end to end: a small spa-synth set through the tiny exported model (`tiny_model_dir`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from spa_service.card import load_card
from spa_service.offline.evaluation.cli import main
from spa_service.offline.evaluation.datasets import open_dataset
from spa_service.offline.evaluation.examples import CAPTION_HEIGHT, TILE_HEIGHT
from spa_service.offline.evaluation.metrics import as_boxes, box_iou
from spa_service.offline.evaluation.runner import evaluate
from spa_service.offline.synth import SynthConfig, generate
from spa_service.pipeline.imaging import decode_image
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import BUNDLED_PHOTO_MODEL_DIR, Settings

FIGURES = (
    "top1_cls_acc", "top5_cls_acc", "top1_loc_acc", "top5_loc_acc", "gt_known_loc_acc", "maxboxacc_v2_acc",
    "peak_iou", "pxap",
)


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 test images of 3 classes (the tiny model has 10: ids 0..2 fit)."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(seed=11, classes=3, train_per_class=0, test_per_class=6, size=96))
    return root


def test_spa_eval_end_to_end(
    tmp_path: Path, tiny_model_dir: Path, synth_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))  # --calibrate writes its card
    out, grid = tmp_path / "report.json", tmp_path / "examples.png"
    args = ["--model-dir", str(model), "--data", str(synth_data), "--batch-size", "4", "--out", str(out)]
    assert main([*args, "--examples", "3", str(grid), "--calibrate"]) == 0

    captured = capsys.readouterr()
    assert "Top-1 Loc" in captured.out and "+SCG" in captured.out and "M-Ins" in captured.out
    # One direction per table, said in its header, with its protocol.
    assert "errors in %, lower is better" in captured.out and "protocol spa:" in captured.out
    assert "accuracies in %, higher is better" in captured.out and "protocol wsol: wsolevaluation" in captured.out
    assert "Empty heatmaps" in captured.out
    assert "18/18" in captured.err  # the progress bar

    report = json.loads(out.read_text())
    assert report["data"]["images"] == 18 and report["data"]["with_masks"] == 18
    assert set(report["methods"]) == {"cam", "scg"}
    assert report["wsol_protocol"] == {"name": "wsol", "multi_contour": True, "cam_step": 0.001}
    assert report["protocol_of"]["maxboxacc_v2_acc"] == "wsol" and report["protocol_of"]["gt_known_loc_acc"] == "spa"
    assert set(report["protocols"]) == {"spa", "wsol", "lid"}
    for summary in report["methods"].values():
        for key in FIGURES:
            assert 0.0 <= summary[key] <= 100.0, key
        assert 0 <= summary["peak_t"] <= 255
        assert set(summary["errors"]) == {"cls_err", "mins_err", "part_err", "more_err", "ot_err"}
        assert sum(summary["errors"].values()) == pytest.approx(100.0 - summary["top1_loc_acc"], abs=1e-3)
        assert 0 <= summary["empty_heatmaps"] <= 18
        thresholds = [p["threshold"] for p in summary["per_threshold"]]
        assert summary["best_threshold"] in thresholds and summary["card_threshold"] in thresholds
        assert thresholds == sorted(thresholds) and len(thresholds) >= 19

    card, _ = load_card(model)  # the ONNX sha256 still checks out
    assert card.box_threshold == {m: report["methods"][m]["best_threshold"] for m in ("cam", "scg")}
    with Image.open(grid) as image:
        assert image.height == 3 * (CAPTION_HEIGHT + TILE_HEIGHT + 4) and image.width > 3 * TILE_HEIGHT


def test_report_matches_the_service(tiny_model_dir: Path, synth_data: Path) -> None:
    """GT-known and Top-1 figures equal what Localizer.localize returns image by image, and the methods
    share the backbone (at most two runs per batch: the batch, and the images whose class was not in
    their top 5)."""
    settings = Settings(model_dir=tiny_model_dir)
    localizer = Localizer.from_settings(settings)
    samples = open_dataset(synth_data).samples
    evaluation = evaluate(
        localizer, samples, methods=["cam", "scg"], thresholds=[0.25], batch_size=5, max_pixels=settings.max_image_pixels
    )
    assert evaluation.backbone_calls <= 2 * 4  # 18 images in 4 batches
    for method, tally in evaluation.tallies.items():
        hits = top1 = 0
        for sample in samples:
            image = decode_image(sample.image_path.read_bytes(), max_pixels=settings.max_image_pixels)
            (known,) = localizer.localize(
                [image], [LocalizeOptions(method=method, threshold=0.25, class_ids=(sample.class_id,))]
            )
            hits += box_iou(as_boxes(known.predictions[0].boxes), as_boxes(sample.boxes)).max() > 0.5
            (best,) = localizer.localize([image], [LocalizeOptions(method=method)])
            top1 += best.predictions[0].class_id == sample.class_id
        assert tally.gt_known.tolist() == [hits]
        assert tally.top1_cls == top1


def test_errors_are_one_line(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model-dir", str(tiny_model_dir), "--data", str(tmp_path / "missing")]) == 2
    assert "spa-eval: error:" in capsys.readouterr().err
    assert main(["--model-dir", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "no model card" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["--model-dir", str(tiny_model_dir), "--data", str(tmp_path), "--method", "gradcam"])
    assert exit_info.value.code == 2


def test_thresholds_argument(tmp_path: Path, tiny_model_dir: Path, synth_data: Path) -> None:
    out = tmp_path / "r.json"
    args = ["--model-dir", str(tiny_model_dir), "--data", str(synth_data), "--method", "cam"]
    protocol = ["--wsol-protocol", "original", "--single-contour"]
    assert main([*args, "--thresholds", "0.3,0.1", "0.5", *protocol, "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["wsol_protocol"] == {"name": "original", "multi_contour": False, "cam_step": 0.01}
    assert report["protocol_of"]["pxap"] == "original" and "original" in report["protocols"]
    summary = report["methods"]["cam"]
    assert all(round(v["cam_threshold"] * 100, 6).is_integer() for v in summary["maxboxacc_acc"].values())
    assert [p["threshold"] for p in summary["per_threshold"]] == [0.1, 0.3, 0.5]
    assert np.isclose(summary["best_threshold"], [0.1, 0.3, 0.5]).any()


def test_model_dir_defaults_to_spa_model_dir_and_the_report_names_the_default_method(
    tmp_path: Path, tiny_model_dir: Path, synth_data: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert Settings().model_dir == BUNDLED_PHOTO_MODEL_DIR  # one default model for every tool
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    card = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**card, "default_method": "cam"}))
    monkeypatch.setenv("SPA_MODEL_DIR", str(model))
    out = tmp_path / "r.json"
    assert main(["--data", str(synth_data), "--method", "cam", "--thresholds", "0.5", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["model"]["dir"] == str(model) and report["model"]["default_method"] == "cam"
    assert "the model serves CAM when a request names no method" in capsys.readouterr().out
