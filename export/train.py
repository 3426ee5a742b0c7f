"""spa-train: train an SPA network on a CUB-layout data set with the authors' settings
(docs/reference.md section 6): cross-entropy on the pooled class map, plus the RAM loss from `ram_start`."""

from __future__ import annotations

import argparse
import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from spa_service.argtypes import positive_int

from .checkpoints import CheckpointError, load_checkpoint, load_pretrained_vgg, save_checkpoint
from .console import EXIT_FAILURE, EXIT_USAGE, ArgumentParser, ProgressLine, fail, select_device, \
    setup_logging
from .data import CubTrainSet, DatasetError, EpochSampler, read_cub
from .nets import ARCHS, build_model, class_scores
from .ram import ram_loss

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pth"


@dataclass(frozen=True)
class Schedule:
    """The settings that differ between the authors' CUB and ILSVRC runs."""

    epochs: int
    batch_size: int
    decay_epochs: tuple[int, ...]
    ram_th_bg: float
    ram_gap: float
    ram_start: int


SCHEDULES = {
    "cub": Schedule(epochs=100, batch_size=30, decay_epochs=(80,), ram_th_bg=0.1, ram_gap=0.2, ram_start=20),
    "ilsvrc": Schedule(epochs=20, batch_size=16, decay_epochs=(10, 15), ram_th_bg=0.4, ram_gap=0.1, ram_start=5),
}


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    arch: str
    out: Path
    num_classes: int | None = None  # None: the largest label in the data set
    epochs: int = 100
    batch_size: int = 30
    lr: float = 0.001
    head_lr_mult: float = 10.0  # the new layers (the model's head_prefixes) learn 10x faster
    momentum: float = 0.9
    weight_decay: float = 5e-4
    decay_epochs: tuple[int, ...] = (80,)
    decay_factor: float = 0.1
    ram: bool = True
    ram_alpha: float = 0.5
    ram_th_bg: float = 0.1
    ram_gap: float = 0.2
    ram_start: int = 20
    input_size: tuple[int, int] | None = None  # None: the architecture's
    resume: Path | None = None
    pretrained_vgg: Path | None = None
    max_iters: int | None = None
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    progress: bool | None = None  # None: when stderr is a terminal


