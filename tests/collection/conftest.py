"""Fixtures of the spa-batch tests (helpers in collection_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from collection_helpers import Collection, make_collection


@pytest.fixture
def collection(tmp_path: Path) -> Collection:
    return make_collection(tmp_path / "images", 10)
