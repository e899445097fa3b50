"""HTTP service around one bundle: ``python -m runtime.serve [--bundle DIR] [--port N] ...``.

Runs on the device from the bundle directory (``cd current && python -m runtime.serve``) or on
the build host as ``recipe serve --bundle DIR``.  Besides the runtime's own dependencies it
needs FastAPI, uvicorn and python-multipart, which devices install only when they serve
(``requirements-serve.txt`` in the bundle); nothing else of the runtime imports the serve*
modules.

Endpoints (``GET /`` is a page for people, serve_page.py; the API is at ``/openapi.json``):

- ``POST /ocr``: a multipart form with the image in field ``file``, or the raw image bytes with
  ``Content-Type: image/*`` (``?name=`` names it) -> ``{"image", "lines": [{"points", "text",
  "score", "box_score"}], "latency_ms"}``, the object ``recipe predict --json`` prints per image.
- ``GET /healthz`` (never needs the token: liveness probes carry no secrets),
  ``GET /metrics`` (Prometheus text format), ``GET /info`` (manifest meta, release, the
  active models' sha256, every limit below).

Why each limit exists, since a device has little memory and is often reachable by others:

- body size: ``Content-Length`` above ``--max-body-mb`` is refused before a byte is read (413),
  and bytes are counted while reading, so a chunked upload without a length is bounded too;
  the refused body is drained for a bounded time so the client reads the 413 instead of a
  connection reset (serve_http.py);
- slow clients: request headers must arrive within ``--header-timeout`` and a body within
  ``--body-timeout`` (408), so a client sending a byte at a time is cut off (serve_http.py);
- decompression bombs: a 100 KB PNG can claim 30000x30000 pixels (2.7 GB decoded).  The
  header is parsed first (serve_images.py: PNG, JPEG, BMP, WebP; other formats are refused
  with 415) and images above ``--max-megapixels`` get 413 before OpenCV allocates anything;
  OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS`` is set to the same limit as a second guard;
- concurrency: at most ``--concurrency`` predictions run at once (a semaphore in front of a
  thread pool of that size); up to ``--queue`` more wait, further requests get 503 with
  ``Retry-After`` instead of piling up memory.  At most ``2 x (concurrency + queue) + 8``
  /ocr requests are in progress at all (reading a body counts), so that many bodies of at
  most ``--max-body-mb`` bound the memory uploads take; more get 503 before a byte is read;
  four times that many open connections get uvicorn's 503;
- authentication: with ``--token-env VAR`` every endpoint but ``/healthz``, the page's files
  and ``/openapi.json`` needs
  ``Authorization: Bearer <$VAR>`` (compared in constant time).  The token comes from the
  environment only (systemd ``EnvironmentFile=``), never from a file in the recipe, and is
  never logged.  The default bind address is 127.0.0.1; any other address is explicit and
  warns when no token is set.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import os
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .serve_http import MAX_HEADER_BYTES, BodyRefused, HttpGuard, guarded_h11
from .serve_images import ImageRejected, check_image, decode_image, image_size
from .serve_metrics import Metrics
from .serve_page import PAGE_PATHS, add_page

__all__ = ["Limits", "Metrics", "create_app", "image_size", "serve_cli"]

log = logging.getLogger("runtime.serve")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_OPEN_PATHS = ("/healthz", "/openapi.json", "/docs", "/redoc", *PAGE_PATHS)
MB = 1024 * 1024


class Limits:
    """The service's bounds (see the module docstring for why each exists)."""

    def __init__(self, max_body_mb: float = 20.0, max_megapixels: float = 40.0,
                 concurrency: int = 1, queue: int = 8, header_timeout_s: float = 10.0,
                 body_timeout_s: float = 60.0):
        if max_body_mb <= 0 or max_megapixels <= 0 or concurrency < 1 or queue < 0:
            raise ValueError("max-body-mb and max-megapixels must be > 0, concurrency >= 1, "
                             "queue >= 0")
        if header_timeout_s <= 0 or body_timeout_s <= 0:
            raise ValueError("header-timeout and body-timeout must be > 0")
        self.max_body = int(max_body_mb * MB)
        self.max_pixels = int(max_megapixels * 1_000_000)
        self.concurrency = int(concurrency)
        self.queue = int(queue)
        # /ocr requests in progress at all (reading a body counts): bounds upload memory
        self.max_active = 2 * (self.concurrency + self.queue) + 8
        # open connections beyond this get uvicorn's 503 before any app code runs
        self.max_connections = 4 * self.max_active
        self.header_timeout_s = float(header_timeout_s)
        self.body_timeout_s = float(body_timeout_s)
        self.keep_alive_s = 5  # uvicorn's timeout_keep_alive: an idle kept-alive connection
        # a refused body is read and thrown away (so the client sees the answer, not a reset)
        # for no longer than an accepted one may take, and at most 10 s and 4 x max_body
        self.linger_s = min(10.0, self.body_timeout_s)
        self.drain_bytes = 4 * self.max_body

    def as_dict(self) -> dict[str, Any]:
        """What /info reports (sizes in bytes, times in seconds)."""
        return {"max_body_bytes": self.max_body, "max_pixels": self.max_pixels,
                "concurrency": self.concurrency, "queue": self.queue,
                "max_active": self.max_active, "max_connections": self.max_connections,
                "max_header_bytes": MAX_HEADER_BYTES, "header_timeout_s": self.header_timeout_s,
                "body_timeout_s": self.body_timeout_s, "keep_alive_s": self.keep_alive_s,
                "linger_s": self.linger_s, "drain_bytes": self.drain_bytes}