def train(config: TrainConfig) -> Path:
    """Train (or resume) and return the path of the last checkpoint written.

    Raises CheckpointError or DatasetError (one-line messages) for inputs that do not fit.
    """
    torch.manual_seed(config.seed)
    device = select_device(config.device)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    images = read_cub(config.data)
    labels_used = max(image.label for image in images) + 1
    num_classes = config.num_classes or labels_used
    if labels_used > num_classes:
        raise DatasetError(f"{config.data}: image_class_labels.txt has labels up to {labels_used}, "
                           f"more than --num-classes {num_classes}")
    model = build_model(config.arch, num_classes)
    optimizer = _optimizer(model, config)
    start_epoch, counter = _restore(model, optimizer, config)
    model.to(device)
    _move_optimizer_state(optimizer, device)

    input_size = config.input_size or model.input_size
    dataset = CubTrainSet(images, input_size, config.seed)
    sampler = EpochSampler(len(dataset), config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        pin_memory=device.type == "cuda")
    per_epoch = math.ceil(len(dataset) / config.batch_size)
    skip = _batches_done_in(start_epoch, counter, per_epoch)
    log.info("training %s (%d classes, input %dx%d) on %d images from %s, %d batches of %d per epoch, on %s; "
             "epochs %d..%d; RAM %s", config.arch, num_classes, *input_size, len(dataset), config.data,
             per_epoch, config.batch_size, device, start_epoch + 1, config.epochs,
             f"from epoch {config.ram_start + 1} (alpha {config.ram_alpha}, th_bg {config.ram_th_bg}, "
             f"gap {config.ram_gap})" if config.ram else "off")

    path = config.out / CHECKPOINT_FILE
    ran = False
    for epoch in range(start_epoch, config.epochs):
        if config.max_iters is not None and counter >= config.max_iters:
            break
        ran = True
        _set_lr(optimizer, config, epoch)
        dataset.epoch = epoch
        sampler.set_epoch(epoch, skip=skip * config.batch_size)
        counter, finished = _run_epoch(model, loader, optimizer, config, epoch, counter, device)
        skip = 0
        # An epoch cut short by --max-iters is saved as still in progress: --resume finishes it.
        save_checkpoint(path, model, optimizer, epoch + 1 if finished else epoch, counter)
    if not ran:  # resumed a finished run: --out still gets its checkpoint
        save_checkpoint(path, model, optimizer, start_epoch, counter)
    log.info("checkpoint: %s (%d iterations)", path, counter)
    return path


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with two groups, backbone then the new head; `_set_lr` gives each its lr for the epoch."""
    head, backbone = [], []
    for name, param in model.named_parameters():
        (head if name.startswith(tuple(p + "." for p in model.head_prefixes)) else backbone).append(param)
    optimizer = torch.optim.SGD([{"params": backbone}, {"params": head}], lr=config.lr)
    _set_hyperparameters(optimizer, config)
    return optimizer


def _set_hyperparameters(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    """The flags' values, also over those a resumed optimizer state brings back."""
    for group, lr_mult in zip(optimizer.param_groups, (1.0, config.head_lr_mult), strict=True):
        group.update(lr_mult=lr_mult, momentum=config.momentum, weight_decay=config.weight_decay)


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer, config: TrainConfig) -> tuple[int, int]:
    """Load --resume (model, optimizer, epoch, counter) or --pretrained-vgg; returns (start epoch, counter)."""
    if config.resume is None:
        if config.pretrained_vgg is not None:
            load_pretrained_vgg(model, config.pretrained_vgg)
        return 0, 0
    extra = load_checkpoint(model, config.resume)
    if config.pretrained_vgg is not None:
        log.info("resuming from %s: --pretrained-vgg not needed, not loaded", config.resume)
    try:
        optimizer.load_state_dict(extra["optimizer"])
    except (KeyError, ValueError, TypeError) as exc:
        # Weights are what matter; momentum rebuilds within a few iterations.
        log.warning("%s: optimizer state not restored (%s); momentum starts from zero", config.resume, exc)
    _set_hyperparameters(optimizer, config)
    epoch, counter = extra.get("epoch", 0), extra.get("global_counter", 0)
    if not isinstance(epoch, int) or not isinstance(counter, int) or epoch < 0 or counter < 0:
        raise CheckpointError(f"{config.resume}: epoch / global_counter are not non-negative integers")
    log.info("resuming from %s: epoch %d, iteration %d", config.resume, epoch, counter)
    return epoch, counter


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(device)


def _batches_done_in(epoch: int, counter: int, per_epoch: int) -> int:
    """Batches of `epoch` a resumed checkpoint already trained on (0 at an epoch boundary)."""
    done = counter - epoch * per_epoch
    if 0 <= done < per_epoch:
        return done
    # Another batch size, or another tool's counting: the epoch's position is unknown, so start it afresh.
    log.warning("iteration %d does not fall inside epoch %d (%d batches each): restarting that epoch",
                counter, epoch + 1, per_epoch)
    return 0


def _set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int) -> None:
    factor = config.decay_factor ** sum(epoch >= e for e in config.decay_epochs)
    for group in optimizer.param_groups:
        group["lr"] = config.lr * group["lr_mult"] * factor


def _run_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, config: TrainConfig,
               epoch: int, counter: int, device: torch.device) -> tuple[int, bool]:
    """One pass over `loader`; returns (iteration counter, whether the epoch ran to its end)."""
    model.train()
    use_ram = config.ram and epoch >= config.ram_start
    totals = {"loss": 0.0, "cls": 0.0, "ram": 0.0}
    seen = correct = 0
    progress = ProgressLine(len(loader), enabled=config.progress)
    start = time.monotonic()
    finished = True
    for step, (images, labels) in enumerate(loader, 1):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        class_map, _, _ = model(images)
        scores = class_scores(class_map)
        cls_loss = F.cross_entropy(scores, labels)
        ram = ram_loss(class_map, labels, config.ram_th_bg, config.ram_gap) if use_ram else cls_loss.new_zeros(())
        loss = cls_loss + config.ram_alpha * ram
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {float(loss)} at iteration {counter + 1}: training diverged "
                                     "(try a lower --lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        counter += 1
        n = labels.shape[0]
        seen += n
        correct += int((scores.argmax(dim=1) == labels).sum())
        for key, value in (("loss", loss), ("cls", cls_loss), ("ram", ram)):
            totals[key] += value.item() * n
        progress.update(step, f"loss {totals['loss'] / seen:.3f} acc {100 * correct / seen:.1f}%")
        if config.max_iters is not None and counter >= config.max_iters:
            finished = step == len(loader)
            break
    progress.close()
    seen = max(seen, 1)
    log.info("epoch %d/%d lr %.2g: loss %.4f (cls %.4f, ram %.4f%s), train acc %.2f%% on %d images, %.0fs%s",
             epoch + 1, config.epochs, optimizer.param_groups[0]["lr"], totals["loss"] / seen, totals["cls"] / seen,
             totals["ram"] / seen, "" if use_ram else " off", 100 * correct / seen, seen, time.monotonic() - start,
             "" if finished else f" (stopped at --max-iters {config.max_iters})")
    return counter, finished


