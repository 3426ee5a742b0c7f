"""SPA and CAM networks. Every model's forward(x) returns (class_map, feat_a, feat_b): the class map and the two
feature blocks SCG uses, all at the class map's resolution (docs/reference.md section 2).

Adding a GAP + FC classifier network (docs/real-photo-model.md, "Another CAM network"): one module whose class
keeps the checkpoint's attribute names, returns `linear_class_map(head features, fc)` and two feature blocks,
and declares `input_size`, `classifier` (the FC's name) and, when not ImageNet's, `mean` / `std`; then one
entry in ARCHS below.
"""

from __future__ import annotations

import torch
from torch import nn

from .efficientnet_lite0 import EfficientNetLite0
from .inceptionv3_spa import InceptionV3SPA
from .tiny_spa import TinySPA
from .vgg16_spa import VGG16SPA
from .wsol_inceptionv3_cam import InceptionV3CAM
from .wsol_resnet50_cam import ResNet50CAM
from .wsol_vgg16_cam import VGG16CAM

ARCHS: dict[str, type[nn.Module]] = {
    "vgg16": VGG16SPA, "inceptionv3": InceptionV3SPA, "tiny": TinySPA,
    "efficientnet_lite0": EfficientNetLite0,
    # clovaai/wsolevaluation's CAM checkpoints
    "vgg16_cam": VGG16CAM, "resnet50_cam": ResNet50CAM, "inceptionv3_cam": InceptionV3CAM,
}

# RGB in [0, 1] normalised with the ImageNet statistics, unless the architecture declares its own mean / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_model(arch: str, num_classes: int, **kw) -> nn.Module:
    """A freshly initialised SPA network; `kw` goes to the architecture's constructor."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (choose from {', '.join(ARCHS)})")
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    return ARCHS[arch](num_classes=num_classes, **kw)


def normalisation(model: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) of the input the architecture was trained on, per RGB channel of [0, 1] pixels."""
    return getattr(model, "mean", IMAGENET_MEAN), getattr(model, "std", IMAGENET_STD)


def class_scores(class_map: torch.Tensor) -> torch.Tensor:
    """Class logits N x C: the class map averaged over its positions (global average pooling)."""
    return class_map.mean(dim=(2, 3))


__all__ = [
    "ARCHS",
    "EfficientNetLite0",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16SPA",
    "InceptionV3SPA",
    "InceptionV3CAM",
    "ResNet50CAM",
    "VGG16CAM",
    "TinySPA",
    "build_model",
    "class_scores",
    "normalisation",
]