_OCR_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                           "properties": {"file": {"type": "string", "format": "binary"}}}},
        "image/*": {"schema": {"type": "string", "format": "binary"}},
    },
}
_OCR_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": '{"image", "lines": [{"points", "text", "score", "box_score"}], "latency_ms"}'},
    400: {"description": "undecodable image or malformed multipart body"},
    401: {"description": "missing or wrong bearer token"},
    413: {"description": "body over --max-body-mb, or image over --max-megapixels"},
    415: {"description": "not multipart/form-data or image/*, or an image format not accepted"},
    503: {"description": "--concurrency predictions running and --queue requests waiting"},
}


class _Disconnected(HTTPException):
    """The client went away while its body was read."""


async def _read_body(request: Request) -> bytes:
    """The request body; its size and arrival time are bounded by serve_http.HttpGuard, which
    raises BodyRefused (413, 408) from the stream.  A client that goes away mid-upload is a
    400 nobody receives (counted as "disconnected"), not a traceback in the device's log."""
    try:
        return b"".join([chunk async for chunk in request.stream()])
    except ClientDisconnect:
        raise _Disconnected(400, "the client disconnected during the upload") from None


async def _multipart_file(request: Request, body: bytes) -> tuple[bytes, str]:
    """(bytes, filename) of the ``file`` field of an already size-checked multipart body."""

    async def once() -> AsyncGenerator[bytes, None]:
        yield body
        yield b""

    try:
        form = await MultiPartParser(request.headers, once(), max_files=1, max_fields=16).parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    try:
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise HTTPException(400, "multipart body has no file field named 'file'")
        return await part.read(), part.filename or "upload"
    finally:
        await form.close()


