"""The sentiment benchmark: a roberta-base-size archive served, against its in-process ceiling."""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch

from marport.build import build
from marport.handlers import sentiment  # noqa: E402
from marport.server import LocalTorchServe

from .ceiling import ceiling, sentiment_answers
from .loadgen import WorkerMemory, closed_loop
from .plan import CORES, LAYOUTS, Plan
from .served import compare, configure, log, lone_request_breakdown_ms, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, long_texts, realsize_checkpoint, short_texts

SWEEP_NOISE = 0.10  # run-to-run spread of one sweep point on a shared 2-core machine
FP32_REFERENCE = {"precision": "fp32", "min_padding_efficiency": 0.0}  # the eager fp32 path, padded per batch


def forward_pass_ms(model, texts: list[str], threads: int) -> list[float]:
    """One text at a time through the core, as a lone served request would go, at `threads`."""
    torch.set_num_threads(threads)
    times = []
    for text in texts:
        started = time.perf_counter()
        sentiment.predict_texts(model, [text])
        times.append((time.perf_counter() - started) * 1000)
    torch.set_num_threads(CORES)
    return times


def lone_requests(model, url: str, server: LocalTorchServe, texts: list[str], threads: int, reps: int):
    """Lone requests served, and the same texts through the core in-process, in alternating passes.

    Alternating keeps both sides on the same machine state (this one drifts by ~10% over minutes).
    Each text's own median forward is kept: a lone text's forward grows with its length, so a served
    request is compared with the forward of the same text.
    """
    passes, runs = [], []
    for _ in range(reps):
        passes.append(forward_pass_ms(model, texts, threads))
        runs.append(closed_loop(url, [(t.encode(), "text/plain") for t in texts], 1, server.headers()))
    p50, p99 = np.percentile(passes, [50, 99])
    per_text = np.median(passes, axis=0)
    forward = {"threads": threads, "p50_ms": float(p50), "p99_ms": float(p99), "per_text_ms": per_text.tolist(),
               "fastest_text_ms": float(per_text.min()), "slowest_text_ms": float(per_text.max())}
    return runs, forward


def serving_overhead_ms(runs, forward: dict) -> dict:
    """Every served lone request's latency minus the in-process forward of the same text."""
    extra = [latency - own for run in runs for latency, own in zip(run.latencies_ms, forward["per_text_ms"])]
    p50, p99 = np.percentile(extra, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "requests": len(extra)}


def _url(server, name: str) -> str:
    return f"{server.inference_url}/predictions/{name}"


def _text(t: str) -> tuple[bytes, str]:
    return t.encode(), "text/plain"


def _sweep(plan: Plan, model_dir, store, name: str, short: list[str]) -> tuple[list[dict], dict]:
    """Throughput at concurrency 32 for each (workers, threads, batchSize, maxBatchDelay) of the plan, and the best."""
    log(f"sweep over {len(plan.sweep)} settings at concurrency 32, short texts")
    sweep = []
    for workers, threads, batch, delay in plan.sweep:
        configure(model_dir, workers, threads, batch, delay, **FP32_REFERENCE)
        with server_for(store).serving([name]) as server:
            warm_up(_url(server, name), server, _text(short[0]))
            run = closed_loop(_url(server, name), [_text(t) for t in short], 32, server.headers())
        point = {"workers": workers, "threads": threads, "batchSize": batch, "maxBatchDelay": delay,
                 **run.summary()}
        sweep.append(point)
        log(f"  {point}")
    top = max(p["throughput"] for p in sweep)
    # Near-ties go to the shorter batch delay (a lone request waits all of it for batch-mates),
    # then to the faster. One sweep run varies by about 10% on this machine: that is a tie.
    # The latency settings measure fewer, wider workers at low load.
    near = [p for p in sweep if p["throughput"] >= (1 - SWEEP_NOISE) * top]
    best = min(near, key=lambda p: (p["maxBatchDelay"], -p["throughput"]))
    settings = {k: best[k] for k in ("workers", "threads", "batchSize", "maxBatchDelay")}
    log(f"best settings {settings}")
    return sweep, settings


def _latency_settings(plan: Plan, model, model_dir, store, name: str, lone: list[str], settings: dict):
    """Fewer, wider workers answer a lone request faster: the same lone requests with one worker on every core."""
    latency = {"workers": 1, "threads": CORES, "batchSize": settings["batchSize"], "maxBatchDelay": 2}
    configure(model_dir, latency["workers"], latency["threads"], latency["batchSize"], latency["maxBatchDelay"],
              **FP32_REFERENCE)
    with server_for(store).serving([name]) as server:
        warm_up(_url(server, name), server, _text(lone[0]))
        runs, forward = lone_requests(model, _url(server, name), server, lone, CORES, plan.reps)
    log(f"  latency settings {latency}, c1: {summarise(runs)}")
    return latency, runs, forward


