"""CUB-200-2011 layout reading and the authors' training augmentation, with PIL and numpy only.

A data set root holds images.txt (`id path`), image_class_labels.txt (`id label`, 1-based),
train_test_split.txt (`id is_train`) and the images under images/. Training needs no boxes, so
bounding_boxes.txt is not read here (the runtime's evaluation reads it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler

from .nets import IMAGENET_MEAN, IMAGENET_STD

_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt")


class DatasetError(Exception):
    """A data set directory that is not in CUB layout; str() is one line."""


@dataclass(frozen=True)
class CubImage:
    path: Path
    label: int  # 0-based
    is_train: bool


def read_cub(root: Path | str) -> list[CubImage]:
    """Every image listed in the data set, in images.txt order."""
    root = Path(root)
    for name in _FILES:
        if not (root / name).is_file():
            raise DatasetError(f"{root}: no {name} (expected the CUB-200-2011 layout)")
    paths = _read_table(root / "images.txt")
    labels = _read_table(root / "image_class_labels.txt")
    split = _read_table(root / "train_test_split.txt")
    images = []
    for image_id, rel in paths.items():
        label = labels.get(image_id, "")
        if not label.isdigit() or int(label) < 1:
            raise DatasetError(f"{root}: image {image_id} has no class label from 1 up in image_class_labels.txt")
        if split.get(image_id) not in ("0", "1"):
            raise DatasetError(f"{root}: image {image_id} has no 0/1 entry in train_test_split.txt")
        images.append(CubImage(root / "images" / rel, int(label) - 1, split[image_id] == "1"))
    if not images:
        raise DatasetError(f"{root}: images.txt lists no images")
    return images


def _read_table(path: Path) -> dict[int, str]:
    table = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        key, _, value = line.strip().partition(" ")
        if not key.isdigit() or not value:
            raise DatasetError(f"{path}:{number}: expected `<image id> <value>`, got {line.strip()!r}")
        table[int(key)] = value.strip()
    return table


def resize_size(input_size: tuple[int, int]) -> tuple[int, int]:
    """The authors resize to 256 before a random 224 crop; other input sizes keep that 8/7 ratio."""
    return (round(input_size[0] * 8 / 7), round(input_size[1] * 8 / 7))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> 3 x H x W float32, scaled to [0, 1] and normalised with the ImageNet statistics."""
    array = np.asarray(image, dtype=np.float32) / 255.0
    array = (array - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def train_transform(image: Image.Image, input_size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
    """Resize (bilinear) to 8/7 of the input size, random crop to it, random horizontal flip, normalise."""
    (rh, rw), (h, w) = resize_size(input_size), input_size
    image = image.resize((rw, rh), Image.Resampling.BILINEAR)
    top, left = int(rng.integers(0, rh - h + 1)), int(rng.integers(0, rw - w + 1))
    image = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor(image)


class CubTrainSet(Dataset):
    """The training split with augmentation drawn from (seed, epoch, index), so a run is reproducible
    whatever the number of DataLoader workers, and a resumed run sees what the uninterrupted one saw."""

    def __init__(self, images: list[CubImage], input_size: tuple[int, int], seed: int) -> None:
        self.images = [image for image in images if image.is_train]
        if not self.images:
            raise DatasetError("the data set has no training images (train_test_split.txt)")
        missing = [image.path for image in self.images if not image.path.is_file()]
        if missing:
            raise DatasetError(f"{len(missing)} training image(s) missing, e.g. {missing[0]}")
        self.input_size = input_size
        self.seed = seed
        self.epoch = 0  # set by the training loop; workers are re-created (and see it) every epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.images[index]
        try:
            with Image.open(item.path) as image:
                image = image.convert("RGB")
        except UnidentifiedImageError:
            raise DatasetError(f"{item.path}: cannot read image (not a format PIL recognises)") from None
        except OSError as exc:
            raise DatasetError(f"{item.path}: cannot read image ({exc.strerror or exc})") from None
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return train_transform(image, self.input_size, rng), item.label


class EpochSampler(Sampler[int]):
    """A shuffle that depends only on (seed, epoch); `skip` drops the first samples of a resumed epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng((self.seed, self.epoch)).permutation(self.size)
        return iter(order[self.skip:].tolist())

    def __len__(self) -> int:
        return max(self.size - self.skip, 0)
