"""spa-synth: a synthetic weakly supervised localization benchmark in CUB-200-2011 layout.

Its defaults ARE the benchmark the demo model is trained and evaluated on; another seed gives a fresh
sample of the same distribution.

Each image shows one "bird" (about 10% show two of the same class) on a cluttered, textured background:
a large body with a feather texture and a darker wing, a tail, and a head with an eye. All of that is
shared by every class and drawn from the same distributions whatever the class. The class is written
ONLY in a small cap on the head (a colour and a pattern, 5-10% of the bird's area), the way bird species
differ by head or wing markings. A classifier needs nothing but the cap, so its CAM peaks there and the
box it gives covers the head, not the bird: the "Part" error that SPA's RAM and SCG exist to fix. The
body's texture is uniform and unlike the background, so the structure a backbone learns can carry the
cap's activation over the whole bird. Distractor shapes in the caps' colours and the bodies' tones sit
in the background, so colour alone is not enough and a sloppy map also lights up clutter.

Everything is drawn from `numpy.random.default_rng((seed, image index))`, so a data set is a pure
function of its arguments (same seed, same bytes) and images do not depend on generation order.
Object masks are the exact pixels drawn for the objects; boxes are those masks' extents.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..argtypes import non_negative_int

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), inclusive pixels

# The cap's colours, saturated so that they stand out of the muted bodies (and show at 112 px input).
CAP_COLOURS: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("Red", (215, 35, 40)),
    ("Blue", (35, 80, 230)),
    ("Yellow", (245, 210, 30)),
    ("Green", (30, 175, 70)),
    ("Magenta", (205, 45, 195)),
    ("Cyan", (35, 205, 220)),
    ("Orange", (250, 130, 20)),
    ("White", (250, 250, 250)),
)
CAP_PATTERNS: tuple[str, ...] = ("Solid", "Striped", "Checked", "Ringed")
MAX_CLASSES = len(CAP_COLOURS) * len(CAP_PATTERNS)
# Bodies are muted browns, greys and olives; the class never changes them.
BODY_TONES: tuple[tuple[int, int, int], ...] = (
    (150, 110, 70),
    (120, 100, 82),
    (172, 150, 118),
    (100, 92, 78),
    (140, 132, 105),
    (125, 85, 60),
)
DARK = np.array((35, 30, 28), dtype=np.float32)
TWO_INSTANCE_RATE = 0.1
JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthConfig:
    """What a data set is a function of; the defaults are the benchmark."""

    seed: int = 0
    classes: int = 8
    train_per_class: int = 300
    test_per_class: int = 100
    size: int = 160  # the long side of every image; the short side is 70-100% of it

    def __post_init__(self) -> None:
        if not 1 <= self.classes <= MAX_CLASSES:
            raise ValueError(f"classes must be between 1 and {MAX_CLASSES}, got {self.classes}")
        if self.train_per_class < 0 or self.test_per_class < 0 or self.train_per_class + self.test_per_class < 1:
            raise ValueError("each class needs at least one image")
        if not 64 <= self.size <= 1024:
            raise ValueError(f"size must be between 64 and 1024 pixels, got {self.size}")


@dataclass(frozen=True)
class SynthImage:
    """One generated image: (H, W, 3) uint8 RGB pixels, (H, W) bool mask of all objects, a box per object."""

    pixels: np.ndarray
    mask: np.ndarray
    boxes: tuple[Box, ...]


def class_names(classes: int) -> list[str]:
    """Class c has cap colour c % 8 and a pattern chosen so that the first 8 classes differ in colour
    and the (colour, pattern) pairs never repeat: `Red_Solid_Cap`, `Blue_Striped_Cap`, ..."""
    names = []
    for c in range(classes):
        colour, pattern = _cap_of(c)
        names.append(f"{CAP_COLOURS[colour][0]}_{CAP_PATTERNS[pattern]}_Cap")
    return names


def _cap_of(class_id: int) -> tuple[int, int]:
    n_colours = len(CAP_COLOURS)
    return class_id % n_colours, (class_id // n_colours + class_id) % len(CAP_PATTERNS)


# ---------------------------------------------------------------------------------------------------------
# Textures


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """(h, w) float32 in [0, 1]: a random (cells x cells) grid upsampled bicubically, a low-frequency field."""
    grid = rng.random((cells, cells), dtype=np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(20, 236, 3).astype(np.float32)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 RGB clutter: colour blobs, a grating, strokes or speckle, at random."""
    kind = int(rng.integers(0, 4))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 0:  # blobs of two or three colours
        n = int(rng.integers(2, 4))
        weights = np.stack([_smooth_field(rng, h, w, int(rng.integers(3, 9))) for _ in range(n)], axis=-1)
        weights = np.exp(6.0 * weights)
        weights /= weights.sum(axis=-1, keepdims=True)
        colours = np.stack([_random_colour(rng) for _ in range(n)])
        canvas = weights @ colours
    elif kind == 1:  # a grating, its contrast modulated by a smooth field
        angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(6.0, 28.0)
        wave = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * (2 * math.pi / period))
        wave *= 0.4 + 0.6 * _smooth_field(rng, h, w, 4)
        a, b = _random_colour(rng), _random_colour(rng)
        canvas = a + wave[..., None] * (b - a)
    elif kind == 2:  # strokes, like grass or twigs, over a base colour
        canvas = np.empty((h, w, 3), dtype=np.float32)
        canvas[:] = _random_colour(rng)
        palette = [_random_colour(rng) for _ in range(3)]
        for _ in range(int(rng.integers(25, 60))):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            angle, length = rng.uniform(0, 2 * math.pi), rng.uniform(6, 0.35 * max(h, w))
            end = (int(x + length * math.cos(angle)), int(y + length * math.sin(angle)))
            colour = palette[int(rng.integers(0, 3))]
            cv2.line(canvas, (int(x), int(y)), end, colour.tolist(), int(rng.integers(1, 4)), cv2.LINE_AA)
    else:  # speckle: fine coloured noise, slightly blurred, on a smooth two-colour base
        a, b = _random_colour(rng), _random_colour(rng)
        canvas = a + _smooth_field(rng, h, w, 5)[..., None] * (b - a)
        canvas += cv2.GaussianBlur(rng.normal(0.0, 28.0, (h, w, 3)).astype(np.float32), (0, 0), 1.0)
    return canvas.astype(np.float32)