def _ceilings(plan: Plan, model_dir, batches: list[int]) -> tuple[dict, dict, float]:
    """In-process texts/s per batch size over every layout (processes x threads), and for long texts."""
    log(f"in-process ceiling: layouts (processes x threads) {LAYOUTS}")
    layouts = {batch: ceiling("sentiment", str(model_dir), partial(short_texts, plan.short), batch, LAYOUTS, plan.reps)
               for batch in batches}
    long_ceiling = ceiling("sentiment", str(model_dir), partial(long_texts, plan.long), 8, LAYOUTS, plan.reps)["per_s"]
    log(f"  {layouts}")
    return layouts, {batch: c["per_s"] for batch, c in layouts.items()}, long_ceiling


def sentiment_bench(plan: Plan) -> dict:
    name = "sentiment_base"
    log("building the roberta-base-size archive with the normal build")
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name=name)
    store = bench_dir() / "store"
    model_dir = unpacked(mar, store, name)
    # This step is the fp32 eager reference (the precision step compares the rest with it):
    # pinned in the archive's yaml, which the in-process ceiling reads too.
    configure(model_dir, 1, CORES, 8, 2, **FP32_REFERENCE)
    short, long = short_texts(plan.short), long_texts(plan.long)

    log("in-process answers")
    torch.set_num_threads(CORES)
    model = sentiment.load(str(model_dir))  # kept for the lone-request passes
    batches = sorted({s[2] for s in plan.sweep})
    reference = {batch: sentiment_answers(model, short, batch) for batch in batches}
    lone = short[: plan.short_c1]
    long_reference = sentiment_answers(model, long, 8)
    layouts, ceilings, long_ceiling = _ceilings(plan, model_dir, batches)
    sweep, settings = _sweep(plan, model_dir, store, name, short)

    configure(model_dir, settings["workers"], settings["threads"], settings["batchSize"],
              settings["maxBatchDelay"], **FP32_REFERENCE)
    served, checks = {}, {}
    with server_for(store).serving([name]) as server, WorkerMemory() as memory:
        warm_up(_url(server, name), server, _text(short[0]))
        for c in plan.concurrency:
            if c == 1:
                runs, forward = lone_requests(model, _url(server, name), server, lone, settings["threads"], plan.reps)
                where_c1 = lone_request_breakdown_ms(server, name, len(lone) * plan.reps)
                overhead_c1 = serving_overhead_ms(runs, forward)
            else:
                runs = [closed_loop(_url(server, name), [_text(t) for t in short], c, server.headers())
                        for _ in range(plan.reps)]
            served[c] = summarise(runs)
            checks[f"short_c{c}"] = compare(runs[0].answers, reference[settings["batchSize"]], "scores")
            log(f"  c{c}: {served[c]}")
        long_runs = [closed_loop(_url(server, name), [_text(t) for t in long], 32, server.headers()) for _ in range(plan.reps)]
        checks["long_c32"] = compare(long_runs[0].answers, long_reference, "scores")
    rss = memory.peak_mb

    latency, latency_runs, latency_forward = _latency_settings(plan, model, model_dir, store, name, lone, settings)
    latency_c1 = summarise(latency_runs)
    del model

    long_served = summarise(long_runs)
    c32 = served.get(32) or served[max(served)]
    return {
        "settings": settings,
        "sweep": sweep,
        "inprocess_texts_per_s": {str(b): v for b, v in ceilings.items()},
        "inprocess_layouts": {str(b): v["by_layout"] for b, v in layouts.items()},
        "inprocess_single_forward": forward,
        "served": {str(c): v for c, v in served.items()},
        "served_over_inprocess": c32["throughput"] / max(ceilings.values()),
        "p99_ms_c1": served[1]["p99_ms"],
        "lone_request_breakdown_ms": where_c1,
        # Serving's own cost at low load, request by request: served latency minus the
        # in-process forward of the same text with the same threads per worker.
        "overhead_ms_c1": overhead_c1,
        "latency_settings": {**latency, "c1": latency_c1, "inprocess_single_forward": latency_forward,
                             "overhead_ms_c1": serving_overhead_ms(latency_runs, latency_forward)},
        "long": {"inprocess_texts_per_s": long_ceiling, "served_c32": long_served,
                 "served_over_inprocess": long_served["throughput"] / long_ceiling},
        "peak_worker_rss_mb": rss,
        "checks": checks,
    }
