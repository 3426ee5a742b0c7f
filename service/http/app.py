"""`create_app()`: the ASGI app, wiring settings, the localizer, the service and metrics to routes.

Requests go through, outermost first: ObserveRequests (metrics, access log, last-resort 500)
-> CORS -> RequireApiKey -> BodyLimit -> CancelOnDisconnect -> FastAPI's error handlers -> route
(routes.py) -> Service (serving.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib.metadata import version
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from spa_service.pipeline.localize import Localizer

from ..settings import Settings
from .access_log import ObserveRequests
from .admission import Admission
from .docs import add_offline_docs
from .errors import install_error_handlers
from .metrics import Metrics
from .middleware import API_KEY_HEADER, BodyLimit, CancelOnDisconnect, RequireApiKey
from .openapi import stated_limits
from .registry import ModelRegistry
from .routes import STATIC_DIR, add_routes
from .serving import Service


def create_app(
    settings: Settings | None = None, localizer: Localizer | Sequence[Localizer] | None = None
) -> FastAPI:
    """The ASGI app. Without `localizer` (one, or several: the first is the default), the lifespan
    loads the models of `settings.served_model_dirs()`."""
    settings = settings or Settings()
    metrics = Metrics(max_batch_size=settings.max_batch_size)
    admission = Admission(max_request_mp=settings.max_request_work_mp, max_in_flight_mp=settings.max_queued_work_mp)
    registry = ModelRegistry(settings)
    given = list(localizer) if isinstance(localizer, Sequence) else [localizer] if localizer is not None else []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spa-infer")
        # One CPU pool for every model: SPA_DECODE_THREADS decodes at once in the process, not per model.
        # Never shut down: requests still in flight when the lifespan ends render with it; its idle
        # threads end once it is garbage.
        cpu = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="spa-cpu")
        pairs: list[tuple[Localizer, Path | None]]
        if given:
            # Their directories (for samples/) are the settings' when they line up, else unknown.
            dirs = settings.served_model_dirs()
            pairs = list(zip(given, dirs if len(dirs) == len(given) else [settings.model_dir] + [None] * len(given)))
        else:
            dirs = settings.served_model_dirs()
            loaded = await asyncio.gather(*(asyncio.to_thread(Localizer.from_settings, settings, d) for d in dirs))
            pairs = list(zip(loaded, dirs))
        try:
            for loaded, model_dir in pairs:
                samples = model_dir / "samples" if model_dir is not None and (model_dir / "samples").is_dir() else None
                service = Service(settings, metrics, admission, loaded, worker=worker, cpu=cpu, samples_dir=samples)
                registry.add(service)
                await service.start()
            yield
        finally:
            await registry.stop()
            worker.shutdown()

    app = FastAPI(
        title="SPA Localizer",
        version=version("spa-localizer"),
        summary="Weakly supervised object localization (SPA, CVPR 2021): top classes, a heatmap per class, boxes.",
        lifespan=lifespan,
        root_path=settings.root_path,
        docs_url=None,  # served from the package's own Swagger UI files (docs.py), not a CDN
        redoc_url=None,
    )
    app.state.models = registry
    app.state.metrics = metrics
    add_routes(app, with_api_key=settings.api_key is not None)
    add_offline_docs(app)
    stated_limits(app, settings, registry)
    # The demo page (GET /) and its files; overlay.js is also what third-party pages import.
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_error_handlers(app, retry_after_s=settings.retry_after_s)

    # add_middleware puts each new one outside the previous ones.
    app.add_middleware(CancelOnDisconnect)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.max_body_bytes,
        gap_s=settings.body_timeout_s,
        deadline_s=settings.body_deadline_s,
        drain_deadline=registry.body_deadline,
    )
    if settings.api_key is not None:
        app.add_middleware(
            RequireApiKey, key=settings.api_key.get_secret_value(), prefixes=settings.api_key_paths
        )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Content-Type", API_KEY_HEADER],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.add_middleware(ObserveRequests, metrics=metrics, routes=app.router.routes)
    return app
