"""The RAM loss against a direct, loop-by-loop reading of docs/reference.md section 6."""

from __future__ import annotations

import math

import pytest
import torch
from spa_export.ram import ram_loss


def ram_loss_slow(class_map: torch.Tensor, labels: torch.Tensor, th_bg: float, gap: float) -> torch.Tensor:
    n, c, h, w = class_map.shape
    values = class_map.detach()  # the masks carry no gradient; only s = sigmoid(...) below does
    total = class_map.sum() * 0  # keeps the graph when both masks are empty
    for i in range(n):
        variance = torch.empty(h, w, dtype=class_map.dtype)
        for y in range(h):
            for x in range(w):
                logits = [float(values[i, k, y, x]) for k in range(c)]
                top = max(logits)
                exps = [math.exp(v - top) for v in logits]
                probs = [e / sum(exps) for e in exps]
                mean = sum(probs) / c
                variance[y, x] = sum((p - mean) ** 2 for p in probs) / (c - 1)
        low, high = float(variance.min()), float(variance.max())
        for y in range(h):
            for x in range(w):
                v = (float(variance[y, x]) - low) / (high - low + 1e-15)
                s = torch.sigmoid(class_map[i, labels[i], y, x])
                if v < th_bg:
                    total = total + s
                if v > th_bg + gap:
                    total = total + (1 - s)
    return total / (n * h * w)


CASES = [
    (0.1, 0.2),  # the authors' CUB setting
    (0.4, 0.1),  # ILSVRC
    (0.0, 0.3),  # no background: nothing is below 0
    (0.5, 0.6),  # no object: nothing is above 1.1
    (0.0, 1.0),  # neither: the loss is 0
]


@pytest.mark.parametrize(("th_bg", "gap"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_equations(th_bg, gap, seed):
    generator = torch.Generator().manual_seed(seed)
    class_map = (3 * torch.randn(3, 5, 4, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 5, (3,), generator=generator)
    slow_map = class_map.detach().clone().requires_grad_()

    fast, slow = ram_loss(class_map, labels, th_bg, gap), ram_loss_slow(slow_map, labels, th_bg, gap)
    torch.testing.assert_close(fast, slow)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(class_map.grad, slow_map.grad)


def test_empty_masks_give_zero():
    class_map = torch.randn(2, 4, 3, 3)
    assert float(ram_loss(class_map, torch.tensor([0, 1]), th_bg=0.0, gap=1.0)) == 0.0


def test_flat_map_is_all_background():
    # Equal logits everywhere: the normalised variance is 0 at every position, so all are background.
    class_map = torch.zeros(1, 3, 2, 2, requires_grad=True)
    loss = ram_loss(class_map, torch.tensor([2]), th_bg=0.1, gap=0.2)
    assert loss.item() == pytest.approx(0.5)  # sigmoid(0)
    loss.backward()
    assert class_map.grad[0, 2].abs().sum() > 0 and class_map.grad[0, :2].abs().sum() == 0


def test_gradient_flows_only_through_the_label_map():
    class_map = torch.randn(2, 6, 5, 5, requires_grad=True)
    labels = torch.tensor([4, 1])
    ram_loss(class_map, labels, 0.1, 0.2).backward()
    for i, label in enumerate(labels):
        others = [k for k in range(6) if k != label]
        assert class_map.grad[i, others].abs().sum() == 0
