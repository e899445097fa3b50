"""Load test of the HTTP service: a real ``runtime.serve`` process, N requests, C clients.

Starts ``python -m engine.runtime.serve`` on a bundle (default: the flagship's
``runs/nameplates/build/local-cpu/bundle`` when it exists, else an fp32 bundle built here from
the shipped base weights: the MobileNetV3 DBNet + conv CRNN at max side 640, what a real
deployment runs), posts images (the bundle's val/ images, else generated nameplates) as raw
``image/jpeg`` bodies from C threads with keep-alive connections (stdlib http.client), and
reports per client count: requests/s, latency p50/p90/p99 (client side, queueing included),
the server's own inference p50 (``latency_ms`` in the answers), 503s and other errors, and the
most predictions the server ran at once (/metrics).  Prints a table and writes
bench/results/serve_load.json atomically.

    python bench/serve_load.py [--bundle DIR] [--requests 100] [--clients 1,4]
                               [--server-concurrency 1] [--queue 8]
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from engine.fsutil import atomic_write_json

ROOT = Path(__file__).resolve().parent.parent
FLAGSHIP = ROOT / "runs" / "nameplates" / "build" / "local-cpu" / "bundle"


def build_base_bundle(work: Path, threads: int) -> tuple[Path, list[Path]]:
    """An fp32 bundle from the shipped base weights, and generated nameplate images."""
    import cv2

    from engine.compress.export import export_onnx
    from engine.data.synth import generate_dataset
    from engine.deploy.bundle import build_bundle
    from engine.runtime.preprocess import detector_input, recognizer_input
    from engine.training.pretrained import BASE_WEIGHTS_DIR
    from engine.training.tasks import model_from_checkpoint

    images = generate_dataset(work / "images", count=8, seed=4242)
    rgb = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in images[:2]]
    det, det_meta = model_from_checkpoint(BASE_WEIGHTS_DIR / "detector_dbnet_mobilenetv3.pt")
    rec, rec_meta = model_from_checkpoint(BASE_WEIGHTS_DIR / "recognizer_crnn_conv_h32.pt")
    export_onnx(det, "detector", work / "detector.onnx",
                [detector_input(rgb[0], 640)[0], detector_input(rgb[1], 512)[0]], simplify=False)
    crops = [img[100:140, 50:300] for img in rgb]
    export_onnx(rec, "recognizer", work / "recognizer.onnx",
                [recognizer_input(crops, 32, 320), recognizer_input(crops[:1], 32, 160)],
                simplify=False)
    pp = det_meta["postprocess"]
    bundle = build_bundle(
        work / "bundle", models={"fp32": {"detector": work / "detector.onnx",
                                          "recognizer": work / "recognizer.onnx"}},
        active="fp32", charset=rec_meta["charset"],
        detector={"input": "input", "max_side": 640},
        recognizer={"input": "input", "height": 32, "max_width": 320, "batch": 8},
        postprocess={"thresh": pp["thresh"], "box_thresh": pp["box_thresh"],
                     "unclip_ratio": pp["unclip_ratio"], "min_text_score": 0.0},
        threads=threads, providers=["CPUExecutionProvider"], runtime="onnxruntime",
        target="local-cpu", arch=platform.machine(), recipe={"name": "serve-load", "hash": "0" * 16},
    )
    return bundle, images


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def start_server(bundle: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cmd = [sys.executable, "-m", "engine.runtime.serve", "--bundle", str(bundle), "--port",
           str(port), "--concurrency", str(args.server_concurrency), "--queue", str(args.queue),
           "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if _get(port, "/healthz")[0] == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.25)
    proc.terminate()
    raise SystemExit("server did not answer /healthz within 120 s")


def load(port: int, bodies: list[bytes], n: int, clients: int) -> dict[str, Any]:
    """``n`` POST /ocr from ``clients`` threads, each on its own keep-alive connection."""
    import json

    lock = threading.Lock()
    next_i = [0]
    latencies: list[float] = []
    server_ms: list[float] = []
    statuses: dict[str, int] = {}

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= n:
                break
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/ocr", body=bodies[i % len(bodies)],
                             headers={"Content-Type": "image/jpeg"})
                resp = conn.getresponse()
                raw = resp.read()
                status = str(resp.status)
            except (OSError, http.client.HTTPException) as exc:
                status, raw = type(exc).__name__, b""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(ms)
                    server_ms.append(float(json.loads(raw)["latency_ms"]))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    ok = statuses.get("200", 0)
    return {
        "clients": clients, "requests": n, "ok": ok, "busy_503": statuses.get("503", 0),
        "errors": n - ok - statuses.get("503", 0), "statuses": statuses,
        "wall_s": round(wall, 3), "requests_per_s": round(ok / wall, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p90_ms": round(float(np.percentile(lat, 90)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "server_inference_p50_ms": round(float(np.median(server_ms)), 1) if server_ms else None,
    }


def _metric(port: int, name: str) -> float | None:
    status, body = _get(port, "/metrics")
    for line in body.decode().splitlines() if status == 200 else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help=f"bundle directory (default: {FLAGSHIP.relative_to(ROOT)} "
                                     "if built, else one from the base weights)")
    ap.add_argument("--requests", type=int, default=100, help="requests per client count")
    ap.add_argument("--clients", default="1,4", help="comma-separated concurrent clients")
    ap.add_argument("--server-concurrency", type=int, default=1)
    ap.add_argument("--queue", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of a built bundle")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve_load.json"))
    a = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    try:
        if a.bundle:
            bundle, source = Path(a.bundle), "argument"
        elif (FLAGSHIP / "manifest.json").is_file():
            bundle, source = FLAGSHIP, "flagship"
        else:
            print("building an fp32 bundle from the base weights ...", flush=True)
            bundle, _ = build_base_bundle(work, a.threads)
            source = "base weights (fp32)"
        images = sorted((bundle / "val" / "images").glob("*"))
        if not images:
            from engine.data.synth import generate_dataset

            images = generate_dataset(work / "load-images", count=8, seed=4242)
        bodies = [p.read_bytes() for p in images]
        proc, port = start_server(bundle, a)
        try:
            load(port, bodies[:2], 4, 1)  # warm-up: sessions, allocator, first decode
            rows = [load(port, bodies, a.requests, int(c)) for c in a.clients.split(",")]
            inflight_max = _metric(port, "ocr_inflight_predictions_max")
            _, info = _get(port, "/info")
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import json

    meta = json.loads(info)
    print(f"bundle: {bundle} ({source}; {meta.get('precision')}, threads {meta.get('threads')}, "
          f"detector max side {meta['detector']['max_side']}); server concurrency "
          f"{a.server_concurrency}, queue {a.queue}; {len(bodies)} images")
    head = f"{'clients':>7} {'requests':>8} {'ok':>5} {'503':>5} {'errors':>6} {'req/s':>7} " \
           f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'infer p50':>9}"
    print(head)
    for r in rows:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['ok']:>5} {r['busy_503']:>5} "
              f"{r['errors']:>6} {r['requests_per_s']:>7.2f} {r['p50_ms']:>8.1f} "
              f"{r['p90_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['server_inference_p50_ms'] or 0:>9.1f}")
    print(f"most predictions at once (server /metrics): {inflight_max}")
    result = {
        "benchmark": "serve_load",
        "bundle": str(bundle), "bundle_source": source,
        "bundle_hash": meta.get("bundle_hash"), "precision": meta.get("precision"),
        "threads": meta.get("threads"), "detector_max_side": meta["detector"]["max_side"],
        "server_concurrency": a.server_concurrency, "queue": a.queue,
        "inflight_max": inflight_max, "images": [p.name for p in images],
        "python": sys.version.split()[0], "machine": platform.machine(),
        "cpu_count": os.cpu_count(), "load_avg": os.getloadavg(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "results": rows,
    }
    atomic_write_json(a.out, result)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
