"""How much a benchmark run measures, and the worker layouts it tries on this machine."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

CORES = len(os.sched_getaffinity(0))


def cpu_name() -> str:
    """The CPU's model name, as the figures' machine."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
# Workers x torch threads that use every core: one wide worker, or one single-thread worker per core.
LAYOUTS = tuple(sorted({(1, CORES), (CORES, 1)}))


@dataclass
class Plan:
    reps: int = 3
    short: int = 320
    short_c1: int = 64
    long: int = 48
    recordings: int = 48  # distinct recordings, sent in turn
    recording_requests: int = 480  # per timed run
    concurrency: tuple = (1, 8, 32, 64)
    quick: bool = False
    gpu_result: str | None = None  # a GPU step's result measured elsewhere (bench/gpu_device.sh)


QUICK = Plan(reps=1, short=48, short_c1=8, long=8, recordings=8, recording_requests=16, concurrency=(1, 8), quick=True)
