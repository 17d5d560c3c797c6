"""The benchmark harness's own arithmetic (speed itself is measured by `make bench`, never here)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.loadgen import LoadResult
from bench.run import serving_overhead_ms


def test_each_served_request_is_paired_with_the_forward_of_its_own_text():
    forward = {"per_text_ms": [50.0, 100.0]}
    runs = [LoadResult(1, 2, 1.0, [55.0, 103.0], 0, []), LoadResult(1, 2, 1.0, [52.0, 110.0], 0, [])]
    got = serving_overhead_ms(runs, forward)
    extra = [5.0, 3.0, 2.0, 10.0]
    assert got["requests"] == 4
    assert got["p50_ms"] == pytest.approx(np.percentile(extra, 50))
    assert got["p99_ms"] == pytest.approx(np.percentile(extra, 99))
