"""Precision, padding and compilation at roberta-base size: what each setting buys, and what it costs in labels.

Speed is measured served (TorchServe, concurrency 32, the same texts for every setting in one run) on the
random-initialised roberta-base checkpoint; labels are compared on the trained demo model, whose answers mean
something (random weights give near-ties that any rounding flips). The fp32 eager run is the reference.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import yaml

from marport.build import build, extract_archive
from marport.sentiment_data import load_splits
from marport.workspace import current

from .ceiling import load, sentiment_answers
from .loadgen import closed_loop
from .served import configure, log, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, realsize_checkpoint, recordings, short_texts

# (name, handler settings, workers/batch settings, None: the shipped ones): the fp32 eager reference first.
SERVED_RUNS = (
    ("fp32", {"precision": "fp32", "min_padding_efficiency": 0.0}, None),  # eager, padded per batch
    ("fp32_sorted", {"precision": "fp32"}, None),  # + the padding floor alone
    ("default", {}, None),  # model-config.yaml exactly as shipped
    ("compiled", {"compile": True}, None),
    ("int8", {"precision": "int8"}, None),
    ("int8_per_core", {"precision": "int8"}, {"workers": 2, "threads": 1, "batchSize": 16, "maxBatchDelay": 2}),
)
AGREEMENT = ("bf16", "fp16", "int8")  # each against fp32, on the demo model
RESPIRATORY_VARIANTS = (("fp32", {"precision": "fp32", "fold_batchnorm": False}),
                        ("fp32 folded", {"precision": "fp32", "fold_batchnorm": True}),
                        ("bf16", {"precision": "bf16", "fold_batchnorm": False}),
                        ("bf16 folded", {"precision": "bf16", "fold_batchnorm": True}))
PADDING = re.compile(r"PaddingEfficiency\.Percent:([\d.]+)")  # the handler's figure, per call, in log mode


def label_agreement(batch: int) -> dict:
    """Share of held-out test sentences whose label matches fp32's, per precision, in served-size batches."""
    texts = [e.text for e in load_splits()["test"]]
    answers = {}
    for precision in ("fp32", *AGREEMENT):
        model_dir = extract_archive(current().model_store / "sentiment.mar", bench_dir() / f"demo-{precision}")
        answers[precision] = sentiment_answers(load("sentiment", str(configure(model_dir, precision=precision))),
                                               texts, batch)
    out = {"texts": len(texts), "batch": batch}
    for precision in AGREEMENT:
        out[precision] = sum(a["label"] == b["label"] for a, b in zip(answers["fp32"], answers[precision])) / len(texts)
        log(f"  {precision}: labels agree with fp32 on {out[precision]:.2%}")
    return out


def respiratory_variants(reps: int = 7) -> dict:
    """The CNN's windows/s per variant on synthetic-generator recordings, and how far its answers move."""
    import torch

    bodies, out, reference = recordings(8), {}, None
    for name, settings in RESPIRATORY_VARIANTS:
        model_dir = extract_archive(current().model_store / "respiratory.mar", bench_dir() / "respiratory-variant")
        model = load("respiratory", str(configure(model_dir, **settings)))
        windows, _ = model.preprocess([model.decode(b) for b in bodies])
        probs = model.window_probs(windows)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            model.window_probs(windows)
            times.append(time.perf_counter() - started)
        reference = probs if reference is None else reference
        out[name] = {"windows_per_s": len(windows) / sorted(times)[len(times) // 2],
                     "max_abs_prob_diff": float(torch.max(torch.abs(probs - reference)))}
        log(f"  respiratory {name}: {out[name]}")
    for value in out.values():
        value["speedup"] = value["windows_per_s"] / out["fp32"]["windows_per_s"]
    return out


def flops_per_text(config, tokens: int) -> float:
    """Forward FLOPs of one text (2 per multiply-add): per layer and token the four attention projections (4 h^2),
    the feed-forward (2 h f), attention scores and mixing (2 n h)."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2 * layers * tokens * (4 * h * h + 2 * h * f + 2 * tokens * h)


def _served(plan, model_dir: Path, store: Path, name: str, body: list, layout: dict, handler: dict) -> dict:
    configure(model_dir, {"minWorkers": layout["workers"], "maxWorkers": layout["workers"], "batchSize": layout["batchSize"],
                          "maxBatchDelay": layout["maxBatchDelay"]}, threads=layout["threads"], **handler)
    server = server_for(store)
    started = time.perf_counter()
    with server.serving([name]):
        cold = time.perf_counter() - started
        url = f"{server.inference_url}/predictions/{name}"
        warm_up(url, server, body[0])
        metrics = server.run_dir / "logs" / "model_metrics.log"
        since = metrics.stat().st_size if metrics.exists() else 0
        reps = [closed_loop(url, body, 32, server.headers()) for _ in range(plan.reps)]
        time.sleep(1)  # the worker's last figures reach its log
        padding = [float(v) for v in PADDING.findall(metrics.read_bytes()[since:].decode("utf-8", "replace"))]
    return {**summarise(reps), "padding_efficiency": sum(padding) / len(padding) / 100 if padding else None,
            "start_to_ready_s": cold, "layout": layout, "settings": handler}


def precision_bench(plan, settings: dict) -> dict:
    """Served throughput per setting at c32 on the same texts, padding, labels. `settings`: the shipped layout."""
    from transformers import AutoConfig, AutoTokenizer

    log("precision: label agreement on the demo model (held-out test split)")
    agreement = label_agreement(settings["batchSize"])
    name = "sentiment_precision"
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name=name)
    store = bench_dir() / "store"
    model_dir = unpacked(mar, store, name)
    short = short_texts(plan.short)
    shipped_yaml = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    runs = {}
    for label, handler, layout in SERVED_RUNS:
        (model_dir / "model-config.yaml").write_text(yaml.safe_dump(shipped_yaml))  # from the shipped file each time
        runs[label] = _served(plan, model_dir, store, name, [(t.encode(), "text/plain") for t in short],
                              layout or settings, handler)
        log(f"  {label}: {runs[label]['throughput']:.1f} texts/s, padding {runs[label]['padding_efficiency']}")
    for result in runs.values():
        result["speedup"] = result["throughput"] / runs["fp32"]["throughput"]
    tokenizer, config = (read(model_dir / "checkpoint") for read in (AutoTokenizer.from_pretrained,
                                                                      AutoConfig.from_pretrained))
    lengths = [len(ids) for ids in tokenizer(short, truncation=True, max_length=512)["input_ids"]]
    log("respiratory CNN variants (in-process)")
    return {"respiratory": respiratory_variants(), "agreement": agreement, "served_c32": runs,
            "shipped_settings": settings, "mean_tokens": sum(lengths) / len(lengths),
            "useful_flops_per_text": sum(flops_per_text(config, n) for n in lengths) / len(lengths)}
