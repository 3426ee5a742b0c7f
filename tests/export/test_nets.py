"""The SPA networks: output shapes, and state_dict layouts that match the authors' checkpoints."""

from __future__ import annotations

import pytest
import torch
from spa_export.nets import ARCHS, build_model, class_scores


def _conv_keys(block: str, indices: list[int]) -> set[str]:
    return {f"{block}.{i}.{p}" for i in indices for p in ("weight", "bias")}


VGG16_KEYS = (_conv_keys("conv1_2", [0, 2, 5, 7]) | _conv_keys("conv3", [0, 2, 4]) | _conv_keys("conv4", [0, 2, 4])
              | _conv_keys("conv5", [0, 2, 4]) | _conv_keys("conv5_add", [0]) | _conv_keys("cls", [0, 2, 4]))


@pytest.fixture(scope="module")
def vgg16() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg16", 200).eval()


@pytest.fixture(scope="module")
def inceptionv3() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("inceptionv3", 200).eval()


def _shapes(model: torch.nn.Module, size: tuple[int, int]) -> list[tuple[int, ...]]:
    with torch.no_grad():
        return [tuple(t.shape) for t in model(torch.randn(2, 3, *size))]


def test_vgg16_maps_at_224(vgg16):
    assert vgg16.input_size == (224, 224)
    assert _shapes(vgg16, (224, 224)) == [(2, 200, 14, 14), (2, 512, 14, 14), (2, 512, 14, 14)]


def test_vgg16_state_dict_is_the_authors_layout(vgg16):
    state = vgg16.state_dict()
    assert set(state) == VGG16_KEYS
    assert state["cls.0.weight"].shape == (1024, 512, 3, 3)
    assert state["cls.2.weight"].shape == (1024, 1024, 3, 3)
    assert state["cls.4.weight"].shape == (200, 1024, 1, 1)
    assert state["cls.4.bias"].shape == (200,)
    assert state["conv5_add.0.weight"].shape == (512, 512, 3, 3)
    assert state["conv1_2.7.weight"].shape == (128, 128, 3, 3)


def test_vgg16_features_are_conv4_after_pool_and_conv5(vgg16):
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        class_map, feat_a, feat_b = vgg16(x)
        feat4 = vgg16.conv4(vgg16.conv3(vgg16.conv1_2(x)))
        torch.testing.assert_close(feat_a, feat4)
        torch.testing.assert_close(feat_b, vgg16.conv5(feat4))
        torch.testing.assert_close(class_map, vgg16.cls(feat_b))
    assert isinstance(vgg16.conv4[6], torch.nn.MaxPool2d)
    assert len(vgg16.conv5) == 6  # no pool after conv5


def test_inceptionv3_maps_at_224(inceptionv3):
    assert inceptionv3.input_size == (224, 224)
    assert _shapes(inceptionv3, (224, 224)) == [(2, 200, 28, 28), (2, 288, 28, 28), (2, 768, 28, 28)]


def test_inceptionv3_state_dict_follows_torchvision_names(inceptionv3):
    state = inceptionv3.state_dict()
    top = list(dict.fromkeys(key.split(".")[0] for key in state))
    assert top == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                   "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                   "cls_fc6", "cls_fc7", "cls_fc8"]
    assert state["Mixed_6a.branch3x3.conv.weight"].shape == (384, 288, 3, 3)
    assert state["Mixed_6a.branch3x3dbl_3.conv.weight"].shape == (96, 96, 3, 3)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_5b.branch_pool.bn.running_var"].shape == (32,)
    assert state["cls_fc6.0.weight"].shape == (1024, 768, 3, 3)
    assert state["cls_fc7.0.bias"].shape == (1024,)
    assert state["cls_fc8.weight"].shape == (200, 1024, 1, 1)
    assert "Conv2d_1a_3x3.conv.bias" not in state  # BasicConv2d convs have no bias
    assert inceptionv3.Mixed_6a.branch3x3.conv.stride == (1, 1)
    assert inceptionv3.Mixed_6a.branch3x3dbl_3.conv.stride == (1, 1)
    assert inceptionv3.Conv2d_1a_3x3.bn.eps == 0.001


def test_tiny_maps_and_interface():
    model = build_model("tiny", 10).eval()
    assert model.input_size == (112, 112)
    assert _shapes(model, (112, 112)) == [(2, 10, 14, 14), (2, 96, 14, 14), (2, 128, 14, 14)]
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_names_its_head_and_classifier(arch):
    model = build_model(arch, 7)
    params = dict(model.named_parameters())
    assert params[f"{model.classifier}.weight"].shape[0] == 7
    assert any(name.startswith(tuple(p + "." for p in model.head_prefixes)) for name in params)
    assert model.num_classes == 7


def test_fresh_model_starts_near_uniform_scores():
    torch.manual_seed(0)
    model = build_model("tiny", 10).eval()
    with torch.no_grad():
        scores = class_scores(model(torch.randn(4, 3, 112, 112))[0])
    assert scores.shape == (4, 10)
    assert scores.abs().max() < 0.5


def test_build_model_rejects_unknown_arch_and_bad_classes():
    with pytest.raises(ValueError, match="unknown arch 'resnet50'"):
        build_model("resnet50", 10)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("tiny", 0)
