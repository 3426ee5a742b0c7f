"""A small SPA network for CPU training and demos: same interface as VGG16-SPA at a fraction of the cost."""

from __future__ import annotations

import torch
from torch import nn

from .init import init_weights


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class TinySPA(nn.Module):
    """Five conv + BN + ReLU layers (two strided, one pool) down to stride 8, then a VGG-SPA-like head.

    forward(x: N x 3 x H x W) -> (class_map N x C x H/8 x W/8, feat_a N x 96 x H/8 x W/8,
    feat_b N x 128 x H/8 x W/8); at the default 112 x 112 input every map is 14 x 14, as VGG16-SPA's at 224.
    """

    input_size: tuple[int, int] = (112, 112)
    head_prefixes: tuple[str, ...] = ("cls",)
    classifier: str = "cls.2"

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        # Strided convs rather than conv + pool in the first two stages: half the cost at full resolution.
        self.stem = nn.Sequential(*_conv_bn_relu(3, 32, stride=2), *_conv_bn_relu(32, 64, stride=2))
        self.block_a = nn.Sequential(*_conv_bn_relu(64, 96), nn.MaxPool2d(2, 2), *_conv_bn_relu(96, 96))
        self.block_b = nn.Sequential(*_conv_bn_relu(96, 128))
        self.cls = nn.Sequential(
            nn.Conv2d(128, 128, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, num_classes, kernel_size=1),
        )
        init_weights(self, self.cls[2])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat_a = self.block_a(self.stem(x))
        feat_b = self.block_b(feat_a)
        return self.cls(feat_b), feat_a, feat_b
