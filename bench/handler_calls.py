"""The sentiment handler driven as TorchServe's worker drives it, without the front end, for two steps:

- overhead: the handler's time outside the model per text, with a tiny model, at B = 256;
- the GPU step, at B = 256 and roberta-base size, the same texts in one run: the network alone in bf16 (pre-tokenised
  length-sorted micro-batches already on the GPU) beside the archive's handler as `marport build --device gpu`
  packs it, with one worker process and with the GPU archive's workers per GPU. `marport bench` runs it where CUDA
  is present; a lent GPU machine runs it by `bench/gpu_device.sh` with what `make gpu-kit` packs (docs/operations.md).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from marport.resources import model_config

from .parallel import rate
from .served import log

BATCH = 256  # requests per handler call: what a busy GPU worker is handed (batchSize)
def torchserve_context(model_dir: Path, config: dict | None, gpu: int | None) -> Any:
    """TorchServe's Context as its model loader builds one, metrics cache included (the GPU kit carries ts)."""
    import importlib.resources

    from ts.context import Context
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    metrics = MetricsCacheYamlImpl(config_file_path=str(importlib.resources.files("ts") / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    return Context("sentiment", str(model_dir), {"model": {}}, BATCH, gpu, "0.12.0", metrics=metrics,
                   model_yaml_config=config)


def drive(handler: Any, context: Any, texts: list[str], batch: int) -> float:
    """Seconds to answer `texts` in handler calls of `batch` text/plain requests, each call set up on the context as
    TorchServe's service.predict sets it (request ids, headers, the metrics' ids)."""
    from ts.context import RequestProcessor

    headers = {"Content-Type": "text/plain", "body": {"content-type": "text/plain"}}
    seconds = 0.0
    for first in range(0, len(texts), batch):
        rows = [{"body": t.encode()} for t in texts[first : first + batch]]
        context.request_ids = {i: f"req-{first + i}" for i in range(len(rows))}
        context.request_processor = [RequestProcessor(dict(headers)) for _ in rows]
        context.metrics.request_ids = context.request_ids
        started = time.perf_counter()
        assert len(handler.handle(rows, context)) == len(rows)
        seconds += time.perf_counter() - started
    return seconds


def ours(model_dir: Path, gpu: int | None, settings: dict | None = None) -> tuple[Any, Any]:
    """The archive's handler with the shipped model-config.yaml as `marport build --device` packs it for where it
    runs (a GPU archive when given a GPU); `settings` override its handler section."""
    from marport.build import for_device
    from marport.handlers.sentiment_handler import SentimentHandler

    config = yaml.safe_load(for_device(model_config("sentiment").read_text(), "cpu" if gpu is None else "gpu"))
    config["handler"].update(settings or {})
    context = torchserve_context(model_dir, config, gpu)
    handler = SentimentHandler()
    handler.initialize(context)
    return handler, context


@contextlib.contextmanager
def worker_logging():
    """INFO logging into a sink, as a TorchServe worker logs (to its stdout, read by the front end)."""
    root, sink = logging.getLogger(), logging.StreamHandler(io.StringIO())
    saved = root.level
    root.addHandler(sink)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(sink)
        root.setLevel(saved)


def overhead_bench(plan) -> dict:
    """Microseconds per text outside the model: handler calls of BATCH text/plain requests to a tiny RoBERTa
    (its forward costs next to nothing) on the CPU, total time minus the network's, median of the repetitions."""
    from .workloads import TINY, realsize_checkpoint, short_texts

    texts, marks = short_texts(768 if plan.quick else 3072), []
    with worker_logging():
        handler, context = ours(realsize_checkpoint(size=TINY), None)
        net = handler.model.net  # a torch module on the CPU: its hooks mark each forward's start and end
        net.register_forward_pre_hook(lambda *_: marks.append(-time.perf_counter()))
        net.register_forward_hook(lambda *_: marks.append(time.perf_counter()))
        drive(handler, context, texts[:BATCH], BATCH)
        outside, inside = [], []
        for _ in range(1 if plan.quick else 5):
            marks.clear()
            total = drive(handler, context, texts, BATCH)
            outside.append((total - sum(marks)) / len(texts) * 1e6)
            inside.append(sum(marks) / len(texts) * 1e6)
    return {"texts": len(texts), "batch": BATCH, "outside_us_per_text": statistics.median(outside),
            "model_us_per_text": statistics.median(inside), "threads": torch.get_num_threads()}


RESULT_TIMEOUT_S = 300  # a row takes under a minute on a GPU; a lent machine's call lasts 600 s
BARE_BUDGET = 16384  # padded tokens per micro-batch of the bare model (its best on an H200)


def bare_rate(checkpoint: Path, texts: list[str], gpu: int | None, reps: int, budget: int = BARE_BUDGET) -> float:
    """Texts/s of the network alone in bf16: the texts tokenised and cut into length-sorted micro-batches of at most
    `budget` padded tokens beforehand, already on the device."""
    from marport.handlers.endpoint import load_model
    from marport.handlers.sentiment import Sentiment, TextRequest

    settings = {"precision": "bf16", "batch_tokens": budget, "min_padding_efficiency": 0.0, "threads": "auto"}
    model = load_model(Sentiment, str(checkpoint), {"handler": settings}, gpu)
    batches = model.preprocess(model.prepare([TextRequest([t], True) for t in texts]))

    def one_pass() -> float:
        _sync(model.device)
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in batches:
                model.net(**batch.inputs)
        _sync(model.device)
        return time.perf_counter() - started

    one_pass()  # kernel selection and allocation, untimed
    return len(texts) / statistics.median(one_pass() for _ in range(reps))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _served(checkpoint: str, gpu: int | None, texts: list[str], settings: dict | None, part: int, parts: int):
    """One worker process: its handler and its share of the texts; returns its timed pass."""
    with worker_logging():
        handler, context = ours(Path(checkpoint), gpu, settings)
        drive(handler, context, texts[: 2 * BATCH], BATCH)  # first-call paths, untimed
    device = torch.device("cpu") if gpu is None else torch.device("cuda", gpu)
    mine = texts[part::parts]

    def timed() -> int:
        with worker_logging():
            drive(handler, context, mine, BATCH)
        _sync(device)
        return len(mine)
    return timed


def served_rate(checkpoint: Path, texts: list[str], gpu: int | None, workers: int, reps: int,
                settings: dict | None = None) -> float:
    """Texts/s of `workers` processes of the handler (with `settings` over its handler section) sharing the texts."""
    return rate(partial(_served, str(checkpoint), gpu, texts, settings), workers, reps, RESULT_TIMEOUT_S)


def gpu_serving_bench(plan: Any, checkpoint: Path | None = None, gpu: int | None = 0,
                      texts: list[str] | None = None, save: Callable[[dict], None] | None = None) -> dict:
    """The side-by-side (`gpu=None`: the same on the CPU); `save` gets the result after each row."""
    from .workloads import realsize_checkpoint, short_texts

    checkpoint = checkpoint or realsize_checkpoint()
    texts = texts or short_texts(1536 if plan.quick else 6144)
    reps = 1 if plan.quick else 3
    device = torch.device("cpu") if gpu is None else torch.device("cuda", gpu)
    workers = int(yaml.safe_load(model_config("sentiment").read_text())["handler"]["devices"]["gpu"]["workers_per_gpu"])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    log(f"GPU serving side by side on {name}: {len(texts)} texts, B = 256")
    result: dict = {"device": name, "torch": torch.__version__, "texts": len(texts), "batch": 256,
                    "date": time.strftime("%Y-%m-%d"), "workers_per_gpu": workers}

    def done(line: str) -> None:
        log(line)
        save and save(result)

    result["bare_bf16"] = bare_rate(checkpoint, texts, gpu, reps)
    done(f"  bare model, bf16: {result['bare_bf16']:.0f} texts/s")
    for key, n in (("marport_1_worker", 1), (f"marport_{workers}_workers", workers)):
        result[key] = served_rate(checkpoint, texts, gpu, n, reps)
        done(f"  {key}: {result[key]:.0f} texts/s")
    best = max(result["marport_1_worker"], result[f"marport_{workers}_workers"])
    result["share_of_bare"] = best / result["bare_bf16"]
    done(f"  best marport: {result['share_of_bare']:.0%} of the bare model")
    return result


KIT_WHEELS = ("orjson", "torchserve")  # what the handler's path imports that a lent GPU machine's image lacks
KIT_PYTHON = "3.12"
KIT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def make_kit(kit: Path) -> None:
    """What a GPU machine with torch and transformers needs carried: the demo tokenizer and KIT_WHEELS, pinned."""
    from transformers import AutoTokenizer

    from marport.workspace import current

    AutoTokenizer.from_pretrained(current().checkpoint("sentiment")).save_pretrained(kit / "tokenizer")
    pins = dict(line.split("==", 1) for line in (current().root / "requirements" / "constraints.txt").read_text().split()
                if "==" in line)
    wanted = [f"{name}=={pins[name]}" for name in KIT_WHEELS]
    platforms = [arg for platform in KIT_PLATFORMS for arg in ("--platform", platform)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", KIT_PYTHON, "--implementation", "cp", *platforms, "-d", str(kit / "wheels"),
                    *wanted], check=True)
    print(f"{kit}: tokenizer and {', '.join(wanted)}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The GPU side-by-side at B = 256, on a machine without the "
                                     "project's set-up (bench/gpu_device.sh), or the kit it needs (--kit).")
    parser.add_argument("--kit", type=Path, help="write the kit into this folder and stop (here, not on the GPU)")
    parser.add_argument("--tokenizer", type=Path, help="the demo tokenizer's folder (default: the demo checkpoint)")
    parser.add_argument("--out", type=Path, default=Path("gpu_serving.json"), help="where the results go (JSON)")
    parser.add_argument("--rehearse", action="store_true",
                        help="the same steps on the CPU with the tiny model and small counts: checks the run")
    args = parser.parse_args(argv)
    if args.kit:
        return make_kit(args.kit)
    from .plan import QUICK, Plan
    from .workloads import TINY, realsize_checkpoint, short_texts

    def save(result: dict) -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    if args.rehearse:
        save(gpu_serving_bench(QUICK, realsize_checkpoint(tokenizer_dir=args.tokenizer, size=TINY), gpu=None,
                               texts=short_texts(512), save=save))
    elif not torch.cuda.is_available():
        sys.exit("no CUDA device here (--rehearse runs the same steps on the CPU)")
    else:
        save(gpu_serving_bench(Plan(), realsize_checkpoint(tokenizer_dir=args.tokenizer), gpu=0, save=save))
    log(f"written: {args.out}")


if __name__ == "__main__":
    main()