def _draw_distractors(rng: np.random.Generator, canvas: np.ndarray) -> None:
    """Solid shapes in the caps' colours and the bodies' tones: colour alone must not give the class away."""
    h, w = canvas.shape[:2]
    side = min(h, w)
    for _ in range(int(rng.integers(2, 7))):
        if rng.random() < 0.6:
            colour = np.array(CAP_COLOURS[int(rng.integers(0, len(CAP_COLOURS)))][1], dtype=np.float32)
        else:
            colour = np.array(BODY_TONES[int(rng.integers(0, len(BODY_TONES)))], dtype=np.float32)
        colour = np.clip(colour + rng.normal(0.0, 12.0, 3), 0, 255).tolist()
        radius = rng.uniform(0.03, 0.11) * side
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        shape = int(rng.integers(0, 4))
        if shape == 0:
            cv2.circle(canvas, (int(cx), int(cy)), int(radius), colour, -1, cv2.LINE_AA)
        else:
            corners = 3 if shape == 2 else 4
            stretch = np.array((1.8, 0.35) if shape == 3 else (1.0, 1.0))  # shape 3: a bar
            t = np.arange(corners) * (2 * math.pi / corners) + math.pi / corners
            local = radius * stretch * np.stack([np.cos(t), np.sin(t)], axis=-1)
            turn = rng.uniform(0, 2 * math.pi)
            rotation = np.array(((math.cos(turn), -math.sin(turn)), (math.sin(turn), math.cos(turn))))
            points = local @ rotation.T + (cx, cy)
            cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], colour, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------------------
# The object


