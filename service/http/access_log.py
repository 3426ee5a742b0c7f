"""The outermost middleware: every request counted and timed in the Prometheus metrics, one access-log line
for it, and an unexpected exception turned into a logged 500 `internal_error`."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics
from .schemas import error_content

access_log = logging.getLogger("spa_service.access")
log = logging.getLogger(__name__)

# Nginx's code for "client closed the request": no response was sent, so no real status exists.
CLIENT_CLOSED = 499
# Probes and scrapes arrive every few seconds: their successes are logged at DEBUG only.
QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


def route_label(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The route template (`/v1/localize`), never the raw path: labels must stay few. Requests
    refused before routing (401, 413) are matched here."""
    route = scope.get("route")
    if route is None:
        matches = {r.matches(scope)[0]: r for r in reversed(routes)}  # the first route of each kind wins
        route = matches.get(Match.FULL) or matches.get(Match.PARTIAL)  # PARTIAL: path known, method not
    return getattr(route, "path", None) or "unmatched"


class ObserveRequests:
    """Outermost middleware: counts and times every request, logs one line for it, and turns an
    unexpected exception into a logged 500 `internal_error` (the error handlers answer the rest).

    Routes add `image_size`, `images` and `batch_size` to `request.state` for the log line.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = CLIENT_CLOSED
        in_progress = self.metrics.in_progress.labels(route_label(scope, self.routes))
        in_progress.inc()

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except ClientDisconnect:
            pass
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if status == CLIENT_CLOSED:
                status = 500
                response = JSONResponse(error_content("internal_error", "internal server error"), status_code=500)
                await response(scope, receive, send)
        finally:
            in_progress.dec()
            self._record(scope, state, status, time.perf_counter() - started)

    def _record(self, scope: Scope, state: Mapping[str, object], status: int, seconds: float) -> None:
        route = route_label(scope, self.routes)
        self.metrics.requests.labels(route, str(status)).inc()
        self.metrics.request_seconds.labels(route).observe(seconds)
        fields = {
            "route": route,
            "method": scope["method"],
            "status": status,
            "latency_ms": round(seconds * 1000.0, 1),
            "image_size": state.get("image_size"),
            "images": state.get("images"),
            "batch_size": state.get("batch_size"),
        }
        level = logging.DEBUG if route in QUIET_ROUTES and status < 400 else logging.INFO
        access_log.log(
            level, " ".join(f"{key}={_format(value)}" for key, value in fields.items() if value is not None),
            extra=fields,
        )


def _format(value: object) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)
