"""Fixtures shared across the suite. torch is imported inside the export fixtures only, so that runtime tests
that never use them do not pay for it."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.cub import make_cub_dataset as _make_cub_dataset

TESTS = Path(__file__).resolve().parent
DATA_DIR = TESTS / "data"
CUB_CLASSES = DATA_DIR / "cub200_classes.txt"  # copy of ../shared/data/cub200_classes.txt: CI has only the repo


def _export_random_model(out_dir: Path, arch: str, num_classes: int, labels: list[str] | None) -> Path:
    import torch
    from spa_export.nets import build_model
    from spa_export.to_onnx import export_model

    torch.manual_seed(0)
    model = build_model(arch, num_classes)
    export_model(model, arch=arch, out_dir=out_dir, labels=labels, name=f"{arch}-spa-random-init-seed0")
    return out_dir


TORCH_FIXTURES = {"vgg16_model_dir", "random_tiny_model_dir"}
# Where torch is not installed (the fast lane's environment), the export side's modules are not collected.
collect_ignore = ["export"] if importlib.util.find_spec("torch") is None else []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark what needs torch: the export side's tests, and any test that asks (through any fixture) for a
    model exported from PyTorch."""
    for item in items:
        if TESTS / "export" in Path(item.path).parents or TORCH_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.torch)


@pytest.fixture(scope="session")
def vgg16_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised VGG16-SPA (torch seed 0, the 200 CUB classes) exported with spa-export's API."""
    from spa_service.card import read_labels

    out = tmp_path_factory.mktemp("vgg16_model")
    return _export_random_model(out, "vgg16", 200, read_labels(CUB_CLASSES))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the bundled demo model (the tiny SPA network trained on the synthetic benchmark, 8 classes,
    112 x 112 input): what the runtime tests serve, so that they need no torch."""
    from spa_service.settings import BUNDLED_MODEL_DIR

    return Path(shutil.copytree(BUNDLED_MODEL_DIR, tmp_path_factory.mktemp("tiny_model") / "demo"))


@pytest.fixture(scope="session")
def random_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly initialised tiny SPA network (torch seed 0, 10 classes `class_0`..) exported with spa-export's
    API, 112 x 112 input."""
    return _export_random_model(tmp_path_factory.mktemp("random_tiny_model"), "tiny", 10, None)


@pytest.fixture(scope="session")
def make_cub_dataset() -> Callable[..., Path]:
    """make_cub_dataset(root, num_classes, per_class, size=96, seed=0) -> root: a synthetic CUB-layout
    data set (see helpers/cub.py)."""
    return _make_cub_dataset
