"""Precision, padding and compilation at roberta-base size: what each setting buys, and what it costs in labels.

    marport bench --only precision     # merges into bench/results/latest.json, rewrites BENCHMARKS.md

Speed is measured served (TorchServe, concurrency 32, the same texts for every setting in
one run) on the random-initialised roberta-base checkpoint; labels are compared on the
trained demo model, whose answers mean something (random weights give near-ties that any
rounding flips). The fp32 eager run is the reference every ratio divides by.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from marport.build import build, extract_archive
from marport.sentiment_data import load_splits
from marport.workspace import current

from .ceiling import sentiment_answers
from .loadgen import closed_loop
from .served import cold_start, configure, log, server_for, summarise, unpacked, warm_up
from .workloads import bench_dir, realsize_checkpoint, short_texts

# (name, handler settings, whose worker/batch settings): the reference, then the shipped configuration
# (handlers/config/sentiment.yaml as packed) and variations of it.
SERVED_RUNS = (
    ("fp32", {"precision": "fp32", "min_padding_efficiency": 0.0}, "sweep"),  # the eager path before this work
    ("fp32_sorted", {"precision": "fp32"}, "sweep"),  # + the padding floor alone
    ("default", {}, "shipped"),  # model-config.yaml exactly as shipped
    ("compiled", {"compile": True}, "shipped"),  # the same, through torch.compile
    ("int8", {"precision": "int8"}, "shipped"),
    # int8 graphs are small: one single-thread worker per core beats one two-thread worker.
    ("int8_per_core", {"precision": "int8"}, {"workers": 2, "threads": 1, "batchSize": 16, "maxBatchDelay": 2}),
)
AGREEMENT = ("bf16", "fp16", "int8")  # each against fp32, on the demo model
PADDING_LINE = re.compile(r"(\d+) tokens, (\d+) padded tokens in")


def _padding(log_path: Path, since: int) -> float:
    """Real over padded tokens, from the handler's per-call log lines written after byte `since`."""
    text = log_path.read_bytes()[since:].decode("utf-8", "replace")
    real = padded = 0
    for m in PADDING_LINE.finditer(text):
        real, padded = real + int(m.group(1)), padded + int(m.group(2))
    return real / padded if padded else float("nan")


def label_agreement(batch: int) -> dict:
    """Share of held-out test sentences whose label matches fp32's, per precision, in served-size batches."""
    from marport.handlers import sentiment

    model_dir = extract_archive(current().model_store / "sentiment.mar", bench_dir() / "demo-unpacked")
    texts = [e.text for e in load_splits()["test"]]
    fp32 = sentiment_answers(sentiment.load(str(model_dir), {"precision": "fp32"}), texts, batch)
    out = {"texts": len(texts), "batch": batch}
    for precision in AGREEMENT:
        started = time.perf_counter()
        answers = sentiment_answers(sentiment.load(str(model_dir), {"precision": precision}), texts, batch)
        same = sum(a["label"] == b["label"] for a, b in zip(fp32, answers))
        out[precision] = same / len(texts)
        log(f"  {precision}: labels agree with fp32 on {same}/{len(texts)} ({time.perf_counter() - started:.0f} s)")
    return out


RESPIRATORY_VARIANTS = (
    ("fp32", {"precision": "fp32", "fold_batchnorm": False}),  # before this work
    ("fp32 folded", {"precision": "fp32", "fold_batchnorm": True}),  # shipped
    ("bf16", {"precision": "bf16", "fold_batchnorm": False}),
    ("bf16 folded", {"precision": "bf16", "fold_batchnorm": True}),
)


