"""SPA networks. Every model's forward(x) returns (class_map, feat_a, feat_b): the class map and the two
feature blocks SCG uses (SPA_REFERENCE.md "blocks 4 and 5")."""

from __future__ import annotations

import torch
from torch import nn

from .inceptionv3_spa import InceptionV3SPA
from .tiny_spa import TinySPA
from .vgg16_spa import VGG16SPA

ARCHS: dict[str, type[nn.Module]] = {"vgg16": VGG16SPA, "inceptionv3": InceptionV3SPA, "tiny": TinySPA}

# Every architecture expects RGB in [0, 1] normalised with the ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(arch: str, num_classes: int, **kw) -> nn.Module:
    """A freshly initialised SPA network; `kw` goes to the architecture's constructor."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (choose from {', '.join(ARCHS)})")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return ARCHS[arch](num_classes=num_classes, **kw)


def class_scores(class_map: torch.Tensor) -> torch.Tensor:
    """Class logits N x C: the class map averaged over its positions (global average pooling)."""
    return class_map.mean(dim=(2, 3))


__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16SPA",
    "InceptionV3SPA",
    "TinySPA",
    "build_model",
    "class_scores",
]
