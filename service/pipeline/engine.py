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

from ..arrays import cupy_available
from ..card import ModelCard
from ..errors import ModelLoadError
from ..settings import Settings

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


def available_cores(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Cores this process may use: the affinity mask, capped by a cgroup v2 CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = cpu_max.read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA provider's options, chosen here rather than left to onnxruntime's defaults (docs/gpu.md).

    TF32 is off so GPU answers match the CPU's (TF32 rounds matmul/conv inputs to 10 mantissa bits,
    enough to move a box edge near the threshold); exhaustive cuDNN search picks the fastest
    convolution per input shape, once, which is why warm-up runs every batch size
    (`warmup_batch_sizes`); the arena grows by what a batch needs, not to the next power of two.
    """

    device_id: int = 0
    conv_algo_search: Literal["exhaustive", "heuristic", "default"] = "exhaustive"
    use_tf32: bool = False
    mem_limit_mb: int = 0  # 0: no cap beyond the GPU's memory
    arena_extend_strategy: Literal["same_as_requested", "next_power_of_two"] = "same_as_requested"

    @classmethod
    def from_settings(cls, settings: Settings) -> CudaOptions:
        return cls(
            device_id=settings.cuda_device_id,
            conv_algo_search=settings.cudnn_conv_algo_search,
            use_tf32=settings.use_tf32,
            mem_limit_mb=settings.gpu_mem_limit_mb,
            arena_extend_strategy=settings.gpu_arena_extend_strategy,
        )

    def provider_options(self) -> dict[str, str]:
        """The options as onnxruntime's CUDA provider reads them (all strings)."""
        options = {
            "device_id": str(self.device_id),
            "cudnn_conv_algo_search": self.conv_algo_search.upper(),
            "use_tf32": "1" if self.use_tf32 else "0",
            "arena_extend_strategy": _ARENA[self.arena_extend_strategy],
        }
        if self.mem_limit_mb:
            options["gpu_mem_limit"] = str(self.mem_limit_mb * 1024 * 1024)
        return options


_ARENA = {"next_power_of_two": "kNextPowerOfTwo", "same_as_requested": "kSameAsRequested"}
Provider = tuple[str, dict[str, str]]


def execution_providers(choice: ProviderChoice, available: list[str], cuda: CudaOptions) -> list[Provider]:
    """Providers with their options, in priority order, for a setting of auto, cpu or cuda.

    CPU is always last, so a CUDA provider that fails to start leaves a working session (Engine
    logs that as a warning). Raises ModelLoadError for `cuda` when onnxruntime has no CUDA provider.
    """
    cpu = (_CPU, {})
    if choice == "cpu":
        return [cpu]
    if _CUDA not in available:
        if choice == "cuda":
            raise ModelLoadError(
                f"providers=cuda but onnxruntime offers only {available}; install onnxruntime-gpu with CUDA"
            )
        return [cpu]
    return [(_CUDA, cuda.provider_options()), cpu]


def choose_providers(choice: ProviderChoice, cuda: CudaOptions = CudaOptions()) -> list[Provider]:
    """`execution_providers` for this install; loads NVIDIA's pip-packaged CUDA libraries when CUDA is chosen."""
    available = ort.get_available_providers()
    providers = execution_providers(choice, available, cuda)
    if providers[0][0] == _CUDA:
        _preload_cuda_libraries()
    elif choice == "auto":
        log.info("onnxruntime has no CUDA provider; running on CPU", extra={"available_providers": available})
    return providers


def warmup_batch_sizes(max_batch_size: int, on_gpu: bool) -> list[int]:
    """Batch sizes a warm-up should run, largest first.

    On CUDA every size the batcher can form: each new input shape costs a cuDNN algorithm search
    and arena growth on its first call; largest first so the arena reaches its peak in one step
    and smaller batches reuse it. On CPU one image: onnxruntime's CPU kernels do no per-shape search.
    """
    return list(range(max_batch_size, 0, -1)) if on_gpu else [1]


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


Spinning = Literal["always", "within-calls", "never"]
_SPIN_CONFIG: dict[str, dict[str, str]] = {
    "always": {"session.intra_op.allow_spinning": "1"},  # onnxruntime's default
    "within-calls": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
    "never": {"session.intra_op.allow_spinning": "0"},
}


def session_options(threads: int, *, spinning: Spinning = "never") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One model call at a time: a single stream of batched work wants all cores on each operator.
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # onnxruntime's worker threads busy-wait for work by default, during a call and after it. In a
    # server the cores they hold are the ones decoding, post-processing and answering HTTP need
    # (SPA_ORT_SPINNING; the trade measured in docs/performance.md).
    for key, value in _SPIN_CONFIG[spinning].items():
        options.add_session_config_entry(key, value)
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
        spinning: Spinning = "never",
        cuda: CudaOptions = CudaOptions(),
    ) -> None:
        self.card = card
        threads = intra_op_threads or available_cores()
        wanted = choose_providers(providers, cuda)
        try:
            self.session = ort.InferenceSession(
                str(onnx_path),
                sess_options=session_options(threads, spinning=spinning),
                providers=[name for name, _ in wanted],
                provider_options=[options for _, options in wanted],
            )
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelLoadError(f"{onnx_path}: onnxruntime cannot load it ({exc})") from None
        self.providers = self.session.get_providers()
        # onnxruntime drops a CUDA provider that cannot start and carries on with the CPU: say so loudly.
        self.cuda_fallback = wanted[0][0] == _CUDA and _CUDA not in self.providers
        if self.cuda_fallback and providers == "cuda":
            raise ModelLoadError(
                f"providers=cuda but the CUDA provider could not start for {onnx_path} (no visible GPU, or a "
                "CUDA/cuDNN library missing; the onnxruntime log above says which)"
            )
        if self.cuda_fallback:
            log.warning(
                "CUDA provider could not start (no visible GPU, or a CUDA/cuDNN library missing); running on CPU",
                extra={"requested_providers": [name for name, _ in wanted], "providers": self.providers},
            )
        self._check_io(onnx_path)
        self._output_names = [card.io.class_map, card.io.feat_a, card.io.feat_b]
        # With cupy, outputs stay on the GPU (IOBinding) and SCG runs there on cupy arrays.
        self.outputs_on_gpu = self.on_gpu and cupy_available()
        log.info(
            "engine ready",
            extra={
                "onnx": str(onnx_path),
                "providers": self.providers,
                "provider_options": self.session.get_provider_options().get(self.provider, {}),
                "intra_op_threads": threads,
                "spinning": spinning,
                "outputs_on_gpu": self.outputs_on_gpu,
            },
        )

    @classmethod
    def from_settings(cls, onnx_path: Path, card: ModelCard, settings: Settings) -> Engine:
        return cls(
            onnx_path,
            card,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            spinning=settings.ort_spinning,
            cuda=CudaOptions.from_settings(settings),
        )

    @property
    def provider(self) -> str:
        """The onnxruntime provider that runs the model: CUDAExecutionProvider or CPUExecutionProvider."""
        return self.providers[0]

    @property
    def on_gpu(self) -> bool:
        return self.provider == _CUDA

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
