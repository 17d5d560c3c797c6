"""The respiratory benchmark: the demo archive served, against its in-process ceiling,
and where a recording's time goes (decode, resample, model)."""

from __future__ import annotations

import time
from functools import partial

import torch

from marport.handlers import respiratory  # noqa: E402
from marport.workspace import current

from .ceiling import ceiling
from .loadgen import closed_loop
from .plan import CORES, LAYOUTS, Plan
from .served import compare, configure, log, median, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, recording_load

RESPIRATORY_DELAY_MS = 5  # maxBatchDelay for the respiratory runs


def respiratory_split(model, bodies: list[bytes], batch: int) -> dict:
    """In-process, one process: decode, resample and model time per recording, and the answers."""
    decode = resample = forward = 0.0
    answers = []
    started = time.perf_counter()
    for i in range(0, len(bodies), batch):
        parsed = []
        for body in bodies[i : i + batch]:
            recording = respiratory.read_recording(body, model)  # decoding and resampling interleave, block by block
            parsed.append(recording)
            decode, resample = decode + recording.decode_ms / 1000, resample + recording.resample_ms / 1000
        t3 = time.perf_counter()
        answers.extend(respiratory.predict(model, parsed))
        forward += time.perf_counter() - t3
    total = time.perf_counter() - started
    n = len(bodies)
    return {"recordings_per_s": n / total, "decode_ms": 1000 * decode / n, "resample_ms": 1000 * resample / n,
            "model_ms": 1000 * forward / n, "answers": answers}


def respiratory_bench(plan: Plan) -> dict:
    name = "respiratory"
    store = bench_dir() / "store"
    model_dir = unpacked(current().model_store / "respiratory.mar", store, name)
    make_load = partial(recording_load, plan.recordings, plan.recording_requests)
    bodies = make_load()
    wav = lambda b: (b, "audio/wav")  # noqa: E731
    batch = 8
    torch.set_num_threads(CORES)
    model = respiratory.load(str(model_dir))
    respiratory_split(model, bodies[:batch], batch)
    splits = [respiratory_split(model, bodies, batch) for _ in range(plan.reps)]
    expected = splits[0].pop("answers")
    for s in splits[1:]:
        s.pop("answers")
    inprocess = {k: median([s[k] for s in splits]) for k in splits[0]}
    del model
    layouts = ceiling("respiratory", str(model_dir), make_load, batch, LAYOUTS, plan.reps)
    log(f"  in-process ceiling {layouts}")
    url = lambda s: f"{s.inference_url}/predictions/{name}"  # noqa: E731
    load = [wav(b) for b in bodies]
    results = []
    for workers, threads in LAYOUTS:
        configure(model_dir, workers, threads, batch, RESPIRATORY_DELAY_MS)
        with server_for(store).serving([name]) as server:
            warm = warm_up(url(server), server, wav(bodies[0]))
            runs = {c: [closed_loop(url(server), load, c, server.headers()) for _ in range(plan.reps)]
                    for c in (1, 8)}
        results.append({"workers": workers, "threads": threads, "c1": summarise(runs[1]), "c8": summarise(runs[8]),
                        "warm_up": warm, "check": compare(runs[8][0].answers, expected, "probability")})
        log(f"  respiratory {results[-1]}")
    best = max(results, key=lambda r: r["c8"]["throughput"])
    request_ms = best["c1"]["p50_ms"]
    return {
        "inprocess": inprocess,
        "ceiling": layouts,
        "served": results,
        "settings": {"workers": best["workers"], "threads": best["threads"], "batchSize": batch,
                     "maxBatchDelay": RESPIRATORY_DELAY_MS},
        "served_over_inprocess": best["c8"]["throughput"] / layouts["per_s"],
        "decode_resample_share_of_request": (inprocess["decode_ms"] + inprocess["resample_ms"]) / request_ms,
        "decode_resample_share_of_compute": (inprocess["decode_ms"] + inprocess["resample_ms"])
        / (inprocess["decode_ms"] + inprocess["resample_ms"] + inprocess["model_ms"]),
    }
