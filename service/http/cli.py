"""`spa-serve`: the HTTP service under uvicorn, with a graceful SIGTERM drain."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from types import FrameType

import uvicorn
from pydantic import ValidationError
from spa_service.pipeline.localize import Localizer

from ..errors import ModelLoadError
from ..settings import Settings
from ..threads import limit_blas_threads
from .app import create_app
from .connections import head_deadline_protocol
from .registry import ModelRegistry

log = logging.getLogger("spa_service.serve")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spa-serve",
        description="Serve an exported SPA model over HTTP. Every SPA_* environment variable applies; "
        "these options override their variables.",
    )
    parser.add_argument(
        "--model-dir", type=Path, action="append",
        help="a model directory to serve; repeat it to serve several, the first the default (SPA_MODEL_DIRS; "
        "default: both bundled models, the real-photo one first)",
    )
    parser.add_argument("--host", help="address to listen on (SPA_HOST; default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (SPA_PORT; default 8000; 0 = any free port)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING, ... (SPA_LOG_LEVEL; default INFO)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        key: value
        for key, value in {
            "model_dirs": args.model_dir,
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


class _DrainingServer(uvicorn.Server):
    """Turns readiness off the moment a stop signal arrives, then lets uvicorn stop listening,
    finish the requests in flight and run the app's shutdown (which drains the batcher)."""

    def __init__(self, config: uvicorn.Config, models: ModelRegistry) -> None:
        super().__init__(config)
        self._models = models

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._models.begin_shutdown()
        super().handle_exit(sig, frame)


def _drained(sig: int, frame: FrameType | None) -> None:
    """uvicorn re-raises the stop signal after its shutdown; by then the drain is complete, so
    exit normally (status 0) instead of dying by the signal."""


def serve(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        parser.error(str(exc))
    level = settings.log_level.upper()
    if not isinstance(logging.getLevelName(level), int):
        parser.error(f"unknown log level {settings.log_level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", force=True)
    dirs = settings.served_model_dirs()
    if not dirs:
        parser.exit(2, "spa-serve: error: no model to serve (the bundled models are not in this checkout); "
                       "pass --model-dir or set SPA_MODEL_DIRS\n")
    for model_dir in dirs:
        if not model_dir.is_dir():
            parser.exit(2, f"spa-serve: error: model directory {model_dir} does not exist; "
                           "pass --model-dir or set SPA_MODEL_DIRS\n")
    limit_blas_threads()
    try:
        localizers = [Localizer.from_settings(settings, model_dir) for model_dir in dirs]
    except ModelLoadError as exc:
        parser.exit(1, f"spa-serve: error: {exc}\n")
    names = [localizer.card.name for localizer in localizers]
    if len(set(names)) != len(names):
        parser.exit(2, f"spa-serve: error: the model directories hold models of the same name ({names})\n")

    app = create_app(settings, localizers)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # logging is configured above; uvicorn's records propagate to it
        access_log=False,  # the app logs one structured line per request instead
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        http=head_deadline_protocol(settings.head_timeout_s),
        lifespan="on",
    )
    server = _DrainingServer(config, app.state.models)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _drained)
    log.info("serving %s on http://%s:%d", ", ".join(names), settings.host, settings.port)
    server.run()
    if not server.started:  # e.g. the port was taken; uvicorn has logged why
        sys.exit(1)


if __name__ == "__main__":
    serve()
