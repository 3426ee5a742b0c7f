"""The onnxruntime session that runs the backbone: providers, threads, one batched call."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from .arrays import cupy_available
from .card import ModelCard
from .errors import ModelLoadError

log = logging.getLogger(__name__)

ProviderChoice = Literal["auto", "cpu", "cuda"]
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


@dataclass(frozen=True)
class BackboneOutputs:
    """What the backbone returns for a batch: arrays on the host (numpy) or the GPU (cupy)."""

    class_map: Any  # (N, C, h, w)
    feat_a: Any  # (N, C_a, h, w)
    feat_b: Any  # (N, C_b, h, w)


def available_cores() -> int:
    """Cores this process may use: the affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose_providers(choice: ProviderChoice) -> list[str]:
    """Execution providers in priority order for a setting of auto, cpu or cuda."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return [_CPU]
    if choice == "cuda":
        if _CUDA not in available:
            raise ModelLoadError(
                f"providers=cuda but onnxruntime offers only {available}; install onnxruntime-gpu with CUDA"
            )
        _preload_cuda_libraries()
        return [_CUDA, _CPU]
    if _CUDA in available:
        _preload_cuda_libraries()
        return [_CUDA, _CPU]
    log.info("onnxruntime has no CUDA provider; running on CPU", extra={"available_providers": available})
    return [_CPU]


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from NVIDIA's pip packages when they are installed (the GPU image's way)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        preload()


def _cupy_view(value: ort.OrtValue) -> Any:
    """A cupy array over a float32 OrtValue in GPU memory, without a copy; it keeps `value` alive."""
    import cupy

    shape = tuple(value.shape())
    memory = cupy.cuda.UnownedMemory(value.data_ptr(), int(np.prod(shape)) * 4, owner=value)
    return cupy.ndarray(shape, dtype=cupy.float32, memptr=cupy.cuda.MemoryPointer(memory, 0))


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One model call at a time: a single stream of batched work wants all cores on each operator.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return options


class Engine:
    """Runs `model.onnx` on batches of preprocessed images."""

    def __init__(
        self,
        onnx_path: Path,
        card: ModelCard,
        *,
        providers: ProviderChoice = "auto",
        intra_op_threads: int = 0,
    ) -> None:
        self.card = card
        threads = intra_op_threads or available_cores()
        wanted = choose_providers(providers)
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), sess_options=session_options(threads), providers=wanted
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{onnx_path}: onnxruntime cannot load it ({exc})") from None
        self.providers = self.session.get_providers()
        if _CUDA in wanted and _CUDA not in self.providers:
            log.warning("CUDA provider could not start (no visible GPU?); running on CPU")
        self._check_io(onnx_path)
        self._output_names = [card.io.class_map, card.io.feat_a, card.io.feat_b]
        # With cupy, outputs stay on the GPU (IOBinding) and SCG runs there on cupy arrays.
        self.outputs_on_gpu = self.on_gpu and cupy_available()
        log.info(
            "engine ready",
            extra={
                "onnx": str(onnx_path),
                "providers": self.providers,
                "intra_op_threads": threads,
                "outputs_on_gpu": self.outputs_on_gpu,
            },
        )

    @property
    def on_gpu(self) -> bool:
        return self.providers[0] == _CUDA

    def _check_io(self, onnx_path: Path) -> None:
        io = self.card.io
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        if io.image not in inputs:
            raise ModelLoadError(f"{onnx_path}: no input named {io.image!r} (has {sorted(inputs)})")
        missing = [n for n in (io.class_map, io.feat_a, io.feat_b) if n not in outputs]
        if missing:
            raise ModelLoadError(f"{onnx_path}: outputs {missing} missing (has {sorted(outputs)})")
        classes = outputs[io.class_map].shape[1]
        if isinstance(classes, int) and classes != self.card.num_classes:
            raise ModelLoadError(
                f"{onnx_path}: class map has {classes} classes but the card says {self.card.num_classes}"
            )

    def run(self, batch: np.ndarray) -> BackboneOutputs:
        """(N, 3, H, W) float32 -> class map and the two SCG feature blocks (cupy when on the GPU)."""
        if self.outputs_on_gpu:
            return self._run_bound(batch)
        class_map, feat_a, feat_b = self.session.run(self._output_names, {self.card.io.image: batch})
        return BackboneOutputs(class_map=class_map, feat_a=feat_a, feat_b=feat_b)

    def _run_bound(self, batch: np.ndarray) -> BackboneOutputs:
        device_id = int(self.session.get_provider_options()[_CUDA].get("device_id", 0))
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.card.io.image, batch)
        for name in self._output_names:
            binding.bind_output(name, "cuda", device_id)
        self.session.run_with_iobinding(binding)  # synchronises the outputs before returning
        class_map, feat_a, feat_b = (_cupy_view(v) for v in binding.get_outputs())
        return BackboneOutputs(class_map=class_map, feat_a=feat_a, feat_b=feat_b)
