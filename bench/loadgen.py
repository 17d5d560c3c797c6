"""A closed-loop HTTP load generator and a worker-memory sampler, for loopback servers only."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import psutil
import requests

WORKER_MARK = "model_service_worker"


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    answers: list = field(repr=False)

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def summary(self) -> dict:
        p50, p90, p99 = np.percentile(self.latencies_ms, [50, 90, 99])
        return {"concurrency": self.concurrency, "requests": self.requests, "throughput": self.throughput,
                "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "errors": self.errors}


def closed_loop(url: str, bodies: list[tuple[bytes, str]], concurrency: int, headers: dict | None = None,
                timeout: float = 300) -> LoadResult:
    """`concurrency` clients, each sending its next request as soon as the last is answered.

    Every body is sent once, in order of availability; answers come back in body order.
    """
    answers: list = [None] * len(bodies)
    latencies: list = [0.0] * len(bodies)
    errors = [0]
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()

    def client():
        with requests.Session() as session:  # keep-alive: one connection per client
            while True:
                with lock:
                    i = next(cursor, None)
                if i is None:
                    return
                body, content_type = bodies[i]
                started = time.perf_counter()
                try:
                    reply = session.post(url, data=body, headers={"Content-Type": content_type, **(headers or {})},
                                         timeout=timeout)
                    ok = reply.status_code == 200
                    answers[i] = reply.json() if ok else None
                except requests.RequestException:
                    ok = False
                latencies[i] = (time.perf_counter() - started) * 1000
                if not ok:
                    with lock:
                        errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return LoadResult(concurrency, len(bodies), time.perf_counter() - started, latencies, errors[0], answers)


class WorkerMemory:
    """Samples the resident memory of every TorchServe worker; keeps each one's peak (MB)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peaks: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for proc in psutil.process_iter(["cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or [])
                if WORKER_MARK in cmd and proc.info["memory_info"]:
                    rss = proc.info["memory_info"].rss / 2**20
                    self.peaks[proc.pid] = max(self.peaks.get(proc.pid, 0.0), rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return max(self.peaks.values(), default=0.0)
