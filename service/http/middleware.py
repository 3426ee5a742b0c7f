"""Pure ASGI middleware: limits that answer before the body is read, without buffering it, and
the hang-up that cancels a request's work."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import closing_error, error_response

API_KEY_HEADER = "X-API-Key"
POLL_S = 0.25  # how soon a body being waited for notices that a drain has begun


class BodyLimit:
    """Limits the request body in size and in time, without buffering it.

    413 for a declared Content-Length over the limit, before reading anything; otherwise body
    bytes are counted as they arrive and 413 is answered the moment the limit is passed. A body
    that stalls for `gap_s` between chunks, or is still arriving `deadline_s` after the request
    started, gets 408, so a slow or stuck client cannot hold a request open forever. Once a drain
    has begun, `drain_deadline()` (a monotonic time) also bounds it, and a body still arriving then
    gets the JSON 503 `shutting_down` before the server's own shutdown timeout would cut it off.
    After any of these answers the app sees a disconnect, and whatever it sends afterwards is dropped.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        gap_s: float,
        deadline_s: float,
        drain_deadline: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.gap_s = gap_s
        self.deadline_s = deadline_s
        self.drain_deadline = drain_deadline

    def _too_large(self) -> JSONResponse:
        return closing_error(413, "body_too_large", f"request body is over the limit of {self.max_bytes:,} bytes")

    def _late(self, reason: str) -> JSONResponse:
        if reason == "gap":
            return closing_error(408, "body_timeout", f"no request body data for {self.gap_s:g} s")
        if reason == "deadline":
            return closing_error(408, "body_timeout", f"request body not complete within {self.deadline_s:g} s")
        return closing_error(503, "shutting_down", "the server is shutting down and the body had not arrived")

    async def _next(self, receive: Receive, deadline: float) -> Message | str:
        """The next message, or why waiting for it ended: "gap", "deadline" or "drain"."""
        pending = asyncio.ensure_future(receive())
        gap_end = time.monotonic() + self.gap_s
        while True:
            drain = self.drain_deadline()
            ends = {"gap": gap_end, "deadline": deadline} | ({"drain": drain} if drain is not None else {})
            reason, end = min(ends.items(), key=lambda item: item[1])
            # Wake at least every POLL_S while no drain is known, to notice one beginning.
            wait = end - time.monotonic() if drain is not None else min(end - time.monotonic(), POLL_S)
            done, _ = await asyncio.wait({pending}, timeout=max(0.0, wait))
            if done:
                return pending.result()
            if time.monotonic() >= end:
                pending.cancel()
                return reason

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large()(scope, receive, send)
            return

        deadline = time.monotonic() + self.deadline_s
        received = 0
        started = answered = complete = False

        async def refuse(response: JSONResponse) -> Message:
            nonlocal answered
            answered = True
            if not started:
                await response(scope, receive, send)
            return {"type": "http.disconnect"}

        async def guarded_receive() -> Message:
            nonlocal received, complete
            if answered:
                return {"type": "http.disconnect"}
            if complete:  # later calls only wait for a disconnect: no time limit on those
                return await receive()
            message = await self._next(receive, deadline)
            if isinstance(message, str):
                return await refuse(self._late(message))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if received > self.max_bytes:
                    return await refuse(self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not answered:
                started = True
                await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not answered:  # the app's failure is ours to report only if we did not cause it
                raise


class CancelOnDisconnect:
    """Cancels a request whose client hangs up before its answer is sent.

    Once the app has read the whole body, the receive channel carries nothing but the
    `http.disconnect` of a client that went away; a watcher waits for it and cancels the request
    (its queued decodes, backbone jobs and PNGs are dropped, see serving.py). Nobody would read the
    answer: the app ends without one, and the access log records status 499. The app's own later
    receive calls get that same disconnect.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = asyncio.current_task()
        gone = asyncio.Event()
        watcher: asyncio.Task[None] | None = None
        answered = hung_up = False

        async def watch() -> None:
            nonlocal hung_up
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()
            if not answered:
                hung_up = True
                request.cancel()

        async def watched_receive() -> Message:
            nonlocal watcher
            if watcher is not None:
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body", False):
                watcher = asyncio.create_task(watch(), name="spa-disconnect-watch")
            return message

        async def watched_send(message: Message) -> None:
            nonlocal answered
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                answered = True
            await send(message)

        try:
            await self.app(scope, watched_receive, watched_send)
        except asyncio.CancelledError:
            if not hung_up:  # the server's own cancellation (shutdown) is not ours to swallow
                raise
            request.uncancel()
        finally:
            answered = True  # whatever happens now, the watcher must not cancel
            if watcher is not None:
                watcher.cancel()


def _content_length(scope: Scope) -> int | None:
    value = Headers(scope=scope).get("content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class RequireApiKey:
    """401 for requests under the protected path prefixes without the configured X-API-Key,
    before the body is read."""

    def __init__(self, app: ASGIApp, *, key: str, prefixes: Sequence[str]) -> None:
        self.app = app
        self.key = key.encode()
        self.prefixes = tuple(prefixes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _protected(scope["path"], self.prefixes):
            supplied = Headers(scope=scope).get(API_KEY_HEADER)
            if supplied is None:
                await error_response(401, "unauthorized", f"missing {API_KEY_HEADER} header")(scope, receive, send)
                return
            if not hmac.compare_digest(supplied.encode(), self.key):
                await error_response(401, "unauthorized", f"invalid {API_KEY_HEADER}")(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _protected(path: str, prefixes: tuple[str, ...]) -> bool:
    """A prefix ending in / covers everything under it; any other names one exact path, and "/"
    names the demo page alone (the probes must stay open)."""
    return any(path == p if p == "/" or not p.endswith("/") else path.startswith(p) for p in prefixes)
