"""The models one process serves, by name: the first is the default, the one `/v1/localize` uses.

It is also where the process-wide drain lives: readiness off for every model at once, and the time
by which request bodies must have arrived once a drain has begun.
"""

from __future__ import annotations

import logging
import time

from ..errors import ModelLoadError, UnknownModelError
from ..settings import Settings
from .serving import Service

log = logging.getLogger(__name__)

DRAIN_MARGIN_S = 2.0  # bodies are answered this long before the shutdown timeout: time to write the 503


class ModelRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.services: dict[str, Service] = {}
        self._drain_started: float | None = None  # time.monotonic() when the drain began

    def add(self, service: Service) -> None:
        if service.name in self.services:
            raise ModelLoadError(f"two model directories hold a model named {service.name!r}; names must differ")
        self.services[service.name] = service

    @property
    def default(self) -> Service:
        if not self.services:
            raise RuntimeError("no model is loaded yet (the app's lifespan loads them)")
        return next(iter(self.services.values()))

    def get(self, name: str | None = None) -> Service:
        """The model called `name` (None: the default); UnknownModelError names the ones there are."""
        if name is None:
            return self.default
        try:
            return self.services[name]
        except KeyError:
            raise UnknownModelError(f"no model named {name!r}; this server has {sorted(self.services)}") from None

    @property
    def ready(self) -> bool:
        return bool(self.services) and all(s.ready for s in self.services.values())

    def not_ready_reason(self) -> str:
        if not self.services:
            return "loading models"
        waiting = {name: s.not_ready_reason for name, s in self.services.items() if not s.ready}
        if len(self.services) == 1:
            return next(iter(waiting.values()), "")
        return "; ".join(f"{name}: {reason}" for name, reason in waiting.items())

    def begin_shutdown(self) -> None:
        """Readiness goes false first, so load balancers stop sending before anything stops."""
        if self._drain_started is None:
            self._drain_started = time.monotonic()
            log.info("shutting down: readiness off, draining the requests in flight")
        for service in self.services.values():
            service.begin_shutdown()

    def body_deadline(self) -> float | None:
        """Once draining: by when request bodies must have arrived, a margin before the shutdown
        timeout ends, so a stalled upload is answered (503 shutting_down) rather than cut off."""
        if self._drain_started is None:
            return None
        timeout = self.settings.shutdown_timeout_s
        return self._drain_started + max(timeout / 2, timeout - DRAIN_MARGIN_S)

    async def stop(self) -> None:
        self.begin_shutdown()
        for service in self.services.values():
            await service.stop()
