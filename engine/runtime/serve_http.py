"""HTTP-level guards of the service (runtime.serve): what uvicorn does not bound by itself.

Three things a client can do to a small device, and what happens here:

- **An oversized upload.**  A body declared (``Content-Length``) or counted (chunked) above
  ``max_body`` is refused with 413.  Refusing is the easy part: if the server then closes the
  socket while the client is still sending, the kernel answers the unread bytes with a TCP
  reset and most clients (Python's http.client, requests, a browser's fetch) report "connection
  reset" instead of the 413.  So every answer given before the request body has fully arrived
  is sent *lingering*: the status line, headers and body go out at once, with
  ``Connection: close``, and then the rest of the request body is read and thrown away, at most
  ``drain_bytes`` of body in all and for at most ``linger_s`` seconds, before the response is
  completed and uvicorn closes the connection.  Clients that read while they send see the
  answer at once; clients that send everything first see it after their last byte.  The
  same holds for the app's other early answers (401, 415, 503).
- **A slow body.**  The whole body must arrive within ``body_timeout_s`` of the request's
  headers; otherwise 408 and the connection is closed at once (a client sending one byte a
  second is cut off in bounded time; its body is not waited for any longer).
- **Slow headers.**  uvicorn parses headers without any deadline (its keep-alive timer only
  covers a silent connection and stops at the first byte), so a client that sends a request
  line and headers one byte at a time holds a connection forever.  :func:`guarded_h11` makes a
  protocol class that gives each request ``header_timeout_s`` from the connection's start, or
  from the end of the previous response, to complete its headers; otherwise it answers 408
  (or, when not a byte of a request came, just closes) and closes.  h11 refuses a request head
  it has to buffer beyond ``MAX_HEADER_BYTES`` with 400 (one 64 KB socket read can hold more).

Standard library + starlette (which FastAPI brings) + uvicorn's h11 protocol.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyRefused", "HttpGuard", "guarded_h11"]

#: request line + headers larger than this are refused by h11 (uvicorn answers 400)
MAX_HEADER_BYTES = 16 * 1024


class BodyRefused(Exception):
    """Raised from the guarded ``receive`` while the app reads a body: 413 or 408."""

    def __init__(self, status: int, reason: str, detail: str):
        self.status, self.reason, self.detail = status, reason, detail
        super().__init__(detail)


class _Exchange:
    """One request's body bookkeeping: how much arrived, whether more is coming."""

    def __init__(self, scope: Scope, deadline: float):
        headers = Headers(scope=scope)
        length = headers.get("content-length", "").strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.declared = int(length) if length.isdigit() else None
        self.body_pending = chunked or bool(self.declared)
        self.expects_continue = headers.get("expect", "").lower() == "100-continue"
        self.read_called = False
        self.received = 0
        self.started = False
        self.deferred = False  # the response's last body message is held back until drained
        self.deadline = deadline


