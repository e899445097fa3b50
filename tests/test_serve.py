"""The HTTP service (engine/runtime/serve.py) as a real server process, spoken to over TCP.

The bundle is the hand-made one of test_runtime_pipeline (two tiny ONNX graphs whose output is
known exactly: the painted plate reads "BDCAA"), so every 200 answer can be checked for the
right text.  Two servers run: the device way (``python -m runtime.serve`` inside the bundle
directory, token required, small limits) and the build-host way (``python -m engine.cli
serve --bundle DIR``) for the concurrency run.  Requests use the standard library's
http.client, which also sends the chunked and headers-only bodies the limits are tested with.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from test_runtime_pipeline import CHARSET, _plate, make_hand_bundle

from engine.runtime.bundle_manifest import verify_bundle
from engine.runtime.pipeline import predict_cli

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY_MB = 0.25
CONCURRENCY = 2


# ------------------------------------------------------------------------------ helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OCR_TEST_TOKEN")}
    env.update(extra)
    return env


class Server:
    """A server subprocess on a free port; waits for /healthz, stops it on exit."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str]):
        self.port = _free_port()
        self.log = io.StringIO()
        self.proc = subprocess.Popen([*cmd, "--port", str(self.port), "--log-level", "warning"],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log.getvalue()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/healthz")[0] == 200:
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server did not answer /healthz in 90 s:\n{self.log.getvalue()}")

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def metrics(self) -> dict[str, float]:
        status, _, body = self.request("GET", "/metrics", headers=AUTH)
        assert status == 200, body
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _png(img_rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = "----ocr-test-boundary-7d1f"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _png_bomb(width: int, height: int) -> bytes:
    """A VALID 1-bit PNG of width x height zero pixels: ~100 KB on the wire for 30000², 2.7 GB
    once OpenCV decodes it to 8-bit RGB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row * 1000) for _ in range(height // 1000))
    idat += comp.compress(row * (height % 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_hand_bundle(tmp_path_factory.mktemp("serve"), "serve")


@pytest.fixture(scope="module")
def device_server(bundle) -> Iterator[Server]:
    """As a device runs it: from the bundle directory, its own copy of the runtime, a token."""
    server = Server([sys.executable, "-m", "runtime.serve", "--token-env", "OCR_TEST_TOKEN",
                     "--max-body-mb", str(MAX_BODY_MB), "--max-megapixels", "4",
                     "--concurrency", "1", "--queue", "2"],
                    cwd=bundle, env=_clean_env(OCR_TEST_TOKEN=TOKEN, PYTHONDONTWRITEBYTECODE="1"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plate_png() -> bytes:
    return _png(_plate()[0])


# ------------------------------------------------------------------------------ tests


def test_ocr_answers_what_predict_json_prints(device_server, bundle, plate_png, tmp_path, capsys):
    (tmp_path / "plate.png").write_bytes(plate_png)
    assert predict_cli(["--bundle", str(bundle), "--json", str(tmp_path / "plate.png")]) == 0
    expected = json.loads(capsys.readouterr().out)[0]
    assert "".join(line["text"] for line in expected["lines"]) == "BDCAA"

    body, ctype = _multipart("file", "plate.png", plate_png)
    status, _, raw = device_server.request("POST", "/ocr", body, {**AUTH, "Content-Type": ctype})
    assert status == 200, raw
    doc = json.loads(raw)
    assert set(doc) == {"image", "lines", "latency_ms"} and doc["image"] == "plate.png"
    assert doc["lines"] == expected["lines"] and doc["latency_ms"] > 0

    status, _, raw = device_server.request("POST", "/ocr?name=raw.png", plate_png,
                                           {**AUTH, "Content-Type": "image/png"})
    assert status == 200, raw
    doc = json.loads(raw)
    assert doc["image"] == "raw.png" and doc["lines"] == expected["lines"]


def test_token_is_required_except_for_healthz(device_server, plate_png):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        status, hdrs, raw = device_server.request(
            "POST", "/ocr", plate_png, {**headers, "Content-Type": "image/png"})
        assert status == 401 and hdrs["www-authenticate"] == "Bearer", raw
        assert TOKEN not in raw.decode()
    assert device_server.request("GET", "/metrics")[0] == 401
    assert device_server.request("GET", "/info")[0] == 401
    assert device_server.request("GET", "/healthz")[0] == 200
    assert device_server.request("GET", "/info", headers=AUTH)[0] == 200
    assert TOKEN not in device_server.log.getvalue()


def test_body_size_is_bounded_with_and_without_content_length(device_server):
    limit = int(MAX_BODY_MB * 1024 * 1024)
    # declared too large: refused from the headers alone, the body is never sent
    conn = http.client.HTTPConnection("127.0.0.1", device_server.port, timeout=30)
    conn.putrequest("POST", "/ocr")
    for k, v in {**AUTH, "Content-Type": "image/png", "Content-Length": str(50 * limit)}.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and b"over the limit" in resp.read()
    conn.close()
    # chunked, no Content-Length: counted while reading
    chunks = (b"\x89PNG\r\n\x1a\n" + b"\0" * 65536 for _ in range(limit // 65536 + 2))
    conn = http.client.HTTPConnection("127.0.0.1", device_server.port, timeout=30)
    conn.request("POST", "/ocr", body=chunks, headers={**AUTH, "Content-Type": "image/png"},
                 encode_chunked=True)
    resp = conn.getresponse()
    assert resp.status == 413 and b"over the limit" in resp.read()
    conn.close()
    # just under the limit is read (and then judged as an image: zeros are none)
    status, _, raw = device_server.request("POST", "/ocr", b"\0" * (limit - 1),
                                           {**AUTH, "Content-Type": "image/png"})
    assert status == 400, raw


def test_non_images_get_415_or_400(device_server, plate_png):
    def post(body: bytes, ctype: str) -> tuple[int, str]:
        status, _, raw = device_server.request("POST", "/ocr", body, {**AUTH, "Content-Type": ctype})
        return status, json.loads(raw)["detail"]

    assert post(plate_png, "text/plain")[0] == 415
    assert post(plate_png, "application/octet-stream")[0] == 415
    status, detail = post(b"GIF89a" + b"\0" * 64, "image/gif")
    assert status == 415 and "GIF" in detail
    status, detail = post(b"this is not an image", "image/png")
    assert status == 400 and "not a PNG" in detail
    status, detail = post(plate_png[:200], "image/png")  # header intact, pixel data cut
    assert status == 400 and "cannot decode" in detail
    body, ctype = _multipart("upload", "plate.png", plate_png)  # wrong field name
    status, detail = post(body, ctype)
    assert status == 400 and "'file'" in detail
    status, _ = post(b"--nothing\r\n", "multipart/form-data; boundary=xyz")
    assert status == 400


def test_decompression_bomb_is_refused_without_decoding(device_server):
    bomb = _png_bomb(30000, 30000)
    assert len(bomb) < MAX_BODY_MB * 1024 * 1024  # gets past the body limit
    before = device_server.peak_rss_mb()
    status, _, raw = device_server.request("POST", "/ocr", bomb, {**AUTH, "Content-Type": "image/png"})
    assert status == 413, raw
    assert "30000x30000" in json.loads(raw)["detail"] and "megapixels" in json.loads(raw)["detail"]
    assert device_server.peak_rss_mb() < before + 200  # 2.7 GB had it been decoded
    assert device_server.request("GET", "/healthz")[0] == 200


def test_metrics_and_info(device_server, bundle, plate_png):
    device_server.request("POST", "/ocr", plate_png, {**AUTH, "Content-Type": "image/png"})
    device_server.request("POST", "/ocr", plate_png, {"Content-Type": "image/png"})
    m = device_server.metrics()
    assert m['ocr_http_requests_total{method="POST",path="/ocr",code="200"}'] >= 1
    assert m['ocr_http_requests_total{method="POST",path="/ocr",code="401"}'] >= 1
    assert m['ocr_request_errors_total{reason="unauthorized"}'] >= 1
    count = m["ocr_request_duration_seconds_count"]
    assert count >= 2 and m['ocr_request_duration_seconds_bucket{le="+Inf"}'] == count
    assert m['ocr_request_duration_seconds_bucket{le="0.005"}'] <= m['ocr_request_duration_seconds_bucket{le="10"}']
    assert m["ocr_inference_duration_seconds_count"] >= 1 and m["ocr_inference_duration_seconds_sum"] > 0
    assert m["ocr_inflight_predictions"] == 0 and m["ocr_inflight_predictions_max"] == 1
    assert m["ocr_concurrency_limit"] == 1 and m["ocr_queue_limit"] == 2
    hash12 = verify_bundle(bundle)["bundle_hash"][:12]
    assert any(k.startswith("ocr_build_info{") and hash12 in k for k in m)

    status, _, raw = device_server.request("GET", "/info", headers=AUTH)
    info = json.loads(raw)
    assert status == 200 and info["bundle_hash"] == verify_bundle(bundle)["bundle_hash"]
    assert "files" not in info and info["target"] == "local-cpu" and info["charset"] == CHARSET
    assert info["limits"]["max_body_bytes"] == int(MAX_BODY_MB * 1024 * 1024)
    assert info["limits"]["token"] is True and info["backend"].startswith("onnxruntime")
    status, _, raw = device_server.request("GET", "/openapi.json")
    assert status == 200 and "/ocr" in json.loads(raw)["paths"]


def test_fifty_concurrent_requests_respect_the_bound(bundle, plate_png):
    server = Server([sys.executable, "-m", "engine.cli", "serve", "--bundle", str(bundle),
                     "--concurrency", str(CONCURRENCY), "--queue", "4"], cwd=ROOT, env=_clean_env())
    try:
        barrier = threading.Barrier(50)
        results: list[tuple[int, dict[str, str], bytes]] = []
        lock = threading.Lock()

        def client() -> None:
            barrier.wait()
            res = server.request("POST", "/ocr", plate_png, {"Content-Type": "image/png"})
            with lock:
                results.append(res)

        threads = [threading.Thread(target=client) for _ in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(results) == 50  # every request was answered
        statuses = sorted(status for status, _, _ in results)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.count(200) >= CONCURRENCY
        for status, headers, raw in results:
            doc = json.loads(raw)
            if status == 200:
                assert "".join(line["text"] for line in doc["lines"]) == "BDCAA"
            else:
                assert headers["retry-after"] == "1" and "busy" in doc["detail"]
        m = server.metrics()
        assert 1 <= m["ocr_inflight_predictions_max"] <= CONCURRENCY
        assert m["ocr_inflight_predictions"] == 0 and m["ocr_queued_requests"] == 0
        assert m['ocr_http_requests_total{method="POST",path="/ocr",code="200"}'] == statuses.count(200)
        assert m.get('ocr_request_errors_total{reason="busy"}', 0) == statuses.count(503)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def busy_server(bundle) -> Iterator[Server]:
    """One prediction at a time and no queue, so a second image while one is read is refused."""
    server = Server([sys.executable, "-m", "engine.runtime.serve", "--bundle", str(bundle),
                     "--concurrency", "1", "--queue", "0"], cwd=ROOT, env=_clean_env())
    yield server
    server.stop()


def test_503_when_too_many_requests_are_in_progress(busy_server, plate_png):
    """2 x (concurrency + queue) + 8 = 10 uploads still sending their bodies hold every place;
    the next /ocr request is answered 503 before a byte of its body is read, other endpoints
    still answer, and once the uploads go away the service reads images again."""
    max_active = json.loads(busy_server.request("GET", "/info")[2])["limits"]["max_active"]
    assert max_active == 10
    holders = []
    try:
        for _ in range(max_active):
            sock = socket.create_connection(("127.0.0.1", busy_server.port), timeout=10)
            sock.sendall(b"POST /ocr HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 100000\r\n\r\n\x89PNG\r\n\x1a\n")
            holders.append(sock)
        deadline = time.monotonic() + 10
        while True:  # the last upload is in the app once the next one is refused
            status, headers, raw = busy_server.request("POST", "/ocr", plate_png,
                                                       {"Content-Type": "image/png"})
            if status == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status == 503, raw
        assert headers["retry-after"] == "1" and "too many requests in progress" in raw.decode()
        assert busy_server.request("GET", "/healthz")[0] == 200
    finally:
        for sock in holders:
            sock.close()
    deadline = time.monotonic() + 10
    while (status := busy_server.request("POST", "/ocr", plate_png, {"Content-Type": "image/png"})[0]) != 200:
        assert status == 503 and time.monotonic() < deadline, status
        time.sleep(0.05)
    m = busy_server.metrics()
    assert m['ocr_request_errors_total{reason="busy"}'] >= 1
    assert m['ocr_request_errors_total{reason="disconnected"}'] >= 1  # the holders went away
    assert "Traceback" not in busy_server.log.getvalue(), busy_server.log.getvalue()[-3000:]


def test_503_when_every_slot_and_the_queue_are_taken(busy_server, plate_png):
    """While one large image (6000x6000, 115 KB as PNG, ~0.5 s to decode) is being read, a
    second image finds the one slot taken and no queue: 503 with Retry-After, never a wait."""
    big = _png(np.zeros((6000, 6000, 3), np.uint8))
    refused = []
    for _attempt in range(5):  # each attempt needs the second request inside the first's ~0.5 s
        first: list[tuple[int, dict[str, str], bytes]] = []
        thread = threading.Thread(target=lambda out=first: out.append(busy_server.request(
            "POST", "/ocr?name=big.png", big, {"Content-Type": "image/png"})))
        thread.start()
        deadline = time.monotonic() + 30
        while thread.is_alive() and time.monotonic() < deadline:
            if busy_server.metrics()["ocr_inflight_predictions"] == 1:
                status, headers, raw = busy_server.request("POST", "/ocr", plate_png,
                                                           {"Content-Type": "image/png"})
                if status == 503:
                    refused.append((headers, json.loads(raw)))
                else:
                    assert status == 200, raw  # the big one finished first: try again
                break
            time.sleep(0.005)
        thread.join(60)
        assert first and first[0][0] == 200 and json.loads(first[0][2])["image"] == "big.png"
        if refused:
            break
    assert refused, "no second request ever met the first one predicting"
    headers, doc = refused[0]
    assert headers["retry-after"] == "1" and doc["detail"] == "busy: all prediction slots and the queue are full"
    m = busy_server.metrics()
    assert m["ocr_queued_requests"] == 0 and m["ocr_inflight_predictions"] == 0
    assert m['ocr_http_requests_total{method="POST",path="/ocr",code="503"}'] >= 1


def test_startup_refusals_and_warnings(bundle):
    base = [sys.executable, "-m", "engine.runtime.serve", "--bundle", str(bundle)]
    run = subprocess.run([*base, "--token-env", "OCR_TEST_TOKEN"], cwd=ROOT, env=_clean_env(),
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2 and "OCR_TEST_TOKEN" in run.stderr and "unset or empty" in run.stderr
    # 0.0.0.0 without a token warns (a missing bundle then stops it before it binds)
    run = subprocess.run([*base[:-1], str(bundle / "nope"), "--host", "0.0.0.0"], cwd=ROOT,
                         env=_clean_env(), capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 1 and "WARNING: listening on 0.0.0.0 without a token" in run.stderr
    assert "nope" in run.stderr
    run = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "-h"], cwd=ROOT,
                         env=_clean_env(), capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0 and "recipe serve" in run.stdout and "--token-env" in run.stdout


def test_bundle_ships_the_unit_and_separate_serve_requirements(bundle, tmp_path):
    files = verify_bundle(bundle)["files"]
    assert {"ocr-recipe.service", "requirements-serve.txt", "runtime/serve.py"} <= set(files)
    serve_req = (bundle / "requirements-serve.txt").read_text()
    assert "fastapi" in serve_req and "uvicorn" in serve_req and "python-multipart" in serve_req
    assert "fastapi" not in (bundle / "requirements.txt").read_text()
    unit = (bundle / "ocr-recipe.service").read_text()
    for needle in ("WorkingDirectory=@INSTALL_DIR@/current", "-m runtime.serve",
                   "--token-env OCR_RECIPE_TOKEN", "EnvironmentFile=", "Restart=on-failure",
                   "NoNewPrivileges=yes", "ProtectSystem=strict", "--host 127.0.0.1"):
        assert needle in unit, needle
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed: unit syntax not verified")
    install = tmp_path / "inst"
    (install / "venv" / "bin").mkdir(parents=True)
    (install / "venv" / "bin" / "python").symlink_to(sys.executable)
    (install / "current").symlink_to(bundle)
    filled = tmp_path / "ocr-recipe.service"
    filled.write_text(unit.replace("@INSTALL_DIR@", str(install)).replace("@USER@", "root"))
    run = subprocess.run([analyze, "verify", str(filled)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert run.returncode == 0 and "Unknown" not in run.stderr and "ignoring" not in run.stderr, run.stderr


def test_only_serve_imports_the_serving_packages():
    """The rest of the runtime never imports the serve modules (devices that only run
    runtime.check have no FastAPI), and serve*.py need nothing beyond the runtime's packages
    and requirements-serve.txt."""
    runtime = ROOT / "engine" / "runtime"
    allowed = {"numpy", "onnxruntime", "cv2", "pyclipper", "fastapi", "starlette", "uvicorn"}
    serving = {p.name for p in runtime.glob("serve*.py")}
    assert {"serve.py", "serve_http.py", "serve_images.py", "serve_metrics.py"} <= serving
    for path in sorted(runtime.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert path.name in serving or not (node.module or "").startswith("serve"), path.name
            elif path.name in serving and isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    top = name.split(".")[0]
                    assert top in allowed or top in sys.stdlib_module_names or node.level, (path.name, name)


@pytest.mark.slow
def test_bundle_serves_in_a_venv_without_torch(bundle, tmp_path, plate_png):
    """What a device installs to serve: requirements.txt + requirements-serve.txt, no torch, no
    engine; the bundle's own runtime/serve.py answers /ocr."""
    from test_runtime_venv import runtime_venv

    reqs = tmp_path / "requirements-all.txt"
    reqs.write_text((bundle / "requirements.txt").read_text()
                    + (bundle / "requirements-serve.txt").read_text())
    python = runtime_venv(reqs)
    probe = subprocess.run([str(python), "-c", "import torch"], cwd=tmp_path, env=_clean_env(),
                           capture_output=True, text=True, check=False)
    assert "No module named 'torch'" in probe.stderr
    server = Server([str(python), "-m", "runtime.serve"], cwd=bundle,
                    env=_clean_env(PYTHONDONTWRITEBYTECODE="1"))
    try:
        status, _, raw = server.request("POST", "/ocr", plate_png, {"Content-Type": "image/png"})
        assert status == 200, raw
        assert "".join(line["text"] for line in json.loads(raw)["lines"]) == "BDCAA"
        status, headers, raw = server.request("GET", "/")  # the page, from the bundle's copy
        assert status == 200 and b"page.js" in raw and "default-src 'none'" in headers["content-security-policy"]
    finally:
        server.stop()


@pytest.mark.parametrize("ext,params", [
    (".png", []), (".jpg", []), (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), (".bmp", []),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]), (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
])
def test_header_size_matches_what_opencv_decodes(ext, params):
    """The size the bomb guard reads from the header is the size OpenCV then allocates."""
    from engine.runtime.serve import image_size

    img = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    fmt, w, h = image_size(buf.tobytes())
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    assert (w, h) == (decoded.shape[1], decoded.shape[0]) == (53, 37)
    assert fmt == {".png": "png", ".jpg": "jpeg", ".bmp": "bmp", ".webp": "webp"}[ext]
