"""Every `SPA_*` environment variable, in one place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import spa_models
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

BUNDLED_MODELS = Path(spa_models.__file__).resolve().parent
BUNDLED_MODEL_DIR = BUNDLED_MODELS / "demo"  # the synthetic demo model
# The real-photo model: the default of every tool (spa-serve serves it first, spa-eval and spa-batch use it).
BUNDLED_PHOTO_MODEL_DIR = BUNDLED_MODELS / "imagenet-lite0"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPA_", extra="ignore")

    model_dir: Path = Field(
        BUNDLED_PHOTO_MODEL_DIR, description="Directory with model.onnx and model.json: the one model of spa-eval and "
        "spa-batch, and of spa-serve when SPA_MODEL_DIRS is unset"
    )
    model_dirs: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Model directories spa-serve serves, the first the default (comma-separated); unset: "
        "SPA_MODEL_DIR if set, else both bundled models, the real-photo one first",
    )
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="onnxruntime execution provider: auto = CUDA when available, else CPU"
    )
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads; 0 = the cores this process may use")
    ort_spinning: Literal["always", "within-calls", "never"] = Field(
        "never", description="When onnxruntime's threads busy-wait for work instead of sleeping: always (its "
        "default: a lone request ~3 ms sooner), within-calls (not between calls), never (~16 % less CPU per image, "
        "more throughput under load: docs/performance.md)"
    )
    # The CUDA provider's options (docs/gpu.md says why each default).
    cuda_device_id: int = Field(0, ge=0, description="GPU the CUDA provider runs on")
    cudnn_conv_algo_search: Literal["exhaustive", "heuristic", "default"] = Field(
        "exhaustive", description="cuDNN convolution algorithm choice, made once per batch size"
    )
    use_tf32: bool = Field(False, description="Allow TF32 matmuls/convolutions on the GPU (faster, not fp32-exact)")
    gpu_mem_limit_mb: int = Field(0, ge=0, description="Cap on the CUDA provider's memory arena, MB; 0 = no cap")
    gpu_arena_extend_strategy: Literal["same_as_requested", "next_power_of_two"] = Field(
        "same_as_requested", description="How the CUDA memory arena grows"
    )
    scg_mode: Literal["reference", "paper"] = Field("reference", description="SCG equations: authors' code or paper")

    max_body_bytes: int = Field(20_000_000, gt=0, description="Largest request body accepted (413 above)")
    body_timeout_s: float = Field(30.0, gt=0.0, description="Longest wait for the next piece of a request body (408)")
    body_deadline_s: float = Field(
        120.0, gt=0.0, description="Longest time a request body may take to arrive in full (408)"
    )
    max_image_pixels: int = Field(40_000_000, gt=0, description="Largest image (width x height) decoded")
    max_image_side: int = Field(
        32_768, gt=0, description="Longest side of an image decoded, pixels (413 above, before decoding)"
    )
    max_image_memory_mb: float = Field(
        400.0, gt=0.0,
        description="Most memory one image may need to decode, MB, estimated from its header (413 above; see README)",
    )
    max_batch_images: int = Field(16, ge=1, description="Most images in one /v1/localize/batch request")
    jpeg_draft: bool = Field(
        False, description="Decode a JPEG several times the model's input at a reduced DCT scale (1/2 to 1/8), "
        "then resize: big photos at a fraction of the cost, slightly different pixels (docs/performance.md)"
    )
    heatmap_max_side: int = Field(
        1024, ge=16, description="Long side of returned heatmap PNGs, at most (the maps hold far less detail)"
    )
    heatmap_cell_px: int = Field(
        32, ge=0, description="Pixels per map cell along a heatmap PNG's long side, at most (0: none): a 7 x 7 "
        "map's PNG is then 224 px long, a few grey levels from the full-size one when stretched (docs/performance.md)"
    )

    max_batch_size: int = Field(8, ge=1, description="Most images gathered into one backbone call")
    max_queue_delay_ms: float = Field(2.0, ge=0.0, description="How long the batcher waits to fill a batch")
    max_queue_size: int = Field(64, ge=1, description="Images waiting for the backbone before 503")
    max_request_work_mp: float = Field(
        400.0, gt=0.0, description="Most work one request may ask for, in megapixel-maps (413 above; see README)"
    )
    max_queued_work_mp: float = Field(
        1600.0, gt=0.0, description="Most work admitted at once, in megapixel-maps (503 above)"
    )

    retry_after_s: int = Field(1, ge=1, description="Retry-After seconds sent with 503 when the queue is full")
    decode_threads: int = Field(2, ge=1, description="Threads decoding images and encoding heatmaps")

    # NoDecode: the environment may hold a JSON list or a plain comma-separated list.
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed to call the API (JSON list or comma-separated)"
    )
    api_key: SecretStr | None = Field(
        None, description="If set (non-empty), /v1/* requests must send it in X-API-Key"
    )
    api_key_paths: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["/v1/"],
        description="Paths that need the API key: a prefix ending in / covers all below it, / is the demo page "
        "alone (e.g. /v1/,/metrics,/docs,/openapi.json,/samples/,/)",
    )
    root_path: str = Field("", description="Path prefix the service is mounted under behind a proxy (e.g. /spa)")
    log_level: str = Field("INFO", description="Python logging level")

    host: str = Field("127.0.0.1", description="Address spa-serve listens on (0.0.0.0 in a container)")
    port: int = Field(8000, ge=0, le=65535, description="Port spa-serve listens on")
    shutdown_timeout_s: float = Field(30.0, gt=0.0, description="How long shutdown waits for requests in flight")
    head_timeout_s: float = Field(
        10.0, gt=0.0, description="Longest time a connection may take to send a request's headers (then closed)"
    )
    keep_alive_s: float = Field(5.0, gt=0.0, description="How long an idle keep-alive connection is kept open")
    max_connections: int = Field(
        512, ge=1, description="Most concurrent connections; above it uvicorn answers a plain-text 503"
    )

    def served_model_dirs(self) -> list[Path]:
        """The directories spa-serve serves, the default model's first."""
        if self.model_dirs:
            return self.model_dirs
        if "model_dir" in self.model_fields_set:
            return [self.model_dir]
        return [d for d in (BUNDLED_PHOTO_MODEL_DIR, BUNDLED_MODEL_DIR) if d.is_dir()]

    @field_validator("cors_origins", "api_key_paths", "model_dirs", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [item.strip() for item in text.split(",") if item.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        # compose passes SPA_API_KEY="" when the variable is unset: that means no key, not an empty one.
        return None if isinstance(value, str) and not value.strip() else value
