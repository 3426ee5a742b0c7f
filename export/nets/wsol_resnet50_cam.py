"""ResNet50-CAM in clovaai/wsolevaluation's layout (its wsol/resnet.py, method `cam`): torchvision's ResNet-50
names (`conv1`, `bn1`, `layer1`..`layer4`, `fc`), with layer4 at stride 1 and layer3 at stride 2 (1 with
large_feature_map), then global average pooling and `fc`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cam_head import linear_class_map
from .init import init_weights


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (carries the stride) -> 1x1 x4 channels, each conv without bias and with BatchNorm."""

    def __init__(self, in_ch: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_ch = planes * 4
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = (nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch))
                           if stride != 1 or in_ch != out_ch else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def _layer(in_ch: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    return nn.Sequential(Bottleneck(in_ch, planes, stride), *(Bottleneck(planes * 4, planes) for _ in range(blocks - 1)))


class ResNet50CAM(nn.Module):
    """forward(x: N x 3 x H x W) -> (class_map N x C x H/s x W/s, feat_a = layer3 N x 1024 x H/s x W/s,
    feat_b = layer4 N x 2048 x H/s x W/s), s = 16, or 8 with large_feature_map: the last two stages, both at
    the class map's resolution."""

    input_size: tuple[int, int] = (224, 224)
    head_prefixes: tuple[str, ...] = ("fc",)
    classifier: str = "fc"
    has_large_feature_map = True

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = _layer(64, 64, 3, stride=1)
        self.layer2 = _layer(256, 128, 4, stride=2)
        self.layer3 = _layer(512, 256, 6, stride=1 if large_feature_map else 2)
        self.layer4 = _layer(1024, 512, 3, stride=1)
        self.fc = nn.Linear(2048, num_classes)
        init_weights(self, self.fc)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        feat_a = self.layer3(self.layer2(self.layer1(x)))
        feat_b = self.layer4(feat_a)
        return linear_class_map(feat_b, self.fc), feat_a, feat_b
