"""The respiratory step: the demo archive served, against its in-process ceiling, and where a recording's time
goes (decode, resample, model)."""

from __future__ import annotations

import time
from functools import partial

from marport.workspace import current

from .ceiling import ceiling, load
from .loadgen import closed_loop
from .plan import LAYOUTS, Plan
from .served import compare, configure, log, median, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, recording_load

BATCH, DELAY_MS = 8, 5  # batchSize and maxBatchDelay of the served runs


def split(model, bodies: list[bytes]) -> tuple[dict, list]:
    """In one process: decode, resample and model ms per recording, and the answers."""
    decode = resample = forward = 0.0
    answers: list = []
    for i in range(0, len(bodies), BATCH):
        parsed = [model.decode(body) for body in bodies[i : i + BATCH]]  # decoding and resampling interleave
        decode += sum(r.decode_ms for r in parsed)
        resample += sum(r.resample_ms for r in parsed)
        started = time.perf_counter()
        answers.extend(model.predict(parsed))
        forward += (time.perf_counter() - started) * 1000
    n = len(bodies)
    return {"decode_ms": decode / n, "resample_ms": resample / n, "model_ms": forward / n}, answers


def respiratory_bench(plan: Plan) -> dict:
    name, store = "respiratory", bench_dir() / "store"
    model_dir = unpacked(current().model_store / "respiratory.mar", store, name)
    make_load = partial(recording_load, plan.recordings, plan.recording_requests)
    bodies = make_load()
    model = load("respiratory", str(model_dir))
    split(model, bodies[:BATCH])
    splits = [split(model, bodies) for _ in range(plan.reps)]
    inprocess, expected = {k: median([s[k] for s, _ in splits]) for k in splits[0][0]}, splits[0][1]
    layouts = ceiling("respiratory", str(model_dir), make_load, BATCH, LAYOUTS, plan.reps)
    log(f"  in-process ceiling {layouts}")
    sent = [(b, "audio/wav") for b in bodies]
    results = []
    for workers, threads in LAYOUTS:
        configure(model_dir, {"minWorkers": workers, "maxWorkers": workers, "batchSize": BATCH, "maxBatchDelay": DELAY_MS},
                  threads=threads)
        with server_for(store).serving([name]) as server:
            url = f"{server.inference_url}/predictions/{name}"
            warm_up(url, server, sent[0])
            runs = {c: [closed_loop(url, sent, c, server.headers()) for _ in range(plan.reps)] for c in (1, 8)}
        results.append({"workers": workers, "threads": threads, "c1": summarise(runs[1]), "c8": summarise(runs[8]),
                        "check": compare(runs[8][0].answers, expected, "probability")})
        log(f"  respiratory {results[-1]}")
    best = max(results, key=lambda r: r["c8"]["throughput"])
    audio_ms = inprocess["decode_ms"] + inprocess["resample_ms"]
    return {"inprocess": inprocess, "ceiling": layouts, "served": results,
            "settings": {"workers": best["workers"], "threads": best["threads"], "batchSize": BATCH,
                         "maxBatchDelay": DELAY_MS},
            "served_over_inprocess": best["c8"]["throughput"] / layouts["per_s"],
            "decode_resample_share_of_request": audio_ms / best["c1"]["p50_ms"],
            "decode_resample_share_of_compute": audio_ms / (audio_ms + inprocess["model_ms"])}