@dataclass(frozen=True)
class _Pose:
    """One bird: body semi-axes (a along the axis, b across), heading angle, head radius, tail length."""

    a: float
    b: float
    angle: float
    head: float
    tail: float

    def outline(self) -> list[np.ndarray]:
        """Polygons (float, relative to the body's centre) whose union is the bird's silhouette."""
        u = np.array((math.cos(self.angle), math.sin(self.angle)))
        v = np.array((-u[1], u[0]))
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)[:, None]
        body = self.a * np.cos(t) * u + self.b * np.sin(t) * v
        head_centre = self.head_centre()
        head = head_centre + self.head * (np.cos(t) * u + np.sin(t) * v)
        root = -0.8 * self.a * u
        tip = -(self.a + self.tail) * u
        root_half, tip_half = 0.45 * self.b * v, 0.55 * self.b * v
        tail = np.stack([root + root_half, tip + tip_half, tip - tip_half, root - root_half])
        return [body, head, tail]

    def head_centre(self) -> np.ndarray:
        u = np.array((math.cos(self.angle), math.sin(self.angle)))
        return (self.a + 0.3 * self.head) * u


def _draw_pose(rng: np.random.Generator, semi_major: float) -> _Pose:
    a = semi_major
    b = a / rng.uniform(1.3, 2.3)
    angle = rng.uniform(0, 2 * math.pi)
    return _Pose(a=a, b=b, angle=angle, head=b * rng.uniform(0.6, 0.75), tail=a * rng.uniform(0.25, 0.5))


def _silhouette(pose: _Pose, centre: np.ndarray, h: int, w: int) -> np.ndarray:
    """(h, w) bool: the pixels the bird covers when its body is centred at `centre` (x, y)."""
    mask = np.zeros((h, w), dtype=np.uint8)
    # fillPoly's shift: sub-pixel vertices (4 fractional bits) so small birds keep their shape.
    polygons = [np.round((poly + centre) * 16).astype(np.int32) for poly in pose.outline()]
    for poly in polygons:
        cv2.fillPoly(mask, [poly], 1, cv2.LINE_8, shift=4)
    return mask.astype(bool)


def _extent(pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    points = np.concatenate(pose.outline())
    return points.min(axis=0), points.max(axis=0)


def _place(rng: np.random.Generator, pose: _Pose, h: int, w: int, margin: float = 2.0) -> np.ndarray | None:
    """A body centre (x, y) that keeps the whole bird inside the image, or None if it cannot fit."""
    lo, hi = _extent(pose)
    x_range = (margin - lo[0], w - 1 - margin - hi[0])
    y_range = (margin - lo[1], h - 1 - margin - hi[1])
    if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
        return None
    return np.array((rng.uniform(*x_range), rng.uniform(*y_range)))


def _paint_bird(
    rng: np.random.Generator, canvas: np.ndarray, pose: _Pose, centre: np.ndarray, mask: np.ndarray, class_id: int
) -> None:
    """Paint the bird into `canvas` (h, w, 3) float32 exactly on the pixels of `mask` (h, w) bool."""
    x0, y0, x1, y1 = mask_box(mask)
    # Texture math only inside the bird's box: a fifth of the image or less.
    yy, xx = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float32)
    mask = mask[y0 : y1 + 1, x0 : x1 + 1]
    canvas = canvas[y0 : y1 + 1, x0 : x1 + 1]
    cu, su = math.cos(pose.angle), math.sin(pose.angle)
    du = (xx - centre[0]) * cu + (yy - centre[1]) * su  # along the body, towards the head
    dv = -(xx - centre[0]) * su + (yy - centre[1]) * cu  # across the body

    tone = np.array(BODY_TONES[int(rng.integers(0, len(BODY_TONES)))], dtype=np.float32)
    tone = np.clip(tone + rng.normal(0, 10, 3), 0, 255)
    period_u, period_v = rng.uniform(5.0, 8.0), rng.uniform(4.0, 7.0)
    wavy = du * (2 * math.pi / period_u) + 0.6 * np.sin(dv * (2 * math.pi / 11.0))
    feathers = np.sin(wavy) * np.sin(dv * (2 * math.pi / period_v))
    shade = 0.78 + 0.3 * feathers
    # The wing: a darker ellipse on the back half of the body, the same for every class.
    wing = ((du + 0.15 * pose.a) / (0.6 * pose.a)) ** 2 + (dv / (0.55 * pose.b)) ** 2 <= 1.0
    shade = np.where(wing, shade * 0.7, shade)
    bird = tone * shade[..., None]

    hc = centre + pose.head_centre()
    hx, hy = xx - hc[0], yy - hc[1]
    hu, hv = hx * cu + hy * su, -hx * su + hy * cu
    # The cap: the only place the class shows.
    cap_radius = 0.62 * pose.head
    cap_u = hu - 0.15 * pose.head
    cap = np.hypot(cap_u, hv) <= cap_radius
    colour_index, pattern = _cap_of(class_id)
    cap_colour = np.clip(np.array(CAP_COLOURS[colour_index][1], dtype=np.float32) + rng.normal(0, 8, 3), 0, 255)
    cell = max(2.5, 0.42 * cap_radius)
    if pattern == 0:  # solid
        painted = np.ones_like(cap)
    elif pattern == 1:  # stripes across the head
        painted = np.sin(hv * (math.pi / cell)) > 0
    elif pattern == 2:  # checks
        painted = (np.floor(cap_u / cell) + np.floor(hv / cell)) % 2 == 0
    else:  # a ring around a dark centre
        painted = np.hypot(cap_u, hv) >= 0.5 * cap_radius
    bird = np.where((cap & painted)[..., None], cap_colour, bird)
    bird = np.where((cap & ~painted)[..., None], DARK, bird)
    # The eye, in front of the cap on one side, shared by all classes.
    eye = np.hypot(hu - 0.55 * pose.head, hv - 0.3 * pose.head) <= max(1.2, 0.14 * pose.head)
    bird = np.where(eye[..., None], DARK, bird)
    canvas[mask] = bird[mask]


