"""Checkpoints in the authors' formats (docs/reference.md sections 1-2) and torchvision's VGG16 ImageNet weights.

Every failure is a CheckpointError whose message is one line naming the file and what does not fit.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
PICKLE_PROTO = b"\x80"  # the legacy format: pickles, the first one opening with the PROTO opcode
PREFIX = "module."  # the authors trained under nn.DataParallel, whose state_dict prefixes every key

# torchvision VGG16 `features.{i}`: (first index, end index, our Sequential) per block.
_VGG_FEATURE_BLOCKS = ((0, 10, "conv1_2"), (10, 17, "conv3"), (17, 24, "conv4"), (24, 30, "conv5"))
# Layers the ImageNet VGG16 weights have no counterpart for; conv5_add is never used in forward.
_VGG_FRESH_PREFIXES = ("cls.", "conv5_add.")


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable, or does not fit the model; str() is one line."""


def load_checkpoint(model: nn.Module, path: Path | str) -> dict[str, Any]:
    """Load a checkpoint strictly into `model`: the authors' dict, or a bare state_dict with or without `module.`.

    Returns the checkpoint's other entries (`epoch`, `global_counter`, `optimizer`; empty for a bare state_dict).
    """
    path = Path(path)
    raw = _read(path)
    state, extra = _split(raw, path)
    if _is_torchvision_vgg(state) and "features.0.weight" not in model.state_dict():  # VGG16-CAM has features.N
        raise CheckpointError(f"{path}: torchvision VGG16 ImageNet weights, not an SPA checkpoint "
                              "(use them with spa-train --pretrained-vgg)")
    _check_fits(model, state, path)
    model.load_state_dict(state, strict=True)
    return extra


def load_pretrained_vgg(model: nn.Module, path: Path | str) -> list[str]:
    """Load torchvision VGG16 ImageNet weights (`features.N` keys) into VGG16-SPA's conv1_2..conv5.

    `cls` (and the unused `conv5_add`) keep their fresh initialisation; torchvision's `classifier.*` is ignored.
    Returns the model keys that were loaded, and logs what was and was not.
    """
    path = Path(path)
    state, _ = _split(_read(path), path)
    if not _is_torchvision_vgg(state):
        raise CheckpointError(f"{path}: not torchvision VGG16 weights (no 'features.N' keys)")
    mapped = {_vgg_feature_key(key, path): value for key, value in state.items() if key.startswith("features.")}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(_VGG_FRESH_PREFIXES)}
    _check_fits_keys(expected, mapped, path, what="VGG16 backbone")
    _check_shapes(model, expected, mapped, path)
    missing, _ = model.load_state_dict(mapped, strict=False)
    ignored = sorted({k.split(".")[0] for k in state if not k.startswith("features.")})
    log.info("%s: loaded %d backbone tensors into conv1_2..conv5; freshly initialised: %s%s", path, len(mapped),
             ", ".join(sorted({k.split(".")[0] for k in missing})),
             f"; ignored: {', '.join(ignored)}" if ignored else "")
    return sorted(mapped)


def save_checkpoint(path: Path | str, model: nn.Module, optimizer: torch.optim.Optimizer,
                    epoch: int, global_counter: int) -> None:
    """Write the authors' format: keys prefixed `module.`, plus epoch, global_counter and the optimizer state.

    Written to a temporary file first, so an interrupted save never leaves a truncated checkpoint behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {PREFIX + key: value.detach().cpu() for key, value in model.state_dict().items()}
    checkpoint = {"state_dict": state, "epoch": epoch, "global_counter": global_counter,
                  "optimizer": optimizer.state_dict()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def _read(path: Path) -> Any:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    _check_container(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except Exception as exc:  # arbitrary bytes make the unpickler fail in arbitrary ways (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_reason(exc)})") from None


def _check_container(path: Path) -> None:
    """Refuse, with what the file is not, anything that is neither of torch.save's two formats, before the
    unpickler reports it as some arbitrary error (a text file reads as `KeyError: 101`)."""
    try:
        with path.open("rb") as f:
            head = f.read(len(ZIP_MAGIC))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        problem = "an empty file"
    elif head.startswith(ZIP_MAGIC):
        problem = None if zipfile.is_zipfile(path) else "a zip archive that is truncated or damaged"
    elif head.startswith(PICKLE_PROTO):
        problem = None
    else:
        problem = "neither a zip archive nor a pickle, as torch.save writes: not a checkpoint, or its start is missing"
    if problem:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({problem})")


def _reason(exc: Exception) -> str:
    if isinstance(exc, EOFError) or "unexpected EOF" in str(exc):  # in the pickle, or in the tensor data after it
        return "truncated: the file ends before its data does"
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "Weights only load failed" in text:
        return "it holds Python objects besides tensors and plain data, refused by weights_only loading"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exc).__name__}: {first[:120]}" if first else type(exc).__name__


def _split(raw: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state_dict without the `module.` prefix, the other entries of the checkpoint dict)."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(raw).__name__}")
    if "state_dict" in raw:
        state, extra = raw["state_dict"], {k: v for k, v in raw.items() if k != "state_dict"}
    else:
        state, extra = raw, {}
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path}: no state_dict in it")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: not a state_dict (entries that are not named tensors)")
    if all(k.startswith(PREFIX) for k in state):
        state = {k[len(PREFIX):]: v for k, v in state.items()}
    return state, extra


def _is_torchvision_vgg(state: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("features.") for k in state) and not any(k.startswith("conv1_2.") for k in state)


def _vgg_feature_key(key: str, path: Path) -> str:
    _, index, param = key.split(".", 2)
    if not index.isdigit():
        raise CheckpointError(f"{path}: {key} is not a torchvision VGG16 key")
    i = int(index)
    for start, end, block in _VGG_FEATURE_BLOCKS:
        if start <= i < end:
            return f"{block}.{i - start}.{param}"
    raise CheckpointError(f"{path}: {key} lies outside VGG16's 30 feature layers")


def _check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    _check_fits_keys(expected, state, path, what=type(model).__name__)
    _check_shapes(model, expected, state, path)


def _check_fits_keys(expected: dict[str, Any], state: dict[str, Any], path: Path, *, what: str) -> None:
    # Checkpoints from PyTorch < 0.4.1 have no BatchNorm num_batches_tracked; load_state_dict fills it in.
    missing = [k for k in expected if k not in state and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({_some(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({_some(unexpected)})")
    raise CheckpointError(f"{path}: does not fit {what}: {', '.join(parts)}")


def _check_shapes(model: nn.Module, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                  path: Path) -> None:
    classifier = getattr(model, "classifier", None)
    for key, value in expected.items():
        got = state.get(key, value)
        if got.shape == value.shape:
            continue
        if classifier and key.startswith(classifier + ".") and got.shape[1:] == value.shape[1:]:
            raise CheckpointError(f"{path}: checkpoint has {got.shape[0]} classes ({key}), "
                                  f"the model was built for {value.shape[0]} (num_classes)")
        raise CheckpointError(f"{path}: {key} has shape {tuple(got.shape)}, the model expects {tuple(value.shape)}")


def _some(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... {len(keys) - limit} more" if len(keys) > limit else "")
