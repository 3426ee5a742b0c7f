"""Model cards for tests that build their own model directory."""

from __future__ import annotations

from pathlib import Path

from spa_service.card import PRESETS, ModelCard, sha256_of


def make_card(onnx_path: Path, num_classes: int = 3, **overrides: object) -> ModelCard:
    """A valid CUB-preset card for the ONNX file at `onnx_path`; `overrides` replace any field."""
    preset = PRESETS["cub"]
    fields: dict[str, object] = dict(
        name="test",
        arch="test",
        num_classes=num_classes,
        labels=[f"class_{i}" for i in range(num_classes)],
        input_size=(16, 16),
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        map_size=(4, 4),
        preset="cub",
        scg=preset.scg,
        box_threshold=dict(preset.box_threshold),
        onnx_sha256=sha256_of(onnx_path),
        tool_version="test",
        created="2026-11-25T00:00:00Z",
    )
    fields.update(overrides)
    return ModelCard(**fields)