def render(rng: np.random.Generator, class_id: int, size: int) -> SynthImage:
    """One image of class `class_id` with the long side `size`; everything else is drawn from `rng`."""
    short = int(round(size * rng.uniform(0.7, 1.0)))
    h, w = (size, short) if rng.random() < 0.35 else (short, size)
    canvas = _background(rng, h, w)
    _draw_distractors(rng, canvas)
    side = min(h, w)

    birds: list[tuple[_Pose, np.ndarray]] = []
    if rng.random() < TWO_INSTANCE_RATE:
        birds = _two_birds(rng, h, w, side)
    if not birds:
        pose = _draw_pose(rng, rng.uniform(0.17, 0.34) * side)
        centre = _place(rng, pose, h, w)
        while centre is None:  # too long for a narrow image: shrink until it fits
            pose = _Pose(pose.a * 0.9, pose.b * 0.9, pose.angle, pose.head * 0.9, pose.tail * 0.9)
            centre = _place(rng, pose, h, w)
        birds = [(pose, centre)]

    masks = []
    for pose, centre in birds:
        mask = _silhouette(pose, centre, h, w)
        _paint_bird(rng, canvas, pose, centre, mask, class_id)
        masks.append(mask)

    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)
    canvas += rng.normal(0.0, 3.0, canvas.shape).astype(np.float32)
    pixels = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    union = np.logical_or.reduce(masks)
    return SynthImage(pixels=pixels, mask=union, boxes=tuple(mask_box(m) for m in masks))


def _two_birds(rng: np.random.Generator, h: int, w: int, side: int) -> list[tuple[_Pose, np.ndarray]]:
    """Two smaller birds whose boxes do not touch, or [] when 30 tries find no room."""
    for _ in range(30):
        poses = [_draw_pose(rng, rng.uniform(0.11, 0.19) * side) for _ in range(2)]
        placed = [(pose, centre) for pose in poses if (centre := _place(rng, pose, h, w)) is not None]
        if len(placed) < 2:
            continue
        (a_lo, a_hi), (b_lo, b_hi) = [tuple(centre + corner for corner in _extent(pose)) for pose, centre in placed]
        # Apart by more than 2 px along x or y: the silhouettes cannot touch.
        if np.any(a_hi + 2 < b_lo) or np.any(b_hi + 2 < a_lo):
            return placed
    return []


