"""Ray Serve beside TorchServe on the same archive: `marport bench --only ray`.

The roberta-base-size archive with its shipped settings, served by TorchServe, then packed as `marport sagemaker
package --runtime ray` packs it and served by `serve run` on its config.yaml; the same closed-loop clients send
the same texts at each concurrency to both, one server at a time. Both run the same Endpoint: what differs is the
runtime around it.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from marport.build import build
from marport.ray_server import RayServe

from .loadgen import closed_loop
from .plan import CORES, Plan, cpu_name
from .served import log, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, realsize_checkpoint, short_texts

BATCH_LINE = re.compile(r"batch of (\d+) requests")


def _runs(url: str, bodies: list, concurrency: int, reps: int, headers: dict | None = None) -> dict:
    closed_loop(url, bodies[: 4 * concurrency], concurrency, headers)  # first-call paths, untimed
    return summarise([closed_loop(url, bodies, concurrency, headers) for _ in range(reps)])


def _mean_batch(log_text: str) -> float:
    sizes = [int(n) for n in BATCH_LINE.findall(log_text)]
    return sum(sizes) / len(sizes) if sizes else float("nan")


def ray_bench(plan: Plan) -> dict:
    name = "sentiment_base"
    log("Ray Serve beside TorchServe: building the roberta-base-size archive")
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name=name)
    texts = [(t.encode(), "text/plain") for t in short_texts(plan.short)]
    levels = (1, 8, 32) if not plan.quick else (1, 8)
    reps = plan.reps
    result: dict = {"texts": len(texts), "concurrency": list(levels), "torchserve": {}, "ray": {}, "cpu": cpu_name(),
                    "cores": CORES}

    store = bench_dir() / "store"
    unpacked(mar, store, name)  # the archive as built: the shipped model-config.yaml
    server = server_for(store)
    logs_dir = server.run_dir / "logs"
    seen = {p: p.stat().st_size for p in logs_dir.glob("model_log*.log")} if logs_dir.exists() else {}
    with server.serving([name]):
        url = f"{server.inference_url}/predictions/{name}"
        warm_up(url, server, texts[0])
        for c in levels:
            result["torchserve"][str(c)] = _runs(url, texts, c, reps, server.headers())
            log(f"  TorchServe c{c}: {result['torchserve'][str(c)]['throughput']:.1f} texts/s")
        logs = sorted(logs_dir.glob("model_log*.log"))  # this run's lines only
        result["torchserve_mean_batch"] = _mean_batch("".join(p.read_bytes()[seen.get(p, 0):].decode("utf-8", "replace")
                                                              for p in logs))

    from marport.sagemaker_deploy.package import package

    folder = bench_dir() / "ray" / name
    tarball = package(mar, folder.parent / f"{name}.tar.gz", runtime="ray")
    with tarfile.open(tarball) as tar:
        tar.extractall(folder, filter="data")
    log_path = folder.parent / "serve.log"
    log_path.unlink(missing_ok=True)
    with RayServe(folder, log_path) as ray:
        url = f"{ray.url}/"
        closed_loop(url, texts[:64], 8)  # Ray's proxy and the replica's first calls
        for c in levels:
            result["ray"][str(c)] = _runs(url, texts, c, reps)
            log(f"  Ray Serve c{c}: {result['ray'][str(c)]['throughput']:.1f} texts/s")
    result["ray_mean_batch"] = _mean_batch(Path(log_path).read_text(errors="replace"))
    result["ratio"] = {c: result["ray"][c]["throughput"] / result["torchserve"][c]["throughput"]
                       for c in result["ray"]}
    return result
