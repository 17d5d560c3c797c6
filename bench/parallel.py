"""Work run in fresh processes that start together from a barrier: a rate is all items over the span from the
first start to the last finish, the median over repetitions. The in-process ceiling and the GPU step use it."""

from __future__ import annotations

import multiprocessing as mp
import queue
import statistics
import time
from typing import Any, Callable

RESULT_TIMEOUT_S = 1800


def _one(work: Callable[[int, int], Callable[[], int]], part: int, parts: int, reps: int, barrier, results) -> None:
    run = work(part, parts)  # loads, and runs the first-call paths untimed
    for rep in range(reps):
        barrier.wait()
        started = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
        items = run()
        results.put((rep, started, time.perf_counter(), items))


def rate(work: Callable[[int, int], Callable[[], int]], processes: int, reps: int,
         timeout_s: float = RESULT_TIMEOUT_S) -> float:
    """Items/s of `processes` processes; `work(part, parts)` (picklable) sets one up and returns its timed pass,
    which answers how many items it did."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_one, args=(work, part, processes, reps, barrier, results), daemon=True)
             for part in range(processes)]
    for proc in procs:
        proc.start()
    done: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(done) < processes * reps:
            try:
                done.append(results.get(timeout=1.0))
            except queue.Empty:
                failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(f"worker process(es) exited with {failed}" if failed
                                       else f"no result in {timeout_s} s") from None
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    rates = []
    for rep in range(reps):
        passes = [d for d in done if d[0] == rep]
        rates.append(sum(d[3] for d in passes) / (max(d[2] for d in passes) - min(d[1] for d in passes)))
    return statistics.median(rates)
