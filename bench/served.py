"""Serving an archive under the benchmark: unpack and configure it, start TorchServe, warm it, and compare its
answers with in-process ones."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import yaml

from marport.build import extract_archive
from marport.server import LocalTorchServe, free_port_overrides

from . import loadgen
from .workloads import bench_dir

SCORE_TOLERANCE = 1e-4  # served vs in-process probabilities (padding differs by batch)


def median(values):
    return float(statistics.median(values))


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def unpacked(mar: Path, store: Path, name: str) -> Path:
    """The archive extracted into the bench model store, so each run can edit its model-config.yaml."""
    target = store / name
    if target.exists():  # never serve handler modules left from an older archive
        shutil.rmtree(target)
    extract_archive(mar, target)
    return target


def configure(model_dir: Path, frontend: dict | None = None, **handler) -> Path:
    """The archive's model-config.yaml with `frontend` (minWorkers, batchSize, ...) and `handler` settings over it."""
    path = model_dir / "model-config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(frontend or {})
    config.setdefault("handler", {}).update(handler)
    path.write_text(yaml.safe_dump(config))
    return model_dir


def server_for(store: Path) -> LocalTorchServe:
    return LocalTorchServe(run_dir=bench_dir() / "run", overrides={**free_port_overrides(), "metrics_mode": "log"},
                           model_store=store)


def warm_up(url: str, server: LocalTorchServe, body: tuple[bytes, str]) -> dict:
    """Let Java's JIT and torch's first-call paths settle before anything is timed."""
    warm = loadgen.warm_up(url, body, server.headers())
    log(f"  warm after {warm['requests']} requests ({warm['seconds']:.0f} s)")
    return warm


def compare(served: list, expected: list, key: str, tolerance: float = SCORE_TOLERANCE) -> dict:
    """Served answers against in-process ones: the same labels, and `key` (scores, or probability) within tolerance."""
    pairs = [(got, want) for got, want in zip(served, expected) if got is not None]
    values = (lambda a: list(a["scores"].values())) if key == "scores" else (lambda a: [a[key]])
    worst = max((abs(x - y) for got, want in pairs for x, y in zip(values(got), values(want))), default=0.0)
    mismatches, missing = sum(got["label"] != want["label"] for got, want in pairs), len(expected) - len(pairs)
    return {"max_abs_diff": worst, "label_mismatches": mismatches, "missing": missing, "tolerance": tolerance,
            "match": missing == 0 and mismatches == 0 and worst <= tolerance}


def summarise(runs) -> dict:
    """Medians over repetitions of each summary figure."""
    summaries = [r.summary() for r in runs]
    return {k: (median([s[k] for s in summaries]) if isinstance(summaries[0][k], float) else summaries[0][k])
            for k in summaries[0]} | {"errors": sum(s["errors"] for s in summaries), "repetitions": len(runs)}
