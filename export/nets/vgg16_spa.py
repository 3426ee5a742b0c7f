"""VGG16-SPA (docs/reference.md section 2): attribute names match the authors' checkpoints."""

from __future__ import annotations

import torch
from torch import nn

from .init import init_weights


def _conv_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.ReLU(inplace=True)]


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=2, stride=2)


class VGG16SPA(nn.Module):
    """VGG16 without its last pool, plus a conv head giving a class map at stride 16.

    forward(x: N x 3 x H x W) -> (class_map N x C x H/16 x W/16,
    feat_a = conv4 output (after its pool) N x 512 x H/16 x W/16, feat_b = conv5 output N x 512 x H/16 x W/16).
    """

    input_size: tuple[int, int] = (224, 224)
    head_prefixes: tuple[str, ...] = ("cls",)
    classifier: str = "cls.4"

    def __init__(self, num_classes: int = 200) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1_2 = nn.Sequential(*_conv_relu(3, 64), *_conv_relu(64, 64), _pool(),
                                     *_conv_relu(64, 128), *_conv_relu(128, 128), _pool())
        self.conv3 = nn.Sequential(*_conv_relu(128, 256), *_conv_relu(256, 256), *_conv_relu(256, 256), _pool())
        self.conv4 = nn.Sequential(*_conv_relu(256, 512), *_conv_relu(512, 512), *_conv_relu(512, 512), _pool())
        self.conv5 = nn.Sequential(*_conv_relu(512, 512), *_conv_relu(512, 512), *_conv_relu(512, 512))
        # conv5_add and fmp are never used in forward; they exist because the authors' checkpoints hold
        # conv5_add's weights, and a strict load needs somewhere to put them.
        self.conv5_add = nn.Sequential(*_conv_relu(512, 512))
        self.fmp = _pool()
        self.cls = nn.Sequential(
            *_conv_relu(512, 1024),
            *_conv_relu(1024, 1024),
            nn.Conv2d(1024, num_classes, kernel_size=1),
        )
        init_weights(self, self.cls[4])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat_a = self.conv4(self.conv3(self.conv1_2(x)))
        feat_b = self.conv5(feat_a)
        return self.cls(feat_b), feat_a, feat_b

