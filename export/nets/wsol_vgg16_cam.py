"""VGG16-CAM in clovaai/wsolevaluation's layout (its wsol/vgg.py, method `cam`): `features` (torchvision's VGG16
convolutions, the last pool dropped; with large_feature_map also the fourth), `conv6` (3x3, 1024) + ReLU, then
global average pooling and `fc`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cam_head import linear_class_map
from .init import init_weights

_CONV4_END = 23  # features[:23] ends with conv4's last ReLU (the 4th pool, when present, is features[23])


def _features(large_feature_map: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_ch = 3
    for stage, (width, convs) in enumerate(((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))):
        for _ in range(convs):
            layers += [nn.Conv2d(in_ch, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_ch = width
        if stage < 3 or (stage == 3 and not large_feature_map):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG16CAM(nn.Module):
    """forward(x: N x 3 x H x W) -> (class_map N x C x H/s x W/s, feat_a = conv4 (after its pool when there is
    one) N x 512 x H/s x W/s, feat_b = conv5 N x 512 x H/s x W/s), s = 16, or 8 with large_feature_map;
    the features SPA's VGG16 uses, here at the class map's resolution."""

    input_size: tuple[int, int] = (224, 224)
    head_prefixes: tuple[str, ...] = ("conv6", "fc")
    classifier: str = "fc"
    has_large_feature_map = True

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = _features(large_feature_map)
        self.conv4_end = _CONV4_END + (0 if large_feature_map else 1)
        self.conv6 = nn.Conv2d(512, 1024, kernel_size=3, padding=1)
        self.fc = nn.Linear(1024, num_classes)
        init_weights(self, self.fc)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feat_a = self.features[: self.conv4_end](x)
        feat_b = self.features[self.conv4_end:](feat_a)
        return linear_class_map(F.relu(self.conv6(feat_b)), self.fc), feat_a, feat_b
