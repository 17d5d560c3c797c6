"""Ray Serve beside TorchServe on the same archive: `marport bench --only ray`.

The roberta-base-size archive with its shipped settings, served by TorchServe, then packed as `marport sagemaker
package --runtime ray` packs it and served by `serve run` on its config.yaml; the same closed-loop clients send
the same texts at each concurrency to both, one server at a time. Both run the same Endpoint: what differs is the
runtime around it. A second pass puts each model process (one thread) alone on core 0, everything else off it.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from pathlib import Path

import psutil

from marport.build import build
from marport.handlers.settings import THREADS_ENV
from marport.ray_server import RayServe
from marport.sagemaker_deploy.package import package

from .loadgen import closed_loop
from .plan import CORES, Plan, cpu_name
from .served import log, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, realsize_checkpoint, short_texts


@contextlib.contextmanager
def _runtime_off_core_0():
    """This process and what it starts (the servers, the clients) on cores 1..; the model's process, once pinned,
    on core 0 with one thread: each runtime's own work (front end, proxy, Ray's processes) off the model's core."""
    cores, saved = os.sched_getaffinity(0), dict(os.environ)
    os.sched_setaffinity(0, cores - {0})
    os.environ[THREADS_ENV] = "1"
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)
        os.environ.clear()
        os.environ.update(saved)


def _measure(runtime: str, url: str, headers: dict | None, texts: list, levels: tuple, reps: int, pin: str) -> dict:
    """Texts/s at each concurrency, every thread of the process with `pin` in its command line moved to core 0."""
    for proc in psutil.process_iter(["cmdline"]) if pin else ():
        if pin in " ".join(proc.info["cmdline"] or []):
            for thread in proc.threads():
                os.sched_setaffinity(thread.id, {0})
    result = {}
    for c in levels:
        closed_loop(url, texts[: 4 * c], c, headers)  # first-call paths, untimed
        result[str(c)] = summarise([closed_loop(url, texts, c, headers) for _ in range(reps)])
        log(f"  {runtime} c{c}{' (model on core 0)' if pin else ''}: {result[str(c)]['throughput']:.1f} texts/s")
    return result


def _torchserve(mar: Path, texts: list, levels: tuple, reps: int, pin: bool = False) -> dict:
    store = bench_dir() / "store"
    unpacked(mar, store, mar.stem)  # the archive as built: the shipped model-config.yaml
    server = server_for(store)
    with server.serving([mar.stem]):
        url = f"{server.inference_url}/predictions/{mar.stem}"
        warm_up(url, server, texts[0])
        return _measure("TorchServe", url, server.headers(), texts, levels, reps, "model_service_worker" if pin else "")


def _ray(folder: Path, texts: list, levels: tuple, reps: int, pin: bool = False) -> dict:
    with RayServe(folder, folder.parent / "serve.log") as ray:  # the replica's per-call lines are in serve.log
        closed_loop(f"{ray.url}/", texts[:64], 8)  # Ray's proxy and the replica's first calls
        return _measure("Ray Serve", f"{ray.url}/", None, texts, levels, reps, "ServeReplica" if pin else "")


def ray_bench(plan: Plan) -> dict:
    log("Ray Serve beside TorchServe: building the roberta-base-size archive")
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name="sentiment_base")
    texts = [(t.encode(), "text/plain") for t in short_texts(plan.short)]
    levels = (1, 8, 32) if not plan.quick else (1, 8)
    folder = bench_dir() / "ray" / mar.stem
    with tarfile.open(package(mar, folder.parent / f"{mar.stem}.tar.gz", runtime="ray")) as tar:
        tar.extractall(folder, filter="data")
    result = {"torchserve": _torchserve(mar, texts, levels, plan.reps), "ray": _ray(folder, texts, levels, plan.reps)}
    if CORES > 1:  # the ratios are the tables' (bench/tables.py)
        with _runtime_off_core_0():
            result["pinned"] = {"torchserve": _torchserve(mar, texts, (32,), plan.reps, pin=True),
                                "ray": _ray(folder, texts, (32,), plan.reps, pin=True)}
    return result | {"texts": len(texts), "concurrency": list(levels), "cpu": cpu_name(), "cores": CORES}
