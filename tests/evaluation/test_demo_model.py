"""Regression test of the bundled demo model (models/demo/): spa-eval on a small freshly generated set.

The set is spa-synth's benchmark distribution with a seed used neither for training (0) nor for the
validation set (1): 8 classes x 12 test images, seed 7. `scripts/make-demo-model` evaluates the bundled
model on exactly this set (step regression-eval) and prints the figures in docs/demo-model.md; update
MEASURED_* below when the demo model is rebuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from spa_service.offline.evaluation.cli import main
from spa_service.offline.synth import SynthConfig, generate
from spa_service.settings import BUNDLED_MODEL_DIR

SET = SynthConfig(seed=7, classes=8, train_per_class=0, test_per_class=12)  # 96 images, 160 px

# GT-known Loc accuracy (%) of the bundled model on SET at spa-eval's default sweep, as measured when the
# model was built (out/demo-build/regression-demo.json).
MEASURED_SCG = 39.58  # CAM: 9.38
# One image is 1.04 points of this set: the margin allows five images to flip (another onnxruntime or
# OpenCV build, another CPU) before the test calls it a regression.
MARGIN = 5.0
# MaxBoxAccV2 and PxAP (%) with SCG on SET under spa-eval's default protocol (wsolevaluation's), as measured
# when the evaluation took up that protocol (CAM: 10.42 and 20.84). One image moves MaxBoxAccV2 by at most
# 1.04 points (it is the mean of three per-IoU accuracies); PxAP pools pixels and moves by less; MARGIN
# applies to both.
MEASURED_SCG_MAXBOXACC_V2 = 47.92
MEASURED_SCG_PXAP = 41.98
# SCG beat CAM by 30 points on SET (and by 35 on the 800 test images); a model whose SCG
# no longer clearly beats its CAM has lost what the demo is for.
MIN_SCG_GAIN = 15.0


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if not (BUNDLED_MODEL_DIR / "model.json").is_file():
        pytest.fail(f"{BUNDLED_MODEL_DIR}: the bundled demo model is missing (scripts/make-demo-model builds it)")
    root = tmp_path_factory.mktemp("demo_regression")
    data, out = root / "data", root / "report.json"
    generate(data, SET)
    assert main(["--model-dir", str(BUNDLED_MODEL_DIR), "--data", str(data), "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_demo_model_gt_known_loc_with_scg(report: dict) -> None:
    scg = report["methods"]["scg"]
    assert report["data"]["images"] == 96
    assert scg["gt_known_loc_acc"] >= MEASURED_SCG - MARGIN, (
        f"GT-known Loc with SCG {scg['gt_known_loc_acc']:.2f}% < measured {MEASURED_SCG:.2f}% - {MARGIN}"
    )


def test_demo_model_wsol_figures_with_scg(report: dict) -> None:
    scg = report["methods"]["scg"]
    assert report["wsol_protocol"]["name"] == "wsol" and report["protocol_of"]["pxap"] == "wsol"
    assert scg["maxboxacc_v2_acc"] >= MEASURED_SCG_MAXBOXACC_V2 - MARGIN, scg["maxboxacc_v2_acc"]
    assert scg["pxap"] >= MEASURED_SCG_PXAP - MARGIN, scg["pxap"]


def test_demo_model_scg_beats_cam(report: dict) -> None:
    cam, scg = report["methods"]["cam"], report["methods"]["scg"]
    assert scg["gt_known_loc_acc"] >= cam["gt_known_loc_acc"] + MIN_SCG_GAIN


def test_demo_model_classifies(report: dict) -> None:
    # The classifier, not the localization, is what a broken export or preprocessing change hits first.
    assert report["methods"]["scg"]["top1_cls_acc"] >= 85.0


def test_bundled_samples() -> None:
    samples = sorted((BUNDLED_MODEL_DIR / "samples").glob("*.jpg"))
    assert 5 <= len(samples) <= 7
    assert any(path.name.startswith("two_birds_") for path in samples)
    assert all(path.stat().st_size < 30_000 for path in samples)
    assert Path(BUNDLED_MODEL_DIR / "model.onnx").stat().st_size < 2_000_000
