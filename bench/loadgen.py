"""A closed-loop HTTP load generator and a worker-memory sampler, for loopback servers only."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import requests

WORKER_MARK = "model_service_worker"


@contextlib.contextmanager
def client_core():
    """Keep the load generator's threads on one core while they run.

    The clients stand in for remote callers, but here they share the server's cores.
    Unpinned, a lone request's handler ran about 6 ms (8%) slower in the worker than
    the same call in-process (most likely the kernel placing the woken worker beside
    the client that had just sent the request); with the clients on one core the gap
    was 1-3 ms. Pinning the Java front end alone did not close it. Threads started
    inside inherit the mask; the caller gets every core back afterwards.
    """
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield min(allowed)
    finally:
        os.sched_setaffinity(0, allowed)


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
    with client_core():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return LoadResult(concurrency, len(bodies), time.perf_counter() - started, latencies, errors[0], answers)


def jit_cpu_s(pid: int) -> float:
    """CPU seconds the JVM's JIT compiler threads have spent so far (Linux /proc; 0 elsewhere)."""
    ticks = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if "CompilerThre" in (task / "comm").read_text():
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # a compiler thread that ended between listing and reading
    return ticks / os.sysconf("SC_CLK_TCK")


# Java's JIT keeps compiling the front end's request path for the first thousand or so large
# requests; its compiler threads then take CPU from the model on a 2-core machine. Timed runs
# start once the compilers use less than this share of one core over a warm-up round.
JIT_SETTLED_SHARE = 0.05


def warm_up(url: str, body: tuple[bytes, str], headers: dict, java_pid: int | None, concurrency: int = 8,
            round_requests: int = 64, max_seconds: float = 180) -> dict:
    """Rounds of requests until Java's JIT has settled (and torch's first-call paths have run)."""
    started = time.perf_counter()
    rounds, share = 0, float("nan")
    while True:
        jit_before, round_started = jit_cpu_s(java_pid) if java_pid else 0.0, time.perf_counter()
        closed_loop(url, [body] * round_requests, concurrency, headers)
        rounds += 1
        if java_pid is None:
            break
        share = max(jit_cpu_s(java_pid) - jit_before, 0.0) / (time.perf_counter() - round_started)
        if share < JIT_SETTLED_SHARE or time.perf_counter() - started > max_seconds:
            break
    return {"requests": rounds * round_requests, "seconds": time.perf_counter() - started, "jit_share": share}


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
