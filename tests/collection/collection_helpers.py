"""A generated collection for the spa-batch tests: synthetic birds (spa_service.offline.synth) as JPEG and PNG
files in a folder tree, plus a few files that are not images, and the bundled demo model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from spa_service.offline.synth import render
from spa_service.settings import BUNDLED_MODEL_DIR

DEMO_MODEL = BUNDLED_MODEL_DIR

BROKEN = {  # file name -> the API's error code for it
    "not-an-image.png": "not_an_image",
    "empty.jpg": "empty_image",
    "sub/truncated.jpg": "truncated_image",
}


@dataclass(frozen=True)
class Collection:
    root: Path
    good: list[str]  # absolute paths, sorted
    broken: dict[str, str]  # absolute path -> error code

    @property
    def paths(self) -> list[str]:
        return sorted(self.good + list(self.broken))


def write_images(root: Path, count: int, *, seed: int = 0, size: int = 96) -> list[str]:
    """`count` synthetic images under `root` (every third a PNG, half of them in `sub/`)."""
    paths = []
    for i in range(count):
        pixels = render(np.random.default_rng((seed, i)), i % 8, size).pixels
        folder = root / "sub" if i % 2 else root
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"bird_{i:03d}.{'png' if i % 3 == 0 else 'jpg'}"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return sorted(paths)


def make_collection(root: Path, count: int) -> Collection:
    good = write_images(root, count)
    (root / "not-an-image.png").write_bytes(b"this is text, not a PNG\n")
    (root / "empty.jpg").write_bytes(b"")
    jpeg = Path(next(p for p in good if p.endswith(".jpg"))).read_bytes()
    (root / "sub" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "notes.txt").write_text("not listed: not an image suffix\n")
    return Collection(root, good, {str(root / name): code for name, code in BROKEN.items()})
