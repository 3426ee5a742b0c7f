"""The RAM loss (restricted activation module, docs/reference.md section 6); training only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Keeps the per-image min-max normalisation finite when the variance map is flat.
_EPS = 1e-15


def ram_loss(class_map: torch.Tensor, labels: torch.Tensor, th_bg: float, gap: float) -> torch.Tensor:
    """L_RA for class maps N x C x h x w and integer labels N.

    Positions whose class-probability variance (min-max normalised per image) is below `th_bg` count as
    background and are pushed towards a low ground-truth activation; above `th_bg + gap` they count as
    object and are pushed towards a high one. Returns a scalar: the mean over images and positions.
    """
    with torch.no_grad():
        variance = F.softmax(class_map, dim=1).var(dim=1).flatten(1)  # N x hw, unbiased as torch.var
        low = variance.min(dim=1, keepdim=True).values
        high = variance.max(dim=1, keepdim=True).values
        normalised = (variance - low) / (high - low + _EPS)
        background = (normalised < th_bg).to(class_map.dtype)
        foreground = (normalised > th_bg + gap).to(class_map.dtype)
    rows = torch.arange(class_map.shape[0], device=class_map.device)
    activation = torch.sigmoid(class_map[rows, labels]).flatten(1)
    return (activation * background + (1 - activation) * foreground).mean()
