"""clovaai/wsolevaluation's CAM networks (VGG16-CAM, ResNet50-CAM, InceptionV3-CAM): checkpoints in its layout
(built here from freshly initialised networks; the expected keys are written out from its configuration, not
taken from our modules) load strictly and export; the class map is its CAM up to normalisation and its spatial
mean is its logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from spa_export import to_onnx
from spa_export.checkpoints import CheckpointError, load_checkpoint
from spa_export.nets import build_model
from spa_export.nets.inceptionv3_spa import InceptionV3SPA
from spa_service.card import load_card

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# wsolevaluation's wsol/vgg.py configs for method `cam` (numbers: conv widths, M: 2x2 max pool)
VGG_CFG = {False: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
           True: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, 512, 512, 512]}


def vgg16_cam_keys(large: bool) -> dict[str, tuple[int, ...]]:
    keys, index, in_ch = {}, 0, 3
    for v in VGG_CFG[large]:
        if v == "M":
            index += 1
            continue
        keys[f"features.{index}.weight"], keys[f"features.{index}.bias"] = (v, in_ch, 3, 3), (v,)
        index, in_ch = index + 2, v  # conv + ReLU
    keys |= {"conv6.weight": (1024, 512, 3, 3), "conv6.bias": (1024,), "fc.weight": (5, 1024), "fc.bias": (5,)}
    return keys


def _bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{p}": (() if p == "num_batches_tracked" else (channels,)) for p in BN}


def resnet50_cam_keys() -> dict[str, tuple[int, ...]]:
    keys = {"conv1.weight": (64, 3, 7, 7), **_bn_keys("bn1", 64)}
    in_ch = 64
    for layer, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            keys |= {f"{p}.conv1.weight": (planes, in_ch, 1, 1), **_bn_keys(f"{p}.bn1", planes),
                     f"{p}.conv2.weight": (planes, planes, 3, 3), **_bn_keys(f"{p}.bn2", planes),
                     f"{p}.conv3.weight": (planes * 4, planes, 1, 1), **_bn_keys(f"{p}.bn3", planes * 4)}
            if b == 0:  # every stage changes the channel count, so its first block has a projection
                keys |= {f"{p}.downsample.0.weight": (planes * 4, in_ch, 1, 1), **_bn_keys(f"{p}.downsample.1", planes * 4)}
            in_ch = planes * 4
    return keys | {"fc.weight": (5, 2048), "fc.bias": (5,)}


def inceptionv3_cam_keys() -> dict[str, tuple[int, ...]]:
    # torchvision's Inception-V3 names up to Mixed_6e (as InceptionV3-SPA has them, checked in test_nets.py),
    # then wsolevaluation's head
    trunk = {k: tuple(v.shape) for k, v in InceptionV3SPA(num_classes=5).state_dict().items() if not k.startswith("cls_")}
    return trunk | {"SPG_A3_1b.0.weight": (1024, 768, 3, 3), "SPG_A3_1b.0.bias": (1024,),
                    "SPG_A3_2b.0.weight": (1024, 1024, 3, 3), "SPG_A3_2b.0.bias": (1024,),
                    "SPG_A4.weight": (5, 1024, 1, 1), "SPG_A4.bias": (5,)}


LAYOUTS = {
    "vgg16_cam": ("vgg16", lambda large: vgg16_cam_keys(large)),
    "resnet50_cam": ("resnet50", lambda large: resnet50_cam_keys()),
    "inceptionv3_cam": ("inception_v3", lambda large: inceptionv3_cam_keys()),
}


def _fresh(arch: str, seed: int, large: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model(arch, 5, large_feature_map=large)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that a load that skipped them would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _wsol_checkpoint(path: Path, arch: str, model: torch.nn.Module) -> Path:
    """What wsolevaluation's _torch_save_model writes: architecture, epoch, state_dict, optimizer."""
    state = model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    torch.save({"architecture": LAYOUTS[arch][0], "epoch": 7, "state_dict": state,
                "optimizer": optimizer.state_dict()}, path)
    return path