class _Observe:
    """ASGI middleware: bearer-token check and the bound on /ocr requests in progress (both
    before any route runs or any body byte is read), and per-request metrics (status code,
    /ocr duration).  Plain ASGI rather than BaseHTTPMiddleware, which costs a task per request.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, token: str | None, max_active: int):
        self.app, self.metrics, self.max_active = app, metrics, max_active
        self.token = token.encode() if token is not None else None
        self.active = 0  # /ocr requests in the app: reading a body, queued or predicting

    def _denied(self, scope: Scope) -> JSONResponse | None:
        if self.token is None or scope["path"] in _OPEN_PATHS:
            return None
        scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token):
            return None
        return JSONResponse({"detail": "missing or wrong bearer token"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, status = time.perf_counter(), [500]

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        ocr = scope["path"] == "/ocr"
        try:
            denied = self._denied(scope)
            if denied is not None:
                if ocr:
                    self.metrics.error("unauthorized")
                await denied(scope, receive, send_status)
            elif ocr and self.active >= self.max_active:
                self.metrics.error("busy")
                await JSONResponse({"detail": "busy: too many requests in progress"}, 503,
                                   headers={"Retry-After": "1"})(scope, receive, send_status)
            elif ocr:
                self.active += 1
                try:
                    await self.app(scope, receive, send_status)
                finally:
                    self.active -= 1
            else:
                await self.app(scope, receive, send_status)
        except BodyRefused:
            status[0] = 0  # answered and counted by HttpGuard
            raise
        finally:
            if status[0]:
                self.metrics.request(scope["method"], scope["path"], status[0],
                                     time.perf_counter() - t0)


def create_app(pipeline: Any, limits: Limits, token: str | None = None) -> FastAPI:
    """The ASGI app for one loaded OCRPipeline (``token`` None: no authentication)."""
    manifest = pipeline.manifest
    meta = {k: v for k, v in manifest.items() if k != "files"}
    info = {"bundle_hash": str(manifest["bundle_hash"])[:12], "precision": pipeline.precision,
            "backend": pipeline.backend}
    metrics = Metrics()
    executor = ThreadPoolExecutor(max_workers=limits.concurrency, thread_name_prefix="ocr")
    slots = asyncio.Semaphore(limits.concurrency)  # Python >= 3.10: bound to no loop yet
    admitted = [0]  # /ocr requests running or waiting for a slot
    app = FastAPI(title="OCR recipe bundle", version=str(manifest["bundle_hash"])[:12],
                  description=f"Reads text with bundle {manifest['bundle_hash'][:12]} "
                              f"({manifest.get('target')}, {pipeline.precision}). "
                              "A page for people is at /.",
                  docs_url=None, redoc_url=None)  # Swagger UI needs a CDN: see serve_page.py
    add_page(app)
    # the model files the active precision runs, by content hash: the model versions
    active = manifest.get("candidates", {}).get(pipeline.precision, {})
    models = {name: {"file": rel, "sha256": manifest["files"].get(rel)}
              for name, rel in sorted(active.items())}

    app.add_middleware(_Observe, metrics=metrics, token=token, max_active=limits.max_active)

    def refused(reason: str, status: int, method: str, path: str, seconds: float) -> None:
        metrics.error(reason)
        metrics.request(method, path, status, seconds)

    # added last, so outermost: it sees every answer, the token check's and the 503s included
    app.add_middleware(HttpGuard, max_body=limits.max_body, drain_bytes=limits.drain_bytes,
                       linger_s=limits.linger_s, body_timeout_s=limits.body_timeout_s,
                       on_refused=refused)

    def infer(data: bytes) -> tuple[list[dict[str, Any]], float]:
        with metrics.lock:
            metrics.inflight += 1
            metrics.inflight_max = max(metrics.inflight_max, metrics.inflight)
        t0 = time.perf_counter()
        try:
            image = decode_image(data)
            return pipeline.timed_predict(image)
        finally:
            with metrics.lock:
                metrics.inflight -= 1
                metrics.inference_seconds.observe(time.perf_counter() - t0)

    @app.post("/ocr", openapi_extra={"requestBody": _OCR_BODY}, responses=_OCR_RESPONSES)
    async def ocr(request: Request) -> dict[str, Any]:
        """Read the text lines of one image."""
        try:
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "multipart/form-data" and not ctype.startswith("image/"):
                raise HTTPException(415, f"Content-Type {ctype or '(none)'!r}: send multipart/"
                                         "form-data with a 'file' field, or image/* bytes")
            body = await _read_body(request)
            if ctype == "multipart/form-data":
                data, name = await _multipart_file(request, body)
            else:
                data, name = body, request.query_params.get("name", "upload")
            try:
                check_image(data, limits.max_pixels)
            except ImageRejected as exc:
                raise HTTPException(exc.status, str(exc)) from None
            if admitted[0] >= limits.concurrency + limits.queue:
                raise HTTPException(503, "busy: all prediction slots and the queue are full",
                                    headers={"Retry-After": "1"})
        except HTTPException as exc:
            metrics.error("disconnected" if isinstance(exc, _Disconnected) else
                          {400: "bad_request", 413: "too_large", 415: "unsupported_media_type",
                           503: "busy"}.get(exc.status_code, str(exc.status_code)))
            raise
        admitted[0] += 1
        waiting = True
        with metrics.lock:
            metrics.queued += 1
        try:
            async with slots:
                with metrics.lock:
                    metrics.queued -= 1
                waiting = False
                loop = asyncio.get_running_loop()
                lines, ms = await loop.run_in_executor(executor, infer, data)
        except ImageRejected as exc:  # header fine, pixels not decodable
            metrics.error("bad_request")
            raise HTTPException(exc.status, str(exc)) from None
        except Exception as exc:
            metrics.error("internal")
            log.exception("prediction failed for %s", name)
            raise HTTPException(500, f"prediction failed ({type(exc).__name__})") from None
        finally:
            admitted[0] -= 1
            if waiting:  # cancelled while queued (shutdown)
                with metrics.lock:
                    metrics.queued -= 1
        return {"image": name, "lines": lines, "latency_ms": round(ms, 2)}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        """Liveness: the bundle is loaded (no token needed)."""
        return {"status": "ok", "uptime_s": round(time.time() - metrics.started, 1)}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus() -> PlainTextResponse:
        """Prometheus text exposition format 0.0.4."""
        return PlainTextResponse(metrics.render(limits, info),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/info")
    async def bundle_info() -> dict[str, Any]:
        """The bundle's manifest meta (file list left out), its hash (the release name on a
        device), the active models' hashes and the service limits."""
        return {**meta, "backend": pipeline.backend, "active_precision": pipeline.precision,
                "release": str(manifest["bundle_hash"])[:12], "models": models,
                "limits": {**limits.as_dict(), "token": token is not None}}

    app.state.metrics = metrics
    return app


