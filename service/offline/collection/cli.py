"""`spa-batch`: localize every image of a folder tree or a manifest into Parquet or JSONL.

Exit status: 0 when every image of the output has boxes, 1 when some could not be localized (their
rows say why, with the API's error codes), 2 for bad usage (one error line).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from pydantic import ValidationError
from spa_service.argtypes import non_negative_float, positive_int
from spa_service.card import Method, ModelCard
from spa_service.errors import InvalidRequestError, ModelLoadError
from spa_service.pipeline.boxes import BoxMode
from spa_service.pipeline.localize import LocalizeOptions, Localizer
from spa_service.settings import BUNDLED_PHOTO_MODEL_DIR, Settings
from tqdm import tqdm

if TYPE_CHECKING:  # pyarrow is the [batch] extra's: imported once main() has checked it is there
    import pyarrow as pa

    from .store import Store

log = logging.getLogger("spa_service.batch")

PROG = "spa-batch"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Localize every image of a folder tree or a manifest (.txt, .csv or .parquet with a "
        "'path' column; local paths or fsspec URLs) into one row per image. A rerun with the same --out "
        "skips the images already there. SPA_* environment variables apply as for spa-serve.",
    )
    parser.add_argument("source", help="folder of images, or a manifest of image paths")
    parser.add_argument("--out", required=True, help="output folder (local path or fsspec URL)")
    parser.add_argument("--format", choices=("parquet", "jsonl"), default="parquet", help="default %(default)s")
    parser.add_argument("--model-dir", type=Path, help=f"model directory (SPA_MODEL_DIR; default {BUNDLED_PHOTO_MODEL_DIR})")
    options = parser.add_argument_group("localization (as the API's query parameters)")
    options.add_argument("--topk", type=positive_int, default=1, help="classes per image, best first")
    options.add_argument("--method", choices=get_args(Method), help="default: the model card's default_method")
    options.add_argument("--threshold", type=float, help="box threshold in [0, 1]; default: the card's")
    options.add_argument("--box-mode", choices=get_args(BoxMode), default="union")
    options.add_argument("--class-id", type=int, action="append", default=[],
                         help="localize this class instead of the top-k (repeatable)")
    outputs = parser.add_argument_group("outputs")
    outputs.add_argument("--heatmaps", choices=("none", "png", "map"), default="none",
                         help="png: one uint8 PNG per image and class at the image's size, under OUT/heatmaps; "
                         "map: the maps at the model's map resolution, in the rows (maps, map_size)")
    outputs.add_argument("--coco", action="store_true", help="also write OUT/_coco.json (COCO detections)")
    run = parser.add_argument_group("running")
    run.add_argument("--engine", choices=("local", "ray"), default="local", help="default %(default)s")
    run.add_argument("--batch-size", type=positive_int, default=8, help="images per backbone call")
    run.add_argument("--decode-threads", type=positive_int, default=2, help="local engine: decoding threads")
    run.add_argument("--ray-address", help="join this Ray cluster (default: RAY_ADDRESS, else a local one)")
    run.add_argument("--ray-actors", type=positive_int, default=1, help="actors, each with one Localizer")
    run.add_argument("--ray-cpus-per-actor", type=non_negative_float, default=1.0, help="default %(default)s")
    run.add_argument("--ray-gpus-per-actor", type=non_negative_float, default=0.0, help="default %(default)s")
    run.add_argument("--ray-num-cpus", type=positive_int, help="CPUs of the local cluster (default: all)")
    run.add_argument("--ray-object-store-mb", type=positive_int, help="object store of the local cluster")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ... (default %(default)s)")
    return parser


def _options(args: argparse.Namespace, card: ModelCard) -> LocalizeOptions:
    return LocalizeOptions(
        topk=args.topk,
        method=args.method or card.default_method,
        threshold=args.threshold,
        box_mode=args.box_mode,
        class_ids=tuple(args.class_id),
    )


def _run_settings(localizer: Localizer, settings: Settings, options: LocalizeOptions, args: argparse.Namespace) -> dict:
    """What the rows depend on: a rerun into the same folder must have the same."""
    card = localizer.card
    return {
        "model": card.name,
        "onnx_sha256": card.onnx_sha256,
        "scg_mode": settings.scg_mode,
        "options": {
            "topk": options.topk,
            "method": options.method,
            "threshold": options.threshold,
            "box_mode": options.box_mode,
            "class_ids": list(options.class_ids),
        },
        "format": args.format,
        "heatmaps": args.heatmaps,
    }


def _ray_tables(args: argparse.Namespace, settings: Settings, options: LocalizeOptions,
                pending: list[str]) -> Iterator[pa.Table]:
    from .ray_engine import RayConfig, run_ray

    if not pending:  # no cluster to start for nothing
        return iter(())
    config = RayConfig(
        address=args.ray_address,
        actors=args.ray_actors,
        cpus_per_actor=args.ray_cpus_per_actor,
        gpus_per_actor=args.ray_gpus_per_actor,
        num_cpus=args.ray_num_cpus,
        object_store_mb=args.ray_object_store_mb,
    )
    return run_ray(pending, model_dir=settings.model_dir, options=options, out=args.out, heatmaps=args.heatmaps,
                   batch_size=args.batch_size, config=config)


def _write_all(store: Store, tables: Iterator[pa.Table], total: int, *, progress: bool) -> Counter[str]:
    """Write each batch's rows as a part, as they come; the error codes seen."""
    started = time.perf_counter()
    first: tuple[float, int] | None = None  # when the first batch was written, and its rows
    codes: Counter[str] = Counter()
    with tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True, file=sys.stderr) as bar:
        for table in tables:
            store.write_part(table)
            first = first or (time.perf_counter(), table.num_rows)
            codes.update(c for c in table.column("error_code").to_pylist() if c is not None)
            bar.update(table.num_rows)
    if first is not None:
        # The first batch pays the start-up (Ray's cluster and actors, onnxruntime's first run):
        # the rate after it is the one a long run gets.
        ended = time.perf_counter()
        after_first = (total - first[1]) / (ended - first[0]) if ended > first[0] else 0.0
        log.info("localized %d images in %.1f s (%.2f img/s; %.2f img/s after the first batch, which came "
                 "after %.1f s); %d could not be: %s", total, ended - started, total / (ended - started),
                 after_first, first[0] - started, sum(codes.values()), dict(codes) or "none")
    return codes


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    level = args.log_level.upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"unknown log level {args.log_level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    missing = [m for m in ("pyarrow", "fsspec") + (("ray",) if args.engine == "ray" else ())
               if importlib.util.find_spec(m) is None]
    if missing:
        extra = "ray" if args.engine == "ray" else "batch"
        parser.exit(2, f"{PROG}: error: {', '.join(missing)} not installed; pip install 'spa-localizer[{extra}]'\n")

    from spa_service.threads import limit_blas_threads

    from .coco import coco_detections
    from .inputs import SourceError, list_inputs
    from .local_engine import run_local
    from .store import COCO_FILE, OutputMismatchError, Store
    from .worker import BatchWorker

    try:
        settings = Settings(**({"model_dir": args.model_dir} if args.model_dir else {}))
    except ValidationError as exc:
        parser.error(str(exc))
    if not settings.model_dir.is_dir():
        parser.error(f"model directory {settings.model_dir} does not exist; pass --model-dir or set SPA_MODEL_DIR")
    limit_blas_threads()
    try:
        localizer = Localizer.from_settings(settings)
        options = _options(args, localizer.card)
        localizer.validate(options)
    except (ModelLoadError, InvalidRequestError) as exc:
        parser.error(str(exc))
    try:
        paths = list_inputs(args.source)
        store = Store(args.out, args.format)
        store.open_run(_run_settings(localizer, settings, options, args))
    except (SourceError, OutputMismatchError, OSError) as exc:
        parser.error(str(exc))

    done = store.done()
    pending = [p for p in paths if p not in done]
    log.info("%d images in %s: %d already in %s, %d to localize with %s on the %s engine",
             len(paths), args.source, len(paths) - len(pending), args.out, len(pending), localizer.card.name,
             args.engine)
    card = localizer.card
    if args.engine == "ray":
        del localizer  # the actors hold the models; the driver needed this one only to check the options
        tables = _ray_tables(args, settings, options, pending)
    else:
        worker = BatchWorker(localizer, options, settings.max_image_pixels, args.out, args.heatmaps)
        tables = run_local(worker, pending, batch_size=args.batch_size, decode_threads=args.decode_threads)
    try:
        codes = _write_all(store, tables, len(pending), progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    if args.coco:
        store.write_file(COCO_FILE, json.dumps(coco_detections(store.rows(), card.labels, model=card.name)).encode())
    failed_before = sum(1 for p in paths if done.get(p) is not None)
    return 1 if codes or failed_before else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