def _parser() -> ArgumentParser:
    p = ArgumentParser(prog="spa-train", description=__doc__,
                       epilog="Unset options take the --preset's value (the authors' settings).")
    p.add_argument("--data", type=Path, required=True, help="data set root in CUB-200-2011 layout")
    p.add_argument("--arch", required=True, choices=sorted(ARCHS))
    p.add_argument("--out", type=Path, required=True, help=f"directory for {CHECKPOINT_FILE}")
    p.add_argument("--num-classes", type=positive_int, help="default: the largest label in the data set")
    p.add_argument("--preset", choices=sorted(SCHEDULES), default="cub")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--head-lr-mult", type=float, default=TrainConfig.head_lr_mult,
                   help="learning-rate multiplier of the new head layers")
    p.add_argument("--momentum", type=float, default=TrainConfig.momentum)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--decay-epochs", type=int, nargs="*", help="epochs at which the lr is multiplied by the factor")
    p.add_argument("--decay-factor", type=float, default=TrainConfig.decay_factor)
    p.add_argument("--no-ram", dest="ram", action="store_false", help="train plain CAM (no RAM loss)")
    p.add_argument("--ram-alpha", type=float, default=TrainConfig.ram_alpha)
    p.add_argument("--ram-th-bg", type=float)
    p.add_argument("--ram-gap", type=float)
    p.add_argument("--ram-start", type=int, help="first epoch (0-based) with the RAM loss")
    p.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"))
    p.add_argument("--resume", type=Path, help=f"continue from a {CHECKPOINT_FILE} written by spa-train")
    p.add_argument("--pretrained-vgg", type=Path, help="torchvision VGG16 ImageNet weights (--arch vgg16)")
    p.add_argument("--max-iters", type=positive_int, help="stop after this many iterations in all")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress line on stderr (default: when it is a terminal)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Flags win; the ones left unset take the preset's value."""
    schedule = SCHEDULES[args.preset]
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    for f in fields(Schedule):
        if values.get(f.name) is None:
            values[f.name] = getattr(schedule, f.name)
    values["decay_epochs"] = tuple(values["decay_epochs"])
    if values["input_size"] is not None:
        values["input_size"] = tuple(values["input_size"])
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.pretrained_vgg is not None and args.arch != "vgg16":
        parser.error("--pretrained-vgg needs --arch vgg16")
    if args.workers < 0:
        parser.error("--workers must be 0 or more")
    try:
        select_device(args.device)
    except ValueError as exc:
        parser.error(str(exc))
    config = config_from_args(args)
    setup_logging()
    try:
        train(config)
    except (CheckpointError, DatasetError) as exc:
        fail(f"spa-train: {_last_line(exc)}", EXIT_USAGE)
    except FloatingPointError as exc:
        fail(f"spa-train: {exc}", EXIT_FAILURE)
    except OSError as exc:
        fail(f"spa-train: {exc}", EXIT_FAILURE)
    return 0


def _last_line(exc: Exception) -> str:
    """An error raised in a DataLoader worker arrives with the worker's traceback in its message; the
    original message is its last line."""
    line = str(exc).strip().splitlines()[-1]
    return line.split(f"{type(exc).__name__}: ", 1)[-1]


if __name__ == "__main__":
    raise SystemExit(main())
