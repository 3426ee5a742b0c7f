"""Checkpoint formats: the authors' dict, bare state_dicts, torchvision VGG16 weights, and one-line errors."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from spa_export.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_pretrained_vgg,
    save_checkpoint,
)
from spa_export.nets import build_model

# torchvision VGG16 `features` indices holding convs, and the channels of each.
TORCHVISION_VGG16_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
                           14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512), 24: (512, 512),
                           26: (512, 512), 28: (512, 512)}


def _fresh(arch: str, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(arch, num_classes)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("arch", ["vgg16", "inceptionv3"])
def test_strict_load_of_authors_format(tmp_path, arch):
    source = _fresh(arch, 200, seed=1)
    path = tmp_path / "authors.pth.tar"
    state = {"module." + key: value for key, value in source.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 100, "global_counter": 20000,
                "optimizer": torch.optim.SGD(source.parameters(), lr=0.001, momentum=0.9).state_dict()}, path)

    target = _fresh(arch, 200, seed=2)
    extra = load_checkpoint(target, path)
    _assert_same_weights(source, target)
    assert extra["epoch"] == 100 and extra["global_counter"] == 20000


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    source = _fresh("inceptionv3", 10, seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state}, tmp_path / "old.pth")  # as PyTorch < 0.4.1 wrote them
    target = _fresh("inceptionv3", 10, seed=2)
    load_checkpoint(target, tmp_path / "old.pth")
    torch.testing.assert_close(target.Mixed_6e.branch_pool.bn.running_var, source.Mixed_6e.branch_pool.bn.running_var)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_bare_state_dict_with_or_without_prefix(tmp_path, prefix):
    source = _fresh("tiny", 5, seed=1)
    path = tmp_path / "bare.pth"
    torch.save({prefix + key: value for key, value in source.state_dict().items()}, path)
    target = _fresh("tiny", 5, seed=2)
    assert load_checkpoint(target, path) == {}
    _assert_same_weights(source, target)


def test_save_checkpoint_writes_the_authors_format(tmp_path):
    model = _fresh("tiny", 5, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    path = tmp_path / "run" / "checkpoint.pth"
    save_checkpoint(path, model, optimizer, epoch=3, global_counter=42)

    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "epoch", "global_counter", "optimizer"}
    assert all(key.startswith("module.") for key in raw["state_dict"])
    assert "module.cls.2.weight" in raw["state_dict"]
    assert (raw["epoch"], raw["global_counter"]) == (3, 42)
    assert not list(path.parent.glob("*.tmp"))
    target = _fresh("tiny", 5, seed=2)
    load_checkpoint(target, path)
    _assert_same_weights(model, target)


def _torchvision_vgg16(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for index, (cin, cout) in TORCHVISION_VGG16_CONVS.items():
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(cout, generator=generator)
    for index in (0, 3, 6):  # ImageNet classifier, ignored; small stand-ins for the real 4096-wide layers
        state[f"classifier.{index}.weight"] = torch.randn(8, 8, generator=generator)
        state[f"classifier.{index}.bias"] = torch.randn(8, generator=generator)
    return state


def test_torchvision_vgg16_maps_onto_the_backbone(tmp_path, caplog):
    weights = _torchvision_vgg16(seed=3)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(weights, path)
    model = _fresh("vgg16", 200, seed=0)
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("cls.", "conv5_add."))}

    with caplog.at_level(logging.INFO, logger="spa_export.checkpoints"):
        loaded = load_pretrained_vgg(model, path)

    state = model.state_dict()
    for index, target in [(0, "conv1_2.0"), (7, "conv1_2.7"), (10, "conv3.0"), (14, "conv3.4"), (17, "conv4.0"),
                          (21, "conv4.4"), (24, "conv5.0"), (28, "conv5.4")]:
        assert torch.equal(state[f"{target}.weight"], weights[f"features.{index}.weight"]), target
        assert torch.equal(state[f"{target}.bias"], weights[f"features.{index}.bias"]), target
    assert len(loaded) == 26
    for key, value in head_before.items():
        assert torch.equal(state[key], value), key  # the new head keeps its fresh initialisation
    message = caplog.text
    assert "loaded 26 backbone tensors" in message and "cls" in message and "classifier" in message


def test_torchvision_weights_are_refused_as_an_spa_checkpoint(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(_torchvision_vgg16(seed=0), path)
    with pytest.raises(CheckpointError, match="--pretrained-vgg"):
        load_checkpoint(_fresh("vgg16", 200, seed=0), path)


def test_pretrained_vgg_rejects_other_weights(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(_fresh("tiny", 3, seed=0).state_dict(), path)
    with pytest.raises(CheckpointError, match="not torchvision VGG16"):
        load_pretrained_vgg(_fresh("vgg16", 200, seed=0), path)
    bn_like = _torchvision_vgg16(seed=0)
    bn_like["features.1.running_mean"] = torch.zeros(64)  # vgg16_bn's layout does not fit
    torch.save(bn_like, path)
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_pretrained_vgg(_fresh("vgg16", 200, seed=0), path)


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    return path


class Opaque:
    """A pickled class that weights_only loading must refuse."""


@pytest.mark.parametrize(("zip_format", "message"), [(True, "a zip archive that is truncated or damaged"),
                                                     (False, "truncated: the file ends before its data does")])
def test_truncated_checkpoints_say_so(tmp_path, zip_format, message):
    path = tmp_path / "full.pth"
    torch.save(_fresh("tiny", 3, seed=0).state_dict(), path, _use_new_zipfile_serialization=zip_format)
    cut = _write(tmp_path / "cut.pth", path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(_fresh("tiny", 3, seed=0), cut)


@pytest.mark.parametrize(("content", "message"), [
    (b"this is not a checkpoint\n", r"not a readable PyTorch checkpoint \(neither a zip archive nor a pickle"),
    (bytes(range(7, 256)) * 20, r"not a readable PyTorch checkpoint \(neither a zip archive nor a pickle"),
    (b"PK\x03\x04" + bytes(100), r"not a readable PyTorch checkpoint \(a zip archive that is truncated"),
    (b"", r"not a readable PyTorch checkpoint \(an empty file\)"),
    (torch.zeros(3), "expected a dict, found Tensor"),
    ({"epoch": 3, "state_dict": {}}, "no state_dict"),
    ({"state_dict": {"cls.2.weight": [1, 2]}}, "not a state_dict"),
    ({"model": Opaque()}, "not a readable PyTorch checkpoint"),
])
def test_unreadable_files_give_one_line(tmp_path, content, message):
    path = _write(tmp_path / "bad.pth", content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(_fresh("tiny", 3, seed=0), path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(_fresh("tiny", 3, seed=0), tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(_fresh("tiny", 3, seed=0), tmp_path)


def test_wrong_num_classes_is_named(tmp_path):
    path = tmp_path / "ten.pth"
    torch.save({"state_dict": _fresh("vgg16", 10, seed=0).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"checkpoint has 10 classes \(cls.4.weight\), the model was built "
                                              r"for 200"):
        load_checkpoint(_fresh("vgg16", 200, seed=0), path)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = _fresh("tiny", 3, seed=0).state_dict()
    del state["cls.0.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = _write(tmp_path / "odd.pth", state)
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\) \(cls.0.bias\), 1 unexpected key\(s\) "
                                              r"\(extra.weight\)"):
        load_checkpoint(_fresh("tiny", 3, seed=0), path)


def test_checkpoint_of_another_arch_does_not_fit(tmp_path):
    path = _write(tmp_path / "tiny.pth", _fresh("tiny", 200, seed=0).state_dict())
    with pytest.raises(CheckpointError, match="does not fit VGG16SPA: 30 missing key"):
        load_checkpoint(_fresh("vgg16", 200, seed=0), path)


def test_other_shape_mismatch_is_named(tmp_path):
    state = _fresh("tiny", 3, seed=0).state_dict()
    state["block_b.0.weight"] = torch.zeros(128, 96, 1, 1)
    path = _write(tmp_path / "shape.pth", state)
    with pytest.raises(CheckpointError, match=r"block_b.0.weight has shape \(128, 96, 1, 1\), the model expects "
                                              r"\(128, 96, 3, 3\)"):
        load_checkpoint(_fresh("tiny", 3, seed=0), path)
