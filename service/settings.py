"""Every `SPA_*` environment variable, in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "models" / "demo"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPA_", extra="ignore")

    model_dir: Path = Field(BUNDLED_MODEL_DIR, description="Directory with model.onnx and model.json")
    providers: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="onnxruntime execution provider: auto = CUDA when available, else CPU"
    )
    intra_op_threads: int = Field(0, ge=0, description="onnxruntime threads; 0 = the cores this process may use")
    scg_mode: Literal["reference", "paper"] = Field("reference", description="SCG equations: authors' code or paper")

    max_body_bytes: int = Field(20_000_000, gt=0, description="Largest request body accepted (413 above)")
    max_image_pixels: int = Field(40_000_000, gt=0, description="Largest image (width x height) decoded")
    max_batch_images: int = Field(16, ge=1, description="Most images in one /v1/localize/batch request")
    heatmap_max_side: int = Field(2048, ge=16, description="Long side of returned heatmap PNGs, at most")

    max_batch_size: int = Field(8, ge=1, description="Most images gathered into one backbone call")
    max_queue_delay_ms: float = Field(2.0, ge=0.0, description="How long the batcher waits to fill a batch")
    max_queue_size: int = Field(64, ge=1, description="Images waiting for the backbone before 503")

    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API")
    api_key: str | None = Field(None, description="If set, requests must send it in X-API-Key")
    log_level: str = Field("INFO", description="Python logging level")
