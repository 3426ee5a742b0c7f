"""spa-train: settings, a short run with RAM on, resume, determinism, and one-line errors."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch
from spa_export import to_onnx, train
from spa_export.checkpoints import load_checkpoint
from spa_export.console import ProgressLine
from spa_export.nets import build_model
from spa_service.card import load_card

# 3 classes x 4 images, one of each class in the test split: 9 training images, 3 batches of 4 per epoch.
QUICK = ["--arch", "tiny", "--batch-size", "4", "--ram-start", "0", "--seed", "0", "--input-size", "56", "56"]


@pytest.fixture(scope="module")
def cub_root(tmp_path_factory, make_cub_dataset) -> Path:
    return make_cub_dataset(tmp_path_factory.mktemp("cub"), num_classes=3, per_class=4, size=64, seed=0)


def _train(data: Path, out: Path, *extra: str) -> Path:
    assert train.main(["--data", str(data), "--out", str(out), *QUICK, *extra]) == 0
    return out / "checkpoint.pth"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def _parse(*argv: str) -> train.TrainConfig:
    args = train._parser().parse_args(["--data", "d", "--arch", "vgg16", "--out", "o", *argv])
    return train.config_from_args(args)


def test_defaults_are_the_authors_cub_settings():
    config = _parse()
    assert (config.lr, config.head_lr_mult, config.momentum, config.weight_decay) == (0.001, 10.0, 0.9, 5e-4)
    assert (config.batch_size, config.epochs, config.decay_epochs, config.decay_factor) == (30, 100, (80,), 0.1)
    assert (config.ram, config.ram_alpha, config.ram_th_bg, config.ram_gap, config.ram_start) == (
        True, 0.5, 0.1, 0.2, 20)


def test_ilsvrc_preset_and_overrides():
    config = _parse("--preset", "ilsvrc")
    assert (config.ram_th_bg, config.ram_gap, config.ram_start, config.epochs, config.batch_size,
            config.decay_epochs) == (0.4, 0.1, 5, 20, 16, (10, 15))
    config = _parse("--preset", "ilsvrc", "--ram-gap", "0.3", "--batch-size", "8", "--decay-epochs", "3",
                    "--no-ram", "--lr", "0.01", "--input-size", "96", "64")
    assert (config.ram_gap, config.batch_size, config.decay_epochs, config.ram, config.lr, config.ram_th_bg,
            config.input_size) == (0.3, 8, (3,), False, 0.01, 0.4, (96, 64))


def test_head_learns_ten_times_faster_and_lr_decays():
    model = build_model("vgg16", 5)
    config = _parse()
    optimizer = train._optimizer(model, config)
    backbone, head = optimizer.param_groups
    assert {id(p) for p in head["params"]} == {id(p) for p in model.cls.parameters()}
    assert len(backbone["params"]) == 28  # 13 VGG convs + conv5_add, weight and bias each
    train._set_lr(optimizer, config, epoch=79)
    assert (backbone["lr"], head["lr"]) == pytest.approx((0.001, 0.01))
    train._set_lr(optimizer, config, epoch=80)
    assert (backbone["lr"], head["lr"]) == pytest.approx((0.0001, 0.001))


def test_short_run_with_ram_then_export(cub_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="spa_export.train"):
        path = _train(cub_root, tmp_path / "run", "--max-iters", "3")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "epoch", "global_counter", "optimizer"}
    assert all(key.startswith("module.") for key in raw["state_dict"])
    assert (raw["epoch"], raw["global_counter"]) == (1, 3)  # 3 batches = one whole epoch
    epoch_lines = [r.message for r in caplog.records if r.message.startswith("epoch 1/")]
    assert len(epoch_lines) == 1 and "train acc" in epoch_lines[0] and "ram" in epoch_lines[0]
    assert "off" not in epoch_lines[0]  # RAM was on from epoch 0

    assert to_onnx.main(["--arch", "tiny", "--checkpoint", str(path), "--num-classes", "3", "--input-size", "56",
                         "56", "--out", str(tmp_path / "model")]) == 0
    card, _ = load_card(tmp_path / "model")
    assert card.num_classes == 3 and card.map_size == (7, 7)


def test_resume_mid_epoch_matches_an_uninterrupted_run(cub_root, tmp_path):
    straight = _train(cub_root, tmp_path / "straight", "--max-iters", "5")
    first = _train(cub_root, tmp_path / "split", "--max-iters", "2")
    assert torch.load(first, weights_only=True)["epoch"] == 0  # stopped inside epoch 0
    resumed = _train(cub_root, tmp_path / "split", "--max-iters", "5", "--resume", str(first))
    assert torch.load(resumed, weights_only=True)["global_counter"] == 5
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_workers_do_not_change_the_result(cub_root, tmp_path):
    a = _weights(_train(cub_root, tmp_path / "w0", "--max-iters", "2"))
    b = _weights(_train(cub_root, tmp_path / "w2", "--max-iters", "2", "--workers", "2"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_no_ram_trains_plain_cam(cub_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="spa_export.train"):
        _train(cub_root, tmp_path / "cam", "--max-iters", "1", "--no-ram")
    assert any("ram 0.0000 off" in r.message for r in caplog.records)


def test_pretrained_vgg_backbone(cub_root, tmp_path, caplog):
    source = build_model("vgg16", 3)
    features = {}
    for block, offset in (("conv1_2", 0), ("conv3", 10), ("conv4", 17), ("conv5", 24)):
        for key, value in getattr(source, block).state_dict().items():
            index, param = key.split(".")
            features[f"features.{int(index) + offset}.{param}"] = value
    torch.save(features, tmp_path / "vgg16.pth")
    with caplog.at_level(logging.INFO):
        assert train.main(["--data", str(cub_root), "--out", str(tmp_path / "run"), "--arch", "vgg16",
                           "--pretrained-vgg", str(tmp_path / "vgg16.pth"), "--input-size", "32", "32",
                           "--batch-size", "9", "--max-iters", "1", "--lr", "0"]) == 0
    assert "loaded 26 backbone tensors" in caplog.text
    trained = build_model("vgg16", 3)
    load_checkpoint(trained, tmp_path / "run" / "checkpoint.pth")
    torch.testing.assert_close(trained.conv4[2].weight, source.conv4[2].weight)  # lr 0: unchanged


def _train_error(capsys, argv: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return info.value.code, err


def test_resume_from_a_checkpoint_that_does_not_fit(cub_root, tmp_path, capsys):
    torch.save({"state_dict": build_model("tiny", 7).state_dict()}, tmp_path / "seven.pth")
    code, err = _train_error(capsys, ["--data", str(cub_root), "--out", str(tmp_path / "o"), *QUICK,
                                      "--resume", str(tmp_path / "seven.pth")])
    assert code == 2 and "checkpoint has 7 classes" in err


@pytest.mark.parametrize(("case", "expected"), [
    ("no_data", "no images.txt"),
    ("garbage_resume", "not a readable PyTorch checkpoint"),
    ("pretrained_tiny", "--pretrained-vgg needs --arch vgg16"),
    ("few_classes", "more than --num-classes 2"),
    ("corrupt_image", "cannot read image"),
])
def test_cli_errors_are_one_line_exit_2(cub_root, tmp_path, capsys, case, expected):
    (tmp_path / "garbage.pth").write_text("not a checkpoint")
    base = ["--out", str(tmp_path / "o"), *QUICK]
    if case == "corrupt_image":
        shutil.copytree(cub_root, tmp_path / "broken")
        first = (cub_root / "images.txt").read_text().split()[1]  # a training image
        (tmp_path / "broken" / "images" / first).write_bytes(b"not a jpeg")
    argv = {
        "no_data": ["--data", str(tmp_path / "nothing"), *base],
        "garbage_resume": ["--data", str(cub_root), "--resume", str(tmp_path / "garbage.pth"), *base],
        "pretrained_tiny": ["--data", str(cub_root), "--pretrained-vgg", str(tmp_path / "garbage.pth"), *base],
        "few_classes": ["--data", str(cub_root), "--num-classes", "2", *base],
        "corrupt_image": ["--data", str(tmp_path / "broken"), "--workers", "1", *base],
    }[case]
    code, err = _train_error(capsys, argv)
    assert code == 2 and expected in err and err.startswith("spa-train")


def test_parser_rejects_non_positive_counts(capsys):
    code, err = _train_error(capsys, ["--data", "d", "--arch", "tiny", "--out", "o", "--batch-size", "0"])
    assert code == 2 and "'0' is not a positive integer" in err


def test_progress_line_rewrites_one_line(capsys):
    progress = ProgressLine(4, enabled=True)
    progress.update(1, "loss 2.0")
    progress.update(2, "loss 1.5")
    progress.close()
    err = capsys.readouterr().err
    assert "\n" not in err and err.count("\r") == 3 and "2/4" in err and "loss 1.5" in err
    ProgressLine(4, enabled=False).update(1)
    assert capsys.readouterr().err == ""
