"""Occlusion over time for a windowed model: each stretch of a recording silenced in turn, and only the windows it
overlaps scored again, `batch` at a time (bounded memory); the caller turns each stretch's window probabilities
into its attribution."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np


def occlusion_scores(rows: np.ndarray, starts: Sequence[int], length: int, step: int, base: Sequence[float],
                     batch: int, score: Callable[[np.ndarray], np.ndarray]
                     ) -> Iterator[tuple[tuple[int, int], list[float]]]:
    """For each stretch [a, b) of `step` samples: every window's probability with that stretch silenced.

    rows: the windows (n, size) as scored for `base`; starts: each window's first sample in the recording;
    score: probabilities of a stack of windows.
    """
    size = rows.shape[1]
    segments = [(a, min(a + step, length)) for a in range(0, length, step)]
    jobs = [(k, w) for k, (a, b) in enumerate(segments) for w, s in enumerate(starts) if s < b and s + size > a]
    occluded = np.empty(len(jobs), dtype=np.float64)
    for at in range(0, len(jobs), batch):
        chunk = jobs[at : at + batch]
        stack = rows[[w for _, w in chunk]].copy()
        for row, (k, w) in enumerate(chunk):
            a, b = segments[k]
            stack[row, max(a - starts[w], 0) : min(b - starts[w], size)] = 0.0
        occluded[at : at + len(chunk)] = score(stack)
    changed: dict[int, dict[int, float]] = {}
    for (k, w), p in zip(jobs, occluded):
        changed.setdefault(k, {})[w] = float(p)
    for k, segment in enumerate(segments):
        yield segment, [changed.get(k, {}).get(w, p) for w, p in enumerate(base)]
