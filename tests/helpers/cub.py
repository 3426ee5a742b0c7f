"""A small synthetic data set in CUB-200-2011 layout, for training and evaluation tests."""

from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def make_cub_dataset(root: Path, num_classes: int, per_class: int, size: int | tuple[int, int] = 96,
                     seed: int = 0) -> Path:
    """Write `num_classes * per_class` JPEG images under `root` with the CUB text files; returns `root`.

    Each image is a blurred-noise background with one filled shape; the shape's colour and kind (ellipse,
    rectangle, triangle) identify the class, and bounding_boxes.txt holds its box (`x y w h`, inclusive
    pixels as CUB counts them). Every fourth image of a class is in the test split. `size` is the side of a
    square image, or (width, height).
    """
    root = Path(root)
    width, height = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    rows: dict[str, list[str]] = {name: [] for name in
                                  ("images", "image_class_labels", "train_test_split", "bounding_boxes", "classes")}
    image_id = 0
    for label in range(num_classes):
        folder = f"{label + 1:03d}.class_{label}"
        rows["classes"].append(f"{label + 1} {folder}")
        (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image_id += 1
            image, box = _draw(label, num_classes, width, height, rng)
            rel = f"{folder}/{folder}_{index:04d}.jpg"
            image.save(root / "images" / rel, quality=92)
            rows["images"].append(f"{image_id} {rel}")
            rows["image_class_labels"].append(f"{image_id} {label + 1}")
            rows["train_test_split"].append(f"{image_id} {0 if index % 4 == 3 else 1}")
            x0, y0, x1, y1 = box
            rows["bounding_boxes"].append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0 + 1:.1f} {y1 - y0 + 1:.1f}")
    for name, lines in rows.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def _draw(label: int, num_classes: int, width: int, height: int,
          rng: np.random.Generator) -> tuple[Image.Image, tuple[int, int, int, int]]:
    noise = rng.integers(60, 200, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    image = Image.fromarray(noise).resize((width, height), Image.Resampling.BILINEAR)
    image = image.filter(ImageFilter.GaussianBlur(2))
    w = int(rng.integers(width // 4, width * 3 // 4))
    h = int(rng.integers(height // 4, height * 3 // 4))
    x0, y0 = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
    box = (x0, y0, x0 + w - 1, y0 + h - 1)
    r, g, b = colorsys.hsv_to_rgb(label / num_classes, 0.9, 0.95)
    colour = (int(r * 255), int(g * 255), int(b * 255))
    draw = ImageDraw.Draw(image)
    kind = label % 3
    if kind == 0:
        draw.ellipse(box, fill=colour)
    elif kind == 1:
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(x0, box[3]), (box[2], box[3]), ((x0 + box[2]) // 2, y0)], fill=colour)
    return image, box