def respiratory_variants(reps: int = 7) -> dict:
    """The CNN's windows/s per variant on real (synthetic-generator) recordings, and how far answers move.

    channels_last is a layout of 4-D (N, C, H, W) tensors; this CNN's Conv1d works on
    (N, C, L), which has no such layout, so there is nothing to measure for it.
    """
    from marport.handlers import placement, respiratory

    from .workloads import recordings

    model_dir = extract_archive(current().model_store / "respiratory.mar", bench_dir() / "respiratory-unpacked")
    bodies = recordings(8)
    out, reference = {}, None
    for name, settings in RESPIRATORY_VARIANTS:
        model = respiratory.load(str(model_dir), settings, placement.place(None, settings))
        parsed = [respiratory.read_recording(b, model) for b in bodies]
        windows, _ = respiratory.preprocess(model, parsed)
        probs = respiratory.forward(model, windows)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            respiratory.forward(model, windows)
            times.append(time.perf_counter() - started)
        reference = probs if reference is None else reference
        out[name] = {"windows_per_s": len(windows) / sorted(times)[len(times) // 2],
                     "max_abs_prob_diff": float((probs - reference).abs().max())}
        log(f"  respiratory {name}: {out[name]['windows_per_s']:.0f} windows/s, "
            f"max |probability - fp32| {out[name]['max_abs_prob_diff']:.1e}")
    for value in out.values():
        value["speedup"] = value["windows_per_s"] / out["fp32"]["windows_per_s"]
    return out


def flops_per_text(config, tokens: int) -> float:
    """Forward FLOPs of one text of `tokens` real tokens (2 per multiply-add).

    Per layer and token: the four attention projections (4 h^2), the feed-forward
    (2 h f), and attention scores and mixing (2 n h); the classifier head is noise.
    """
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return 2 * layers * tokens * (4 * h * h + 2 * h * f + 2 * tokens * h)


def cpu_peak(cores: int) -> dict:
    """Peak FLOP/s per precision: cores x clock x operations per cycle (stated, not measured).

    Zen 4 executes AVX-512 on two 256-bit FMA pipes: 16 fp32 multiply-adds (32 FLOP) per
    cycle per core; AVX512-BF16 (VDPBF16PS) doubles that, VNNI int8 (VPDPBUSD) quadruples it.
    """
    mhz = _max_mhz()
    per_cycle = {"fp32": 32, "bf16": 64, "int8": 128}
    return {"cores": cores, "ghz": mhz / 1000, "per_cycle_per_core": per_cycle,
            **{k: cores * mhz * 1e6 * v for k, v in per_cycle.items()}}


def _max_mhz() -> float:
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            return int(Path(path).read_text()) / 1000
        except (OSError, ValueError):
            pass
    speeds = [float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("cpu MHz")]
    return max(speeds) if speeds else 0.0


def _cold_starts(plan, model_dir, store, name: str, body, shipped_yaml: dict, shipped: dict) -> dict:
    """Seconds from start to the first answer, eager and with torch.compile (the shipped precision)."""
    import yaml

    log("cold start to the first answer, with and without torch.compile (shipped precision)")
    cold = {}
    for compiled in (False, True):
        (model_dir / "model-config.yaml").write_text(yaml.safe_dump(shipped_yaml))
        configure(model_dir, shipped["workers"], shipped["threads"], shipped["batchSize"],
                  shipped["maxBatchDelay"], compile=compiled)
        cold["compiled" if compiled else "eager"] = cold_start(store, name, body, max(1, plan.cold_starts // 2))
        log(f"  compile={compiled}: {cold['compiled' if compiled else 'eager']:.1f} s")
    (model_dir / "model-config.yaml").write_text(yaml.safe_dump(shipped_yaml))
    return cold


def precision_bench(plan, settings: dict) -> dict:
    """Served throughput per setting at c32 on the same texts, padding, cold start, labels.

    `settings`: the workers/threads/batch the main sweep chose.
    """
    from transformers import AutoConfig, AutoTokenizer

    log("precision: label agreement on the demo model (held-out test split)")
    agreement = label_agreement(settings["batchSize"])

    name = "sentiment_precision"
    mar = build("sentiment", checkpoint=realsize_checkpoint(), export_dir=bench_dir() / "mar", name=name)
    store = bench_dir() / "store"
    model_dir = unpacked(mar, store, name)
    short = short_texts(plan.short)
    body = [(t.encode(), "text/plain") for t in short]
    tokenizer = AutoTokenizer.from_pretrained(realsize_checkpoint())
    config = AutoConfig.from_pretrained(realsize_checkpoint())
    lengths = [len(ids) for ids in tokenizer(short, truncation=True, max_length=512)["input_ids"]]
    useful = sum(flops_per_text(config, n) for n in lengths)  # per pass over the texts

    import yaml

    shipped_yaml = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    shipped = {"workers": shipped_yaml["minWorkers"], "threads": shipped_yaml["handler"]["threads"],
               "batchSize": shipped_yaml["batchSize"], "maxBatchDelay": shipped_yaml["maxBatchDelay"]}
    runs = {}
    for label, handler, layout in SERVED_RUNS:
        chosen = settings if layout == "sweep" else shipped if layout == "shipped" else layout
        (model_dir / "model-config.yaml").write_text(yaml.safe_dump(shipped_yaml))  # start from the shipped file
        configure(model_dir, chosen["workers"], chosen["threads"], chosen["batchSize"], chosen["maxBatchDelay"],
                  **handler)
        server = server_for(store)
        started = time.perf_counter()
        with server.serving([name]):
            cold = time.perf_counter() - started
            url = f"{server.inference_url}/predictions/{name}"
            warm_up(url, server, body[0])
            log_path = server.run_dir / "logs" / "model_log.log"
            since = log_path.stat().st_size
            reps = [closed_loop(url, body, 32, server.headers()) for _ in range(plan.reps)]
            padding = _padding(log_path, since)
        result = summarise(reps)
        result.update(padding_efficiency=padding, start_to_ready_s=cold, layout=chosen,
                      useful_gflops=useful * result["throughput"] / len(short) / 1e9, settings=handler)
        runs[label] = result
        log(f"  {label}: {result['throughput']:.1f} texts/s, padding efficiency {padding:.2f}")
    reference = runs["fp32"]["throughput"]
    for result in runs.values():
        result["speedup"] = result["throughput"] / reference

    cold = _cold_starts(plan, model_dir, store, name, body[0], shipped_yaml, shipped)
    from marport.handlers import placement

    default_precision = placement.place(None, shipped_yaml["handler"]).precision  # what auto resolved to here
    log("respiratory CNN variants (in-process)")
    return {
        "respiratory": respiratory_variants(),
        "agreement": agreement,
        "served_c32": runs,
        "default_precision": default_precision,
        "shipped_settings": shipped,
        "cold_start_s": cold,
        "peak_flops": cpu_peak(settings["workers"] * settings["threads"]),
        "useful_flops_per_text": useful / len(short),
        "mean_tokens": sum(lengths) / len(lengths),
    }

