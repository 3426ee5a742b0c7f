"""Weight initialisation shared by the SPA networks."""

from __future__ import annotations

from torch import nn


def init_weights(model: nn.Module, classifier: nn.Conv2d) -> None:
    """He init for every conv (stable activation scale through deep ReLU stacks), zero biases, and a small
    classifier so that a fresh model starts near uniform class scores (cross-entropy about log C)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    nn.init.normal_(classifier.weight, std=0.01)
