"""The sentiment step: a roberta-base-size archive served, against its in-process ceiling."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch

from marport.build import build

from .ceiling import ceiling, load, sentiment_answers
from .loadgen import closed_loop
from .plan import CORES, LAYOUTS, Plan
from .served import compare, log, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, long_texts, realsize_checkpoint, short_texts


def _text(t: str) -> tuple[bytes, str]:
    return t.encode(), "text/plain"


def lone_requests(model, url: str, headers: dict, texts: list[str], threads: int, reps: int) -> tuple[list, dict]:
    """Lone requests served, and the same texts one at a time in-process, in alternating passes (this machine
    drifts by about 10% over minutes); each text's own median forward is kept to compare request by request."""
    passes, runs = [], []
    for _ in range(reps):
        torch.set_num_threads(threads)
        times = []
        for text in texts:
            started = time.perf_counter()
            model.predict_texts([text])
            times.append((time.perf_counter() - started) * 1000)
        passes.append(times)
        torch.set_num_threads(CORES)
        runs.append(closed_loop(url, [_text(t) for t in texts], 1, headers))
    p50, p99 = np.percentile(passes, [50, 99])
    extra = [lat - own for run in runs for lat, own in zip(run.latencies_ms, np.median(passes, axis=0))]
    return runs, {"threads": threads, "p50_ms": float(p50), "p99_ms": float(p99),
                  "serving_adds_p50_ms": float(np.percentile(extra, 50)),
                  "serving_adds_p99_ms": float(np.percentile(extra, 99))}


def shipped_layout(model_dir) -> dict:
    """Workers, threads, batchSize and maxBatchDelay as the archive's model-config.yaml has them (threads resolved)."""
    import yaml

    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    threads = str(config["handler"].get("threads", 1))
    return {"workers": config["minWorkers"], "threads": CORES if threads in ("auto", "all") else int(threads),
            "batchSize": config["batchSize"], "maxBatchDelay": config["maxBatchDelay"]}


def sentiment_bench(plan: Plan) -> dict:
    """The archive with its shipped settings: served at each concurrency, against the in-process ceiling."""
    name = "sentiment_base"
    log("building the roberta-base-size archive with the normal build")
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name=name)
    store = bench_dir() / "store"
    model_dir = unpacked(mar, store, name)
    settings, short, long = shipped_layout(model_dir), short_texts(plan.short), long_texts(plan.long)
    model, batch = load("sentiment", str(model_dir)), settings["batchSize"]
    reference = sentiment_answers(model, short, batch)
    log(f"in-process ceiling: layouts (processes x threads) {LAYOUTS}")
    layout = ceiling("sentiment", str(model_dir), partial(short_texts, plan.short), batch, LAYOUTS, plan.reps)
    long_ceiling = ceiling("sentiment", str(model_dir), partial(long_texts, plan.long), batch, LAYOUTS, plan.reps)
    served, checks = {}, {}
    with server_for(store).serving([name]) as server:
        url = f"{server.inference_url}/predictions/{name}"
        warm_up(url, server, _text(short[0]))
        for c in plan.concurrency:
            if c == 1:
                runs, forward = lone_requests(model, url, server.headers(), short[: plan.short_c1],
                                              settings["threads"], plan.reps)
            else:
                runs = [closed_loop(url, [_text(t) for t in short], c, server.headers()) for _ in range(plan.reps)]
            served[c] = summarise(runs)
            checks[f"short_c{c}"] = compare(runs[0].answers, reference, "scores")
            log(f"  c{c}: {served[c]}")
        long_runs = [closed_loop(url, [_text(t) for t in long], 32, server.headers()) for _ in range(plan.reps)]
        checks["long_c32"] = compare(long_runs[0].answers, sentiment_answers(model, long, batch), "scores")
    c32, long_served = served.get(32) or served[max(served)], summarise(long_runs)
    return {"settings": settings, "inprocess": layout, "inprocess_single_forward": forward,
            "served": {str(c): v for c, v in served.items()}, "served_over_inprocess": c32["throughput"] / layout["per_s"],
            "p99_ms_c1": served[1]["p99_ms"], "checks": checks,
            "long": {"inprocess_texts_per_s": long_ceiling["per_s"], "served_c32": long_served,
                     "served_over_inprocess": long_served["throughput"] / long_ceiling["per_s"]}}
