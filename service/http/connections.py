"""Connection-level limits that uvicorn lacks: a deadline for each request head.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) and caps concurrent connections
(`limit_concurrency`, a plain-text 503 above it), but a client may take as long as it likes to send
its request head. This protocol closes a connection whose head is not complete `head_timeout_s`
after the connection opened or its previous response ended.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


def head_deadline_protocol(head_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, with the head deadline; pass it as uvicorn's `http`."""

    class HeadDeadlineProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

        def _arm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_deadline)

        def _head_deadline(self) -> None:
            # Their state leaves IDLE the moment a complete head has been parsed.
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closed a connection whose request head took over %g s", head_timeout_s)
                self.transport.close()

    return HeadDeadlineProtocol
