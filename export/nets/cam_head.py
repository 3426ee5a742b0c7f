"""The class map of a CAM network: its global-average-pooling + fully-connected classifier applied at every position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def linear_class_map(features: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """N x K x h x w features -> N x C x h x w class map: `fc` as a 1x1 convolution (its weights, its bias).

    The FC layer is linear, so the map's spatial mean is exactly fc(GAP(features)), the network's logits;
    the map differs from Zhou et al.'s CAM only by the per-class bias, which min-max normalisation removes.
    """
    return F.conv2d(features, fc.weight[:, :, None, None], fc.bias)
