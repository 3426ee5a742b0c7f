"""InceptionV3-CAM in clovaai/wsolevaluation's layout (its wsol/inception.py, method `cam`): torchvision's
Inception-V3 names up to Mixed_6e, Mixed_6a at stride 1, an extra 3x3 max pool (stride 2) before Mixed_6a unless
large_feature_map, and a convolutional head `SPG_A3_1b`, `SPG_A3_2b` (3x3, 1024, ReLU) and `SPG_A4` (1x1 to the
classes) whose output is already the class map (its spatial mean is the logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .init import init_weights
from .inceptionv3_spa import add_inception_trunk, stem_pool


class InceptionV3CAM(nn.Module):
    """forward(x: N x 3 x H x W) -> (class_map N x C x h x w, feat_a = the input of Mixed_6a (Mixed_5d, pooled
    unless large_feature_map) N x 288 x h x w, feat_b = Mixed_6e N x 768 x h x w); 14 x 14 at 224 input,
    28 x 28 with large_feature_map: the features SPA's InceptionV3 uses, at the class map's resolution."""

    input_size: tuple[int, int] = (224, 224)
    head_prefixes: tuple[str, ...] = ("SPG_A3_1b", "SPG_A3_2b", "SPG_A4")
    classifier: str = "SPG_A4"
    has_large_feature_map = True

    def __init__(self, num_classes: int = 1000, large_feature_map: bool = False) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.large_feature_map = large_feature_map
        add_inception_trunk(self)
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(1024, 1024, kernel_size=3, padding=1), nn.ReLU(inplace=True))
        self.SPG_A4 = nn.Conv2d(1024, num_classes, kernel_size=1)
        init_weights(self, self.SPG_A4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = stem_pool(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = stem_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        feat_a = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        if not self.large_feature_map:
            feat_a = F.max_pool2d(feat_a, kernel_size=3, stride=2, ceil_mode=True)
        feat_b = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(feat_a)))))
        return self.SPG_A4(self.SPG_A3_2b(self.SPG_A3_1b(feat_b))), feat_a, feat_b
