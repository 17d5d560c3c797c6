"""What an explanation costs against a prediction, in-process, with the shipped settings.

Sentiment at roberta-base size (random weights: the same arithmetic), the shipped precision
(auto) and explain_steps: the same review-length texts predicted, then explained, one request
each; the token rate of explaining gives the explain_max_tokens that keeps the largest
explained handler call (batchSize requests at the cap) within half of responseTimeout, as
max_tokens is derived. Respiratory: a recording at explain_max_s, predicted and explained
(occlusion at explain_resolution_s). Medians over repetitions.

    marport bench --only explanations
"""

from __future__ import annotations

import json
import statistics
import time

import torch
import yaml

from marport.build import extract_archive
from marport.handlers import (
    respiratory,  # noqa: E402
    sentiment,  # noqa: E402
)
from marport.handlers.serving_common import Request  # noqa: E402
from marport.registry import MODELS
from marport.workspace import current

from .mixed import TIMEOUT_SHARE, derive_max_tokens
from .plan import CORES, Plan
from .served import log
from .workloads import bench_dir, realsize_checkpoint, recordings, short_texts


def _shipped(model: str) -> dict:
    return yaml.safe_load(MODELS[model].config.read_text())


def _timed(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def sentiment_cost(plan: Plan) -> dict:
    config = _shipped("sentiment")
    settings = config["handler"]
    torch.set_num_threads(CORES)
    model = sentiment.load(str(realsize_checkpoint()), settings)
    texts = short_texts(8 if plan.quick else 24, seed=5)

    def requests(explain: bool):
        body = lambda t: json.dumps({"text": t, "explain": explain})  # noqa: E731
        return [sentiment.parse_request(Request(body=body(t), content_type="application/json"), model) for t in texts]

    plain, explained = requests(False), requests(True)
    tokens = sum(r.tokens for r in plain)
    sentiment.predict(model, explained[:1])  # first-call paths, untimed
    reps = max(1, plan.reps)
    predict_s = _timed(lambda: [sentiment.predict(model, [r]) for r in plain], reps)
    explain_s = _timed(lambda: [sentiment.predict(model, [r]) for r in explained], reps)
    deltas = [a["explanation"]["convergence_delta"] for r in explained for a in sentiment.predict(model, [r])]
    explain_tokens_per_s = tokens / explain_s
    at_cap = _request_at_cap(model)
    cap_s = _timed(lambda: sentiment.predict(model, [at_cap]), reps)
    return {
        "precision": model.precision, "steps": model.limits.explain_steps, "texts": len(texts),
        "mean_tokens": tokens / len(texts),
        "predict_ms_per_text": 1000 * predict_s / len(texts), "explain_ms_per_text": 1000 * explain_s / len(texts),
        "cost_ratio": explain_s / predict_s,
        "explain_tokens_per_s": explain_tokens_per_s,
        "convergence_delta_median": statistics.median(deltas),
        "convergence_delta_p90": sorted(deltas)[int(0.9 * (len(deltas) - 1))],
        "derived_explain_max_tokens": derive_max_tokens(explain_tokens_per_s, config["responseTimeout"],
                                                        config["batchSize"]),
        "shipped_explain_max_tokens": model.limits.explain_max_tokens,
        "request_at_cap_tokens": at_cap.tokens, "request_at_cap_s": cap_s,
        # batchSize explained requests at the cap, explained one text after another
        "largest_call_s": config["batchSize"] * cap_s,
        "budget_s": config["responseTimeout"] * TIMEOUT_SHARE,
    }


def _request_at_cap(model) -> "sentiment.TextRequest":
    """One explained request of (nearly) explain_max_tokens tokens of review text."""
    from .workloads import LONG_TEXT

    words = LONG_TEXT.split()
    while True:
        request = sentiment.text_request(model, [" ".join(words)], single=True, explain=True)
        if request.tokens <= model.limits.explain_max_tokens:
            return request
        words = words[: max(1, int(len(words) * model.limits.explain_max_tokens / request.tokens) - 1)]


def respiratory_cost(plan: Plan) -> dict:
    config = _shipped("respiratory")
    model_dir = extract_archive(current().model_store / "respiratory.mar", bench_dir() / "respiratory-explain")
    model = respiratory.load(str(model_dir), config["handler"])
    seconds = model.explain_max_s
    body = recordings(1, seconds=seconds, rate=16000, seed=9)[0]

    def parsed(explain: bool):
        headers = {"explain": "True"} if explain else {}
        return respiratory.parse_request(Request(body=body, content_type="audio/wav", headers=headers), model)

    plain, explained = parsed(False), parsed(True)
    reps = max(1, plan.reps)
    predict_s = _timed(lambda: respiratory.predict(model, [plain]), reps)
    explain_s = _timed(lambda: respiratory.predict(model, [explained]), reps)
    return {
        "recording_s": seconds, "resolution_s": model.explain_resolution_s,
        "predict_ms": 1000 * predict_s, "explain_ms": 1000 * explain_s, "cost_ratio": explain_s / predict_s,
        "largest_call_s": config["batchSize"] * explain_s, "budget_s": config["responseTimeout"] * TIMEOUT_SHARE,
    }


def explanation_bench(plan: Plan) -> dict:
    log("explanations: sentiment at roberta-base size, predicted then explained")
    text = sentiment_cost(plan)
    log(f"  {text}")
    log("explanations: a respiratory recording at explain_max_s")
    audio = respiratory_cost(plan)
    log(f"  {audio}")
    return {"sentiment": text, "respiratory": audio}
