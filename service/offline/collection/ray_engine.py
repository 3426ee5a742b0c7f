"""`--engine ray`: the same worker on Ray Data, one Localizer per actor of an actor pool.

The driver lists the inputs and skips what is done (as the local engine does); Ray Data spreads
the paths over the actors, each reads, decodes and localizes its batches and writes its heatmaps
(to the output folder: shared storage on a multi-node cluster); the rows of each batch, a few
hundred bytes per image, stream back to the driver, which writes them as parts like the local
engine does, so both give the same files and the same resume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import Settings
from spa_service.threads import limit_blas_threads

from .worker import BatchWorker, HeatmapOutput

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start a local cluster for this run
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    num_cpus: int | None = None  # a local cluster's CPUs (default: all)
    object_store_mb: int | None = None  # a local cluster's object store (default: Ray's)


class LocalizeActor:
    """One per Ray actor: loads the model once, then localizes each batch Ray Data hands it."""

    def __init__(
        self,
        model_dir: Path,
        options: LocalizeOptions,
        out: str,
        heatmaps: HeatmapOutput,
        threads: int,
        use_gpu: bool,
    ) -> None:
    
        limit_blas_threads()
        # The actor's CPUs are its onnxruntime threads: more would fight the other actors on the node.
        settings = Settings(model_dir=model_dir, intra_op_threads=threads, providers="cuda" if use_gpu else "cpu")
        self.worker = BatchWorker(
            Localizer.from_settings(settings), options, settings.max_image_pixels, out, heatmaps
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.worker(batch.column("path").to_pylist())


def run_ray(
    paths: Sequence[str],
    *,
    model_dir: Path,
    options: LocalizeOptions,
    out: str,
    heatmaps: HeatmapOutput,
    batch_size: int,
    config: RayConfig,
) -> Iterator[pa.Table]:
    """One table of rows per batch, in the order the actors finish them."""
    import ray
    import ray.data

    started = not ray.is_initialized()
    if started:
        local = {} if config.address else {
            "num_cpus": config.num_cpus,
            "object_store_memory": config.object_store_mb * 1024**2 if config.object_store_mb else None,
        }
        ray.init(address=config.address, include_dashboard=False, **local)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False  # spa-batch shows its own
        dataset = ray.data.from_items([{"path": p} for p in paths]).map_batches(
            LocalizeActor,
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=ray.data.ActorPoolStrategy(size=config.actors),
            num_cpus=config.cpus_per_actor,
            num_gpus=config.gpus_per_actor,
            fn_constructor_kwargs={
                "model_dir": model_dir,
                "options": options,
                "out": out,
                "heatmaps": heatmaps,
                "threads": max(1, int(config.cpus_per_actor)),
                "use_gpu": config.gpus_per_actor > 0,
            },
        )
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
    finally:
        if started:
            ray.shutdown()
