"""InceptionV3-SPA (docs/reference.md section 2): torchvision's Inception-V3 names, cut after Mixed_6e and
changed to keep a 28 x 28 map at 224 input."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights


class BasicConv2d(nn.Module):
    """conv (no bias) + BatchNorm (eps 0.001) + ReLU, named `conv` and `bn` as in the checkpoints."""

    def __init__(self, in_ch: int, out_ch: int, **conv_kw) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, bias=False, **conv_kw)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """1x1, 5x5, double 3x3 and pooled branches: 224 + pool_features channels out."""

    def __init__(self, in_ch: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], dim=1)


class InceptionB(nn.Module):
    """torchvision's grid-reduction block with every stride set to 1 (SPA keeps the 28 x 28 map)."""

    def __init__(self, in_ch: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, 384, kernel_size=3, stride=1, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        b3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([b3, b3dbl, bp], dim=1)


class InceptionC(nn.Module):
    """Factorised 7x7 branches: 768 channels out."""

    def __init__(self, in_ch: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_ch, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, b7dbl, bp], dim=1)


def add_inception_trunk(net: nn.Module) -> None:
    """torchvision Inception-V3's layers up to Mixed_6e, under its attribute names (the checkpoints' keys)."""
    net.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2, padding=1)
    net.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    net.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    net.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    net.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    net.Mixed_5b = InceptionA(192, pool_features=32)
    net.Mixed_5c = InceptionA(256, pool_features=64)
    net.Mixed_5d = InceptionA(288, pool_features=64)
    net.Mixed_6a = InceptionB(288)
    net.Mixed_6b = InceptionC(768, channels_7x7=128)
    net.Mixed_6c = InceptionC(768, channels_7x7=160)
    net.Mixed_6d = InceptionC(768, channels_7x7=160)
    net.Mixed_6e = InceptionC(768, channels_7x7=192)


class InceptionV3SPA(nn.Module):
    """forward(x: N x 3 x H x W) -> (class_map N x C x H/8 x W/8, feat_a = Mixed_5d N x 288 x H/8 x W/8,
    feat_b = Mixed_6e N x 768 x H/8 x W/8); 28 x 28 maps at 224 input."""

    input_size: tuple[int, int] = (224, 224)
    head_prefixes: tuple[str, ...] = ("cls_fc6", "cls_fc7", "cls_fc8")
    classifier: str = "cls_fc8"

    def __init__(self, num_classes: int = 200) -> None:
        super().__init__()
        self.num_classes = num_classes
        add_inception_trunk(self)
        self.cls_fc6 = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.cls_fc7 = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.cls_fc8 = nn.Conv2d(1024, num_classes, kernel_size=1)
        init_weights(self, self.cls_fc8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = stem_pool(x)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = stem_pool(x)
        feat_a = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6a(feat_a)
        feat_b = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        class_map = self.cls_fc8(self.cls_fc7(self.cls_fc6(feat_b)))
        return class_map, feat_a, feat_b


def stem_pool(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=2, padding=1, ceil_mode=True)
