"""Prometheus metrics of the HTTP service (runtime.serve), rendered by hand in the text
exposition format 0.0.4: devices have no client library.  The standard library only."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

__all__ = ["KNOWN_PATHS", "LATENCY_BUCKETS", "Histogram", "Metrics"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: paths counted under their own label; anything else is counted as "other" (bounded labels)
KNOWN_PATHS = ("/ocr", "/healthz", "/metrics", "/info", "/")


def _escape(label_value: str) -> str:
    """A Prometheus label value: backslash, double quote and newline escaped."""
    return label_value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Histogram:
    """Cumulative-bucket histogram as Prometheus expects (``le`` upper bounds, +Inf last)."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        for k, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[k] += 1
                break
        else:
            self.counts[-1] += 1
        self.total += value

    def render(self, name: str) -> list[str]:
        lines, cum = [], 0
        for bound, count in zip(self.buckets, self.counts[:-1], strict=True):
            cum += count
            lines.append(f'{name}_bucket{{le="{bound:g}"}} {cum}')
        cum += self.counts[-1]
        lines += [f'{name}_bucket{{le="+Inf"}} {cum}', f"{name}_sum {self.total:.6f}",
                  f"{name}_count {cum}"]
        return lines


class Metrics:
    """Counters and gauges of one server process, rendered by hand in the Prometheus text
    format (no client library on devices).  Updated from the event loop and from inference
    threads, hence the lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.errors: Counter[str] = Counter()
        self.request_seconds = Histogram()
        self.inference_seconds = Histogram()
        self.inflight = 0
        self.inflight_max = 0
        self.queued = 0
        self.started = time.time()

    def request(self, method: str, path: str, status: int, seconds: float) -> None:
        path = path if path in KNOWN_PATHS else "other"
        with self.lock:
            self.requests[(method, path, status)] += 1
            if path == "/ocr":
                self.request_seconds.observe(seconds)

    def error(self, reason: str) -> None:
        with self.lock:
            self.errors[reason] += 1

    def render(self, limits: Any, info: dict[str, str]) -> str:
        """The exposition text; ``limits`` is the service's Limits (concurrency, queue)."""
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[str]) -> None:
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}", *samples])

        with self.lock:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(info.items()))
            metric("ocr_build_info", "gauge", "Bundle served by this process.", [f"ocr_build_info{{{labels}}} 1"])
            metric("ocr_http_requests_total", "counter", "HTTP requests by method, path and status code.",
                   [f'ocr_http_requests_total{{method="{m}",path="{p}",code="{c}"}} {n}'
                    for (m, p, c), n in sorted(self.requests.items())])
            metric("ocr_request_errors_total", "counter", "Rejected or failed /ocr requests by reason.",
                   [f'ocr_request_errors_total{{reason="{r}"}} {n}' for r, n in sorted(self.errors.items())])
            metric("ocr_request_duration_seconds", "histogram",
                   "Wall time of POST /ocr requests, any status, queueing included.",
                   self.request_seconds.render("ocr_request_duration_seconds"))
            metric("ocr_inference_duration_seconds", "histogram",
                   "Decode + detector + recognizer time of one image.",
                   self.inference_seconds.render("ocr_inference_duration_seconds"))
            metric("ocr_inflight_predictions", "gauge", "Predictions running now.",
                   [f"ocr_inflight_predictions {self.inflight}"])
            metric("ocr_inflight_predictions_max", "gauge",
                   "Most predictions that ran at the same time since start.",
                   [f"ocr_inflight_predictions_max {self.inflight_max}"])
            metric("ocr_queued_requests", "gauge", "Requests admitted and waiting for a slot.",
                   [f"ocr_queued_requests {self.queued}"])
            metric("ocr_concurrency_limit", "gauge", "--concurrency", [f"ocr_concurrency_limit {limits.concurrency}"])
            metric("ocr_queue_limit", "gauge", "--queue", [f"ocr_queue_limit {limits.queue}"])
            metric("process_start_time_seconds", "gauge", "Start time, seconds since the epoch.",
                   [f"process_start_time_seconds {self.started:.3f}"])
        return "\n".join(out) + "\n"
