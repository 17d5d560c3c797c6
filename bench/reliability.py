"""`marport bench`, reliability: the shipped caps checked at roberta-base size, a heavy mix, a killed worker.

- the largest handler call the shipped settings allow (batchSize requests at max_tokens, texts
  cut at 512 tokens), timed in-process, against half of responseTimeout; and the token cap
  that measured speed would derive;
- heavy clients at the caps mixed with light clients for two minutes, served with the shipped
  model-config.yaml: 5xx, worker restarts, light p50/p99, heavy throughput;
- a worker killed with SIGKILL under light load: what the requests in flight got, and the time
  until a new worker answers.
"""

from __future__ import annotations

import json
import time

import torch
import yaml

from marport.build import build
from marport.registry import MODELS

from .mixed import TIMEOUT_SHARE, derive_max_tokens, kill_worker_under_load, mixed_load, worker_pids
from .plan import CORES
from .served import log, server_for, unpacked, warm_up
from .workloads import LONG_TEXT, bench_dir, realsize_checkpoint, short_texts


def shipped_config() -> dict:
    return yaml.safe_load(MODELS["sentiment"].config.read_text())


def largest_call(model, config: dict) -> dict:
    """batchSize requests at the token cap, in one handler call, in-process: seconds."""
    from marport.handlers import sentiment

    caps = model.limits
    per_request = max(1, caps.max_tokens // model.max_length)  # full-length texts that fit the cap
    requests = [sentiment.text_request(model, [LONG_TEXT] * per_request, single=False)
                for _ in range(config["batchSize"])]
    sentiment.predict(model, requests[:1])  # warm
    times = []
    for _ in range(2):
        started = time.perf_counter()
        sentiment.predict(model, requests)
        times.append(time.perf_counter() - started)
    tokens = sum(r.tokens for r in requests)
    seconds = min(times)
    budget = config["responseTimeout"] * TIMEOUT_SHARE
    return {"requests": config["batchSize"], "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "budget_s": budget, "within_budget": seconds <= budget,
            "derived_max_tokens": derive_max_tokens(tokens / seconds, config["responseTimeout"], config["batchSize"]),
            "shipped_max_tokens": caps.max_tokens}


def reliability_bench(plan) -> dict:
    from marport.handlers import sentiment

    name = "sentiment_base"
    store = bench_dir() / "store"
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name=name)
    model_dir = unpacked(mar, store, name)
    config = shipped_config()
    (model_dir / "model-config.yaml").write_text(yaml.safe_dump(config))  # exactly what ships
    torch.set_num_threads(int(config["handler"]["threads"]))
    model = sentiment.load(str(model_dir), config["handler"])
    log("reliability: the largest handler call the shipped caps allow, in-process")
    call = largest_call(model, config)
    log(f"  {call}")
    torch.set_num_threads(CORES)
    per_request = max(1, model.limits.max_tokens // model.max_length)
    heavy = (json.dumps({"inputs": [LONG_TEXT] * per_request}).encode(), "application/json")
    light = [(t.encode(), "text/plain") for t in short_texts(64, seed=5)]
    seconds = 120 if not plan.quick else 15
    with server_for(store).serving([name]) as server:
        url = f"{server.inference_url}/predictions/{name}"
        warm_up(url, server, light[0])
        pids = worker_pids(server.management_url, server.headers("management"), name)
        log(f"reliability: heavy mix for {seconds} s (4 clients at the caps, 4 light)")
        mix = mixed_load(url, server.headers(), heavy, light, heavy_clients=4, light_clients=4, seconds=seconds)
        summary = mix.summary(per_request)
        summary["worker_restarts"] = int(worker_pids(server.management_url, server.headers("management"), name) != pids)
        summary["heavy_texts_per_request"] = per_request
        log(f"  {summary}")
        log("reliability: a worker killed under load")
        killed = kill_worker_under_load(url, server.headers(), server.management_url, server.headers("management"),
                                        name, light, clients=4, before_s=5, after_s=40 if not plan.quick else 20)
        log(f"  {killed}")
    return {"settings": {k: config[k] for k in ("batchSize", "maxBatchDelay", "responseTimeout")}
            | {"caps": config["handler"]}, "largest_call": call, "heavy_mix": summary, "worker_kill": killed}