@pytest.mark.parametrize("large", [False, True])
@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_state_dict_is_the_wsolevaluation_layout(arch, large):
    state = build_model(arch, 5, large_feature_map=large).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == LAYOUTS[arch][1](large)


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_maps_have_stride_16_or_8_with_large_feature_map(arch):
    for large, side in ((False, 6), (True, 12)):  # 96 / 16, 96 / 8 (14 x 14 and 28 x 28 at 224)
        with torch.no_grad():
            outputs = build_model(arch, 5, large_feature_map=large).eval()(torch.randn(1, 3, 96, 96))
        assert [t.shape[-2:] for t in outputs] == [(side, side)] * 3


def _wsol_logits_and_cam_features(arch: str, model: torch.nn.Module, x: torch.Tensor):
    """wsolevaluation's own forward (wsol/vgg.py, wsol/resnet.py): the features its CAM weights, and the logits."""
    if arch == "vgg16_cam":
        features = F.relu(model.conv6(model.features(x)))
    else:
        y = F.max_pool2d(F.relu(model.bn1(model.conv1(x))), kernel_size=3, stride=2, padding=1)
        features = model.layer4(model.layer3(model.layer2(model.layer1(y))))
    return model.fc(features.mean(dim=(2, 3))), features


def _minmax(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low)).reshape(x.shape)


@pytest.mark.parametrize("arch", ["vgg16_cam", "resnet50_cam"])
def test_class_map_is_wsolevaluations_cam_and_its_mean_the_logits(arch):
    model = _fresh(arch, seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        class_map = model(x)[0]
        logits, features = _wsol_logits_and_cam_features(arch, model, x)
    torch.testing.assert_close(class_map.mean(dim=(2, 3)), logits, atol=1e-5, rtol=1e-4)
    labels = logits.argmax(dim=1)
    # wsolevaluation: (fc.weight[label] * features).mean over channels; ours adds the bias and drops the 1/K
    cams = (model.fc.weight[labels][:, :, None, None] * features).mean(dim=1)
    ours = class_map[torch.arange(2), labels]
    torch.testing.assert_close(_minmax(ours), _minmax(cams), atol=1e-4, rtol=1e-4)


def test_inception_class_map_mean_is_the_logits():
    model = _fresh("inceptionv3_cam", seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        class_map, _, feat_b = model(x)
        logits = F.adaptive_avg_pool2d(model.SPG_A4(model.SPG_A3_2b(model.SPG_A3_1b(feat_b))), 1).flatten(1)
    torch.testing.assert_close(class_map.mean(dim=(2, 3)), logits)


@pytest.mark.parametrize("arch", sorted(LAYOUTS))
def test_wsolevaluation_checkpoint_loads_strictly_and_exports(arch, tmp_path):
    source = _fresh(arch, seed=0)
    path = _wsol_checkpoint(tmp_path / f"{arch}.pth.tar", arch, source)
    target = build_model(arch, 5)
    extra = load_checkpoint(target, path)
    assert extra["architecture"] == LAYOUTS[arch][0] and extra["epoch"] == 7
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for ours, ref in zip(target.eval()(x), source(x), strict=True):
            torch.testing.assert_close(ours, ref)

    out = tmp_path / "model"
    assert to_onnx.main(["--arch", arch, "--checkpoint", str(path), "--num-classes", "5", "--preset", "ilsvrc",
                         "--input-size", "64", "64", "--out", str(out)]) == 0
    card, onnx_path = load_card(out)
    assert card.map_size == (4, 4) and card.mean == (0.485, 0.456, 0.406)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(["class_map", "feat_a", "feat_b"], {"image": x.numpy()})
    with torch.no_grad():
        for ours, ref in zip(got, source(x), strict=True):
            ref = ref.numpy()
            assert np.abs(ours - ref).max() <= 1e-4 * (ref.max() - ref.min())


def test_large_feature_map_checkpoint_needs_the_flag(tmp_path, capsys):
    path = _wsol_checkpoint(tmp_path / "vgg.pth.tar", "vgg16_cam", _fresh("vgg16_cam", seed=0, large=True))
    with pytest.raises(CheckpointError, match="does not fit VGG16CAM"):
        load_checkpoint(build_model("vgg16_cam", 5), path)
    load_checkpoint(build_model("vgg16_cam", 5, large_feature_map=True), path)
    with pytest.raises(SystemExit) as exit_info:
        to_onnx.main(["--arch", "tiny", "--large-feature-map", "--random-init", "--num-classes", "5",
                      "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    assert "tiny has no such variant" in capsys.readouterr().err