# ------------------------------------------------------------------------------ CLI


def serve_cli(argv: Sequence[str] | None = None, prog: str = "runtime.serve") -> int:
    """``runtime.serve [--bundle DIR] [--host H] [--port N] [--token-env VAR] ...``.

    Exit 2 on usage errors (a --token-env variable that is unset or empty, bad limits), 1 when
    the bundle does not load; otherwise serves until SIGINT/SIGTERM and exits 0.
    """
    ap = argparse.ArgumentParser(prog=prog, description="Serve a bundle over HTTP.")
    ap.add_argument("--bundle", help="bundle directory (default: the one this runtime is in)")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--token-env", metavar="VAR",
                    help="require 'Authorization: Bearer <token>', the token read from $VAR")
    ap.add_argument("--max-body-mb", type=float, default=20.0, help="largest request body (20)")
    ap.add_argument("--max-megapixels", type=float, default=40.0, help="largest image (40)")
    ap.add_argument("--concurrency", type=int, default=1, help="predictions at once (1)")
    ap.add_argument("--queue", type=int, default=8, help="requests waiting beyond those (8)")
    ap.add_argument("--header-timeout", type=float, default=10.0, metavar="S",
                    help="seconds a request's line and headers may take to arrive (10)")
    ap.add_argument("--body-timeout", type=float, default=60.0, metavar="S",
                    help="seconds a request's body may take to arrive (60)")
    ap.add_argument("--precision", help="candidate precision (default: the bundle's active one)")
    ap.add_argument("--threads", type=int, help="intra-op threads (default: the manifest's)")
    ap.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        limits = Limits(args.max_body_mb, args.max_megapixels, args.concurrency, args.queue,
                        args.header_timeout, args.body_timeout)
    except ValueError as exc:
        print(f"runtime.serve: {exc}", file=sys.stderr)
        return 2
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env, "")
        if not token.strip():
            print(f"runtime.serve: --token-env {args.token_env}: the variable is unset or empty",
                  file=sys.stderr)
            return 2
        token = token.strip()
    if args.host not in _LOOPBACK and token is None:
        print(f"runtime.serve: WARNING: listening on {args.host} without a token: anyone who can "
              "reach this port can use the service (set --token-env)", file=sys.stderr)
    # second guard behind the header check; read by OpenCV at its first decode
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(limits.max_pixels)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    from .pipeline import pipeline_from_args

    pipeline = pipeline_from_args(args, "runtime.serve")
    if isinstance(pipeline, int):
        return pipeline
    import uvicorn

    app = create_app(pipeline, limits, token)
    metrics: Metrics = app.state.metrics
    # h11 pinned (not httptools when installed): the guards are written and tested against it
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                server_header=False, proxy_headers=False,
                http=guarded_h11(limits.header_timeout_s, lambda: metrics.error("header_timeout")),
                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                timeout_keep_alive=limits.keep_alive_s, limit_concurrency=limits.max_connections)
    return 0


if __name__ == "__main__":
    sys.exit(serve_cli())
