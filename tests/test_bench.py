"""The benchmark harness's own arithmetic (speed itself is measured by `make bench`, never here)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from marport.bench.loadgen import LoadResult, client_core
from marport.bench.sentiment_bench import serving_overhead_ms


def test_each_served_request_is_paired_with_the_forward_of_its_own_text():
    forward = {"per_text_ms": [50.0, 100.0]}
    runs = [LoadResult(1, 2, 1.0, [55.0, 103.0], 0, []), LoadResult(1, 2, 1.0, [52.0, 110.0], 0, [])]
    got = serving_overhead_ms(runs, forward)
    extra = [5.0, 3.0, 2.0, 10.0]
    assert got["requests"] == 4
    assert got["p50_ms"] == pytest.approx(np.percentile(extra, 50))
    assert got["p99_ms"] == pytest.approx(np.percentile(extra, 99))


def test_clients_run_on_one_core_and_the_caller_gets_every_core_back():
    allowed = os.sched_getaffinity(0)
    seen = {}
    with client_core() as core:
        thread = threading.Thread(target=lambda: seen.update(mask=os.sched_getaffinity(0)))
        thread.start()
        thread.join()
    assert seen["mask"] == {core} and core in allowed
    assert os.sched_getaffinity(0) == allowed
