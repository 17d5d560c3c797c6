"""A closed-loop HTTP load generator for loopback servers, and the warm-up before anything is timed."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import requests


@contextlib.contextmanager
def client_core():
    """The clients' threads on one core while they run: they stand in for remote callers but share the server's
    cores, and left to roam they slowed a lone request's handler by about 6 ms (the kernel placed the woken worker
    beside the client that had just sent); the caller gets every core back afterwards."""
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
    """`concurrency` clients, each sending its next request as soon as the last is answered; every body is sent
    once, and the answers come back in body order."""
    answers: list = [None] * len(bodies)
    latencies: list = [0.0] * len(bodies)
    errors = [0]
    cursor = iter(range(len(bodies)))
    lock = threading.Lock()

    def client():
        with requests.Session() as session:  # keep-alive: one connection per client
            while (i := next_index()) is not None:
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

    def next_index() -> int | None:
        with lock:
            return next(cursor, None)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    with client_core():
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return LoadResult(concurrency, len(bodies), time.perf_counter() - started, latencies, errors[0], answers)


def warm_up(url: str, body: tuple[bytes, str], headers: dict, concurrency: int = 8, round_requests: int = 64,
            settled: float = 0.05, max_seconds: float = 180) -> dict:
    """Rounds of requests until a round is no more than `settled` faster than the one before: Java's JIT compiles
    the front end's request path over the first thousand or so requests, taking CPU from the model meanwhile."""
    started, rounds, last = time.perf_counter(), 0, 0.0
    while True:
        rate = closed_loop(url, [body] * round_requests, concurrency, headers).throughput
        rounds += 1
        if (last and rate <= (1 + settled) * last) or time.perf_counter() - started > max_seconds:
            break
        last = max(last, rate)
    return {"requests": rounds * round_requests, "seconds": time.perf_counter() - started}
