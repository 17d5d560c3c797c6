"""Serving an archive under the benchmark: unpack and configure it, start TorchServe, warm it,
read its own metrics, and compare its answers with in-process ones."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import requests
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
    """The archive extracted into the bench model store, so each sweep point can edit its model-config.yaml."""
    target = store / name
    if target.exists():  # never serve handler modules left from an older archive
        shutil.rmtree(target)
    extract_archive(mar, target)
    return target


def configure(model_dir: Path, workers: int, threads: int, batch: int, delay: int, **handler) -> None:
    path = model_dir / "model-config.yaml"
    config = yaml.safe_load(path.read_text())
    config.update(minWorkers=workers, maxWorkers=workers, batchSize=batch, maxBatchDelay=delay)
    config.setdefault("handler", {}).update(threads=threads, **handler)
    path.write_text(yaml.safe_dump(config))


def server_for(store: Path) -> LocalTorchServe:
    # Log mode: the breakdowns read per-request figures from ts_metrics.log and model_metrics.log.
    return LocalTorchServe(run_dir=bench_dir() / "run", overrides={**free_port_overrides(), "metrics_mode": "log"},
                           model_store=store)


def warm_up(url: str, server: LocalTorchServe, body: tuple[bytes, str]) -> dict:
    """Let Java's JIT and torch's first-call paths settle before anything is timed."""
    warm = loadgen.warm_up(url, body, server.headers(), server.pid)
    log(f"  warm after {warm['requests']} requests ({warm['seconds']:.0f} s); "
        f"JIT compilers last at {warm['jit_share']:.0%} of a core")
    return warm


def compare(served: list, expected: list, key: str, tolerance: float | None = SCORE_TOLERANCE) -> dict:
    """Do served answers equal in-process ones? Same labels, and scores within tolerance
    (tolerance None: labels only, for int8 whose activation scales depend on batch-mates)."""
    worst, label_mismatch, missing = 0.0, 0, 0
    for got, want in zip(served, expected):
        if got is None:
            missing += 1
            continue
        label_mismatch += got["label"] != want["label"]
        if key == "scores":
            worst = max(worst, max(abs(got["scores"][k] - v) for k, v in want["scores"].items()))
        else:
            worst = max(worst, abs(got[key] - want[key]))
    return {"max_abs_diff": worst, "label_mismatches": label_mismatch, "missing": missing,
            "match": missing == 0 and label_mismatch == 0 and (tolerance is None or worst <= tolerance),
            "tolerance": tolerance}


def _logged_ms(lines: list[str], metric: str, tag: str, last: int, scale: float = 1.0) -> list[float]:
    """The last `last` values of one TorchServe metric logged for one model, in ms."""
    import re

    pattern = re.compile(rf"^\S+ - {re.escape(metric)}:([\d.]+)\|#{tag}")
    return [float(m.group(1)) * scale for line in lines if (m := pattern.match(line))][-last:]


def lone_request_breakdown_ms(server: LocalTorchServe, name: str, requests: int) -> dict:
    """Where the last `requests` lone requests' time went, from TorchServe's own metrics (medians, ms).

    front_end: the Java front end's whole inference latency; queue: waiting in the model's
    queue, which for a lone request is the batch delay; handler: PredictionTime inside the
    worker; transport: front end to worker and back, the rest.
    """
    logs = server.run_dir / "logs"
    time.sleep(1)  # the front end logs a request's metrics after answering it
    front_end_log = (logs / "ts_metrics.log").read_text().splitlines()
    worker_log = (logs / "model_metrics.log").read_text().splitlines()
    front = _logged_ms(front_end_log, "ts_inference_latency_microseconds.Microseconds",
                       f"model_name:{name},", requests, 1e-3)
    queue = _logged_ms(front_end_log, "ts_queue_latency_microseconds.Microseconds",
                       f"model_name:{name},", requests, 1e-3)
    handler = _logged_ms(worker_log, "PredictionTime.ms", f"ModelName:{name},", requests)
    if not (front and queue and handler):
        return {}
    front_ms, queue_ms, handler_ms = (median(v) for v in (front, queue, handler))
    return {"front_end": front_ms, "queue": queue_ms, "handler": handler_ms,
            "handler_p99": float(np.percentile(handler, 99)),
            "transport": front_ms - queue_ms - handler_ms, "requests": len(front)}


def summarise(runs) -> dict:
    """Medians over repetitions of each summary figure."""
    summaries = [r.summary() for r in runs]
    return {k: (median([s[k] for s in summaries]) if isinstance(summaries[0][k], float) else summaries[0][k])
            for k in summaries[0]} | {"errors": sum(s["errors"] for s in summaries), "repetitions": len(runs)}


def cold_start(store: Path, name: str, body: tuple[bytes, str], reps: int) -> float:
    """`torchserve --start` to the first successful prediction, in seconds (median)."""
    times = []
    for _ in range(reps):
        server = server_for(store)
        started = time.perf_counter()
        server.start([name])
        try:
            while True:
                try:
                    got = requests.post(f"{server.inference_url}/predictions/{name}", data=body[0],
                                        headers={"Content-Type": body[1], **server.headers()}, timeout=60)
                    if got.status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.perf_counter() - started > 600:
                    raise TimeoutError(f"{name} never answered")
                time.sleep(0.1)
            times.append(time.perf_counter() - started)
        finally:
            server.stop()
    return median(times)
