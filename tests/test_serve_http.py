"""Hostile HTTP clients against the real service (engine/runtime/serve_http.py), over real sockets.

One server process on 127.0.0.1 with short limits (0.25 MB bodies, 1 s for headers, 2 s for a
body, one prediction and no queue), spoken to with raw sockets where a client must misbehave
byte by byte and with http.client where it behaves like a common client.  Every loop here is
bounded by a deadline and stops by itself; each test says how long the server may take.
These are the HTTP rows of the README's "Hostile input" table.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from collections.abc import Iterator

import pytest
from test_runtime_pipeline import make_hand_bundle
from test_serve import ROOT, Server, _clean_env

MAX_BODY = int(0.25 * 1024 * 1024)
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0  # also the linger time (min(10 s, body timeout))
DRAIN = 4 * MAX_BODY
SLACK = 3.0  # scheduling on a busy 2-core machine


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    bundle = make_hand_bundle(tmp_path_factory.mktemp("http"), "http")
    srv = Server([sys.executable, "-m", "engine.runtime.serve", "--bundle", str(bundle),
                  "--max-body-mb", "0.25", "--header-timeout", str(HEADER_TIMEOUT),
                  "--body-timeout", str(BODY_TIMEOUT), "--concurrency", "1", "--queue", "0"],
                 cwd=ROOT, env=_clean_env())
    yield srv
    srv.stop()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(0.05)
    return sock


def _drip(sock: socket.socket, data: bytes, step: int, every: float, limit_s: float) -> tuple[bytes, float, str]:
    """Send ``data`` ``step`` bytes at a time, ``every`` seconds apart, reading what the server
    sends in between, until the server closes the connection or ``limit_s`` passes.

    Returns (bytes received, seconds until the server ended the exchange or the limit, how it
    ended: "closed", "reset" or "still open")."""
    got, t0, sent = b"", time.monotonic(), 0
    while time.monotonic() - t0 < limit_s:
        if sent < len(data):
            try:
                sock.sendall(data[sent : sent + step])
                sent += step
            except OSError:
                return got, time.monotonic() - t0, "reset"
        deadline = time.monotonic() + every
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return got, time.monotonic() - t0, "reset"
            if not chunk:
                return got, time.monotonic() - t0, "closed"
            got += chunk
    return got, time.monotonic() - t0, "still open"


def _detail(answer: bytes) -> str:
    return str(json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"])


def test_oversized_upload_sent_whole_gets_a_readable_413(server):
    """http.client sends the whole body before it reads anything: it sees the 413 only because
    the refused body is drained, not because the server closed on it."""
    body = b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * MAX_BODY)
    for chunked in (False, True):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        t0 = time.monotonic()
        payload = (body[i : i + 65536] for i in range(0, len(body), 65536)) if chunked else body
        conn.request("POST", "/ocr", body=payload, headers={"Content-Type": "image/png"},
                     encode_chunked=chunked)
        resp = conn.getresponse()
        doc = json.loads(resp.read())
        assert resp.status == 413 and "over the limit" in doc["detail"], doc
        assert resp.getheader("connection") == "close"
        assert time.monotonic() - t0 < SLACK
        conn.close()
    metrics = server.metrics()
    assert metrics['ocr_request_errors_total{reason="too_large"}'] >= 2
    assert metrics['ocr_http_requests_total{method="POST",path="/ocr",code="413"}'] >= 2


def test_refused_upload_that_keeps_coming_is_cut_off(server):
    """A 1 GB declaration dripped 1 KB at a time: 413 at once, the connection closed after the
    linger time; a fast sender of far more than the drain bound is cut off as soon as it is
    reached (the old server drained forever)."""
    sock = _connect(server.port)
    sock.sendall(b"POST /ocr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 1000000000\r\n\r\n")
    t0 = time.monotonic()
    got, seconds, how = _drip(sock, b"\0" * 10_000_000, 1024, 0.02, BODY_TIMEOUT + 10)
    sock.close()
    assert got.startswith(b"HTTP/1.1 413 ") and "1000000000 bytes" in _detail(got)
    assert how in ("closed", "reset") and BODY_TIMEOUT - 0.5 < seconds < BODY_TIMEOUT + SLACK, (how, seconds)
    assert time.monotonic() - t0 < BODY_TIMEOUT + SLACK

    sock = _connect(server.port)
    sock.sendall(b"POST /ocr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 100000000\r\n\r\n")
    got, seconds, how = _drip(sock, b"\0" * 100_000_000, 256 * 1024, 0.0, 20)
    sock.close()
    assert how in ("closed", "reset") and seconds < SLACK, (how, seconds)


def test_expect_100_continue_is_refused_before_the_body_is_sent(server):
    sock = _connect(server.port)
    sock.sendall(b"POST /ocr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 100000000\r\nExpect: 100-continue\r\n\r\n")
    got, seconds, how = _drip(sock, b"", 1, 0.05, BODY_TIMEOUT + 10)
    sock.close()
    # no "100 Continue", the final answer at once, and no lingering for a body that never comes
    assert got.startswith(b"HTTP/1.1 413 ") and b"100 Continue" not in got
    assert how == "closed" and seconds < 1.0, (how, seconds)


def test_slow_headers_are_cut_off(server):
    """Slow loris: request line and headers one byte every 50 ms (the whole request would take
    ~30 s) -> 408 after the header timeout, on a new connection and on a kept-alive one."""
    slow = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 600 + b"\r\n\r\n"
    sock = _connect(server.port)
    got, seconds, how = _drip(sock, slow, 1, 0.05, HEADER_TIMEOUT + 20)
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 ") and "did not arrive within 1 s" in _detail(got), got
    assert how in ("closed", "reset") and HEADER_TIMEOUT - 0.3 < seconds < HEADER_TIMEOUT + SLACK

    sock = _connect(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first, _, how = _drip(sock, b"", 1, 0.5, 0.5)  # the first answer; the connection stays open
    assert first.startswith(b"HTTP/1.1 200 ") and how == "still open"
    got, seconds, how = _drip(sock, slow, 1, 0.05, HEADER_TIMEOUT + 20)
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 ") and how in ("closed", "reset"), (got, how)
    assert seconds < HEADER_TIMEOUT + SLACK
    assert server.metrics()['ocr_request_errors_total{reason="header_timeout"}'] >= 2


def test_slow_body_gets_408(server):
    """Headers at once, then the body one byte every 50 ms (it would take ~50 s)."""
    sock = _connect(server.port)
    sock.sendall(b"POST /ocr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                 b"Content-Length: 1000\r\n\r\n")
    got, seconds, how = _drip(sock, b"\x89PNG\r\n\x1a\n" + b"\0" * 992, 1, 0.05, BODY_TIMEOUT + 20)
    sock.close()
    assert got.startswith(b"HTTP/1.1 408 ") and "within 2 s (--body-timeout)" in _detail(got), got
    assert how in ("closed", "reset") and BODY_TIMEOUT - 0.3 < seconds < BODY_TIMEOUT + SLACK
    assert server.metrics()['ocr_request_errors_total{reason="body_timeout"}'] >= 1


def test_oversized_headers_get_400(server):
    """h11 buffers at most 16 KB of an incomplete request head (one 64 KB read can hold more)."""
    sock = _connect(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
    got, seconds, how = _drip(sock, b"", 1, 0.05, 10)
    sock.close()
    assert got.startswith(b"HTTP/1.1 400 ") and how in ("closed", "reset") and seconds < SLACK


def test_too_many_connections_get_503(server):
    """4 x max_active open connections (max_active = 2 x (1 + 0) + 8 = 10): the next request is
    answered 503 by uvicorn before any app code runs; the idle ones are then cut by the header
    timeout, and the service answers again."""
    status, _, raw = server.request("GET", "/info")
    limits = json.loads(raw)["limits"]
    assert status == 200 and limits["max_connections"] == 40
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
            for _ in range(limits["max_connections"])]
    try:
        time.sleep(0.3)  # let the server accept them all
        status, _, raw = server.request("GET", "/healthz")
        assert status == 503, raw
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
    while server.request("GET", "/healthz")[0] != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_info_documents_the_http_limits(server):
    status, _, raw = server.request("GET", "/info")
    limits = json.loads(raw)["limits"]
    assert status == 200 and limits == {
        "max_body_bytes": MAX_BODY, "max_pixels": 40_000_000, "concurrency": 1, "queue": 0,
        "max_active": 10, "max_connections": 40, "max_header_bytes": 16384,
        "header_timeout_s": HEADER_TIMEOUT, "body_timeout_s": BODY_TIMEOUT, "keep_alive_s": 5,
        "linger_s": BODY_TIMEOUT, "drain_bytes": DRAIN, "token": False}


def test_server_log_is_quiet_about_it(server):
    """Refusals are answers, not crashes: no traceback in the server's output."""
    assert "Traceback" not in server.log.getvalue(), server.log.getvalue()[-3000:]