class HttpGuard:
    """ASGI middleware: body size and time bounds, and lingering early answers (see module).

    ``on_refused(reason, status, method, path, seconds)`` is called for each answer this
    middleware gives itself (metrics); the app's own answers are counted by the app.
    """

    def __init__(self, app: ASGIApp, max_body: int, drain_bytes: int, linger_s: float,
                 body_timeout_s: float,
                 on_refused: Callable[[str, int, str, str, float], None] | None = None):
        self.app, self.max_body, self.drain_bytes = app, max_body, drain_bytes
        self.linger_s, self.body_timeout_s = linger_s, body_timeout_s
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        ex = _Exchange(scope, loop.time() + self.body_timeout_s)
        if ex.declared is not None and ex.declared > self.max_body:
            await self._refuse(BodyRefused(
                413, "too_large", f"body of {ex.declared} bytes is over the limit of "
                                  f"{self.max_body} bytes (--max-body-mb)"), scope, receive, send, ex)
            return

        async def guarded_receive() -> Message:
            ex.read_called = True
            if not ex.body_pending:
                return await receive()  # the body is complete: only a disconnect can follow
            remaining = ex.deadline - loop.time()
            try:
                if remaining <= 0:
                    raise asyncio.TimeoutError
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                raise BodyRefused(408, "body_timeout", f"the request body did not arrive within "
                                  f"{self.body_timeout_s:g} s (--body-timeout)") from None
            if message["type"] == "http.request":
                ex.received += len(message.get("body", b""))
                ex.body_pending = bool(message.get("more_body", False))
                if ex.received > self.max_body:
                    raise BodyRefused(413, "too_large", f"body is over the limit of "
                                      f"{self.max_body} bytes (--max-body-mb)")
            else:
                ex.body_pending = False
            return message

        async def lingering_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.started = True
                if ex.body_pending:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"connection", b"close")]}
            elif (message["type"] == "http.response.body" and not message.get("more_body", False)
                  and self._should_drain(ex)):
                ex.deferred = True
                message = {**message, "more_body": True}
            await send(message)

        try:
            await self.app(scope, guarded_receive, lingering_send)
        except BodyRefused as exc:
            if ex.started:  # too late for an answer; uvicorn closes the connection
                raise
            await self._refuse(exc, scope, receive, send, ex)
            return
        if ex.deferred:
            await self._drain(receive, ex)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _should_drain(self, ex: _Exchange) -> bool:
        # with "Expect: 100-continue" and no read, uvicorn never said "continue": no body comes
        return ex.body_pending and not (ex.expects_continue and not ex.read_called)

    async def _refuse(self, exc: BodyRefused, scope: Scope, receive: Receive, send: Send,
                      ex: _Exchange) -> None:
        if self.on_refused is not None:
            seconds = asyncio.get_running_loop().time() - (ex.deadline - self.body_timeout_s)
            self.on_refused(exc.reason, exc.status, scope["method"], scope["path"], seconds)
        body = json.dumps({"detail": exc.detail}).encode()
        await send({"type": "http.response.start", "status": exc.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        drain = exc.status != 408 and self._should_drain(ex)  # a too slow body is not waited for
        await send({"type": "http.response.body", "body": body, "more_body": drain})
        if drain:
            await self._drain(receive, ex)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _drain(self, receive: Receive, ex: _Exchange) -> None:
        """Read and discard the rest of the request body: at most ``drain_bytes`` of body in all,
        for at most ``linger_s`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + self.linger_s
        while ex.body_pending and ex.received <= self.drain_bytes:
            remaining = end - loop.time()
            if remaining <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except asyncio.TimeoutError:
                return
            if message["type"] != "http.request":
                return
            ex.received += len(message.get("body", b""))
            ex.body_pending = bool(message.get("more_body", False))


def guarded_h11(header_timeout_s: float, on_timeout: Callable[[], None] | None = None) -> type:
    """uvicorn's h11 protocol with a deadline for each request's line and headers (see module).

    Pass the class as ``uvicorn.run(..., http=guarded_h11(10.0))``.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = json.dumps({"detail": f"request headers did not arrive within {header_timeout_s:g} s"})
    answer = (f"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
              f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}").encode()

    class GuardedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _waiting_after: Any = None  # the request cycle that was current when the wait began
        _partial = False  # bytes of the awaited request arrived (else the connection is idle)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            self._partial = True
            super().data_received(data)
            if self._timer is not None and self.cycle is not self._waiting_after:
                self._disarm()  # a new request's headers are complete

        def on_response_complete(self) -> None:
            self._arm()
            super().on_response_complete()  # may start a pipelined request at once
            if self.cycle is not self._waiting_after or self.transport.is_closing():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_after, self._partial = self.cycle, False
            self._timer = asyncio.get_running_loop().call_later(header_timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expired(self) -> None:
            self._timer = None
            busy = self.cycle is not None and not self.cycle.response_complete
            if self.transport.is_closing() or self.cycle is not self._waiting_after or busy:
                return
            if self._partial:  # a request begun and not finished: say why it is cut off
                if on_timeout is not None:
                    on_timeout()
                self.transport.write(answer)
            self.transport.close()  # idle: just closed, as uvicorn's keep-alive timeout does

    return GuardedH11Protocol
