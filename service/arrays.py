"""Array namespace: the math is written once and runs on numpy or, for GPU arrays, cupy."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

try:  # cupy is optional: present only on GPU installs
    import cupy as _cupy
except ImportError:  # pragma: no cover - depends on the install
    _cupy = None

Array = Any  # a numpy or cupy ndarray


def array_namespace(*arrays: Any) -> ModuleType:
    """numpy, or cupy when any argument is a cupy array."""
    if _cupy is not None and any(isinstance(a, _cupy.ndarray) for a in arrays):
        return _cupy
    return np


def float_dtype(xp: ModuleType, array: Array) -> Any:
    """float64 for float64 arrays (exact tests), float32 for everything else (the service)."""
    return xp.float64 if array.dtype == xp.float64 else xp.float32


def to_numpy(array: Any) -> np.ndarray:
    """A host copy of a numpy or cupy array (no copy for numpy)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def cupy_available() -> bool:
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any CUDA failure means no usable GPU
        return False