def mask_box(mask: np.ndarray) -> Box:
    """(H, W) bool -> the inclusive (x0, y0, x1, y1) of its true pixels (the mask must not be empty)."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


# ---------------------------------------------------------------------------------------------------------
# Writing a data set


def generate(out: Path, config: SynthConfig, *, progress: bool = False) -> int:
    """Write the data set into `out` (created; must not hold files already). Returns the image count."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; spa-synth writes into a new or empty directory")
    names = class_names(config.classes)
    per_class = config.train_per_class + config.test_per_class
    total = config.classes * per_class
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes")}
    start = time.perf_counter()
    image_id = 0
    for class_id, name in enumerate(names):
        folder = f"{class_id + 1:03d}.{name}"
        (out / "images" / folder).mkdir(parents=True, exist_ok=True)
        (out / "segmentations" / folder).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            image_id += 1
            # One stream per image: the data set does not depend on the order images are made in.
            image = render(np.random.default_rng((config.seed, image_id)), class_id, config.size)
            rel = f"{folder}/{name}_{index + 1:04d}"
            _write_jpeg(out / "images" / f"{rel}.jpg", image.pixels)
            cv2.imwrite(str(out / "segmentations" / f"{rel}.png"), image.mask.astype(np.uint8) * 255)
            lines["images"].append(f"{image_id} {rel}.jpg")
            lines["labels"].append(f"{image_id} {class_id + 1}")
            lines["split"].append(f"{image_id} {int(index < config.train_per_class)}")
            # Two birds: two lines with the same image id (CUB itself has one box per image).
            for x0, y0, x1, y1 in image.boxes:
                lines["boxes"].append(f"{image_id} {x0:.1f} {y0:.1f} {x1 - x0 + 1:.1f} {y1 - y0 + 1:.1f}")
            if progress and (image_id % 200 == 0 or image_id == total):
                print(f"\rspa-synth: {image_id}/{total} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    files = {
        "images.txt": lines["images"],
        "image_class_labels.txt": lines["labels"],
        "train_test_split.txt": lines["split"],
        "bounding_boxes.txt": lines["boxes"],
        "classes.txt": [f"{i + 1} {i + 1:03d}.{n}" for i, n in enumerate(names)],
    }
    for file_name, rows in files.items():
        (out / file_name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    description = {"generator": "spa-synth", **config.__dict__, "images": total}
    (out / "synth.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %d images (%d classes) to %s in %.1f s", total, config.classes, out, time.perf_counter() - start)
    return total


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    # OpenCV takes BGR; the fixed quality and no optimisation flags keep the bytes reproducible.
    ok, data = cv2.imencode(".jpg", pixels[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - encoding a valid uint8 image does not fail
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(data.tobytes())


def main(argv: Sequence[str] | None = None) -> int:
    defaults = SynthConfig()
    parser = argparse.ArgumentParser(
        prog="spa-synth",
        description="Generate the synthetic SPA benchmark (CUB-200-2011 layout, with boxes and masks). "
        "The defaults are the benchmark the demo model is trained and evaluated on.",
    )
    parser.add_argument("--out", type=Path, required=True, help="new or empty directory to write into")
    count = non_negative_int
    parser.add_argument("--seed", type=count, default=defaults.seed, help="default %(default)s")
    parser.add_argument(
        "--classes", type=count, default=defaults.classes, help=f"1..{MAX_CLASSES}, default %(default)s"
    )
    parser.add_argument("--train-per-class", type=count, default=defaults.train_per_class, help="default %(default)s")
    parser.add_argument("--test-per-class", type=count, default=defaults.test_per_class, help="default %(default)s")
    parser.add_argument("--size", type=count, default=defaults.size, help="long side in pixels, default %(default)s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        config = SynthConfig(
            seed=args.seed,
            classes=args.classes,
            train_per_class=args.train_per_class,
            test_per_class=args.test_per_class,
            size=args.size,
        )
        generate(args.out, config, progress=sys.stderr.isatty())
    except (ValueError, FileExistsError, OSError) as exc:
        print(f"spa-synth: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
