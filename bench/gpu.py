"""GPU figures for BENCHMARKS.md, run on a host with a CUDA GPU (no TorchServe needed there).

    python -m marport.bench.gpu --demo DIR --respiratory DIR --out bench/results/gpu.json

The handler cores run in-process on `cuda:0`, placed by the same `placement.place`
that TorchServe's `gpu_id` drives, and the TorchServe adapter is driven once with a
context that hands it GPU 0. Measures: which precision `auto` picks; label agreement
of bf16/fp16 with fp32 on the trained demo model (held-out test split, batches of 8);
roberta-base-size texts/s per precision; the respiratory CNN's windows/s; and serving side by side at
B = 256 (bench/gpu_serving.py: the bare model, the GPU archive's handler, TorchServe's HF example).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from marport.handlers import (
    placement,  # noqa: E402
    respiratory,  # noqa: E402
    sentiment,  # noqa: E402
)

from .ceiling import sentiment_answers

PRECISIONS = ("fp32", "bf16", "fp16")
BATCH = 8


def _answers(model, texts: list[str], batch: int = BATCH) -> list[dict]:
    return sentiment_answers(model, texts, batch)


def _texts_per_s(model, texts: list[str], batch: int = BATCH, reps: int = 3) -> float:
    _answers(model, texts[:64], batch)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        started = time.perf_counter()
        _answers(model, texts, batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return len(texts) / statistics.median(times)


def _load(path: Path, precision: str):
    """The core with the shipped handler settings (their `auto` resolved for the GPU), at `precision`."""
    import yaml

    from marport.resources import model_config

    settings = {**yaml.safe_load(model_config("sentiment").read_text())["handler"], "precision": precision}
    return sentiment.load(str(path), settings, placement.place(0, settings))


def adapter_on_gpu(model_dir: Path) -> dict:
    """TorchServe's entry point, given GPU 0 as TorchServe gives it: where did the model go, what came back?"""
    from marport.handlers.sentiment_handler import SentimentHandler

    class Context:  # the parts of ts.context.Context the adapter uses
        system_properties = {"model_dir": str(model_dir), "gpu_id": 0}
        model_yaml_config = {"handler": {"precision": "auto"}}
        statuses: dict = {}

        def get_all_request_header(self, idx):
            return {"Content-Type": "text/plain"}

        def get_request_id(self, idx):
            return f"gpu-{idx}"

        def set_response_content_type(self, idx, value):
            pass

        def set_response_status(self, code, phrase, idx):
            self.statuses[idx] = code

    handler, context = SentimentHandler(), Context()
    handler.initialize(context)
    answers = handler.handle([{"body": b"The staff were lovely"}, {"body": b"\xff\xfe\x00"}], context)
    return {"device": str(handler.model.device), "precision": handler.model.precision,
            "answers": [json.loads(a) for a in answers], "statuses": context.statuses}


def _agreement(demo: Path, held_out: list[str]) -> dict:
    """Share of the demo model's held-out labels each precision gives as fp32 does."""
    reference = _answers(_load(demo, "fp32"), held_out)
    agreement = {"fp32": 1.0}
    for precision in PRECISIONS[1:]:
        got = _answers(_load(demo, precision), held_out)
        agreement[precision] = sum(a["label"] == b["label"] for a, b in zip(reference, got)) / len(got)
        print(f"demo model {precision}: labels agree with fp32 on {agreement[precision]:.2%}", flush=True)
    return agreement


def _roberta_base(demo: Path) -> Path:
    """A random roberta-base-size classifier with the demo tokenizer (the arithmetic of the real weights)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    from .workloads import ROBERTA_BASE

    base = Path("/tmp/roberta-base-random")
    tokenizer = AutoTokenizer.from_pretrained(demo)
    torch.manual_seed(0)
    config = RobertaConfig(**ROBERTA_BASE, num_labels=3, pad_token_id=tokenizer.pad_token_id)
    RobertaForSequenceClassification(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    return base


def _respiratory_windows_per_s(checkpoint: Path) -> dict:
    """The CNN's windows per second on the GPU: fp32, fp32 with BatchNorm folded, bf16 folded."""
    windows = torch.randn(64, 32000)
    rates = {}
    for precision, fold in (("fp32", False), ("fp32", True), ("bf16", True)):
        settings = {"precision": precision, "fold_batchnorm": fold, "batch_windows": 64}
        model = respiratory.load(str(checkpoint), settings, placement.place(0, settings))
        respiratory.forward(model, windows)
        torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(20):
            respiratory.forward(model, windows)
        torch.cuda.synchronize()
        key = f"{precision}{' folded' if fold else ''}"
        rates[key] = 20 * len(windows) / (time.perf_counter() - started)
        print(f"respiratory {key}: {rates[key]:.0f} windows/s", flush=True)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, required=True, help="the demo sentiment checkpoint")
    parser.add_argument("--respiratory", type=Path, required=True, help="the demo respiratory checkpoint")
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu.json"))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("no CUDA device")
    from marport.sentiment_data import load_splits

    from .workloads import short_texts

    device = torch.cuda.get_device_name(0)
    result = {"device": device, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "batch": BATCH,
              "auto": placement.place(0, {}).precision}
    print(f"{device}: auto -> {result['auto']}", flush=True)

    result["agreement"] = _agreement(args.demo, [e.text for e in load_splits()["test"]])
    base = _roberta_base(args.demo)
    texts = short_texts(2048)
    result["texts"] = len(texts)
    result["roberta_base"] = {}
    for precision in PRECISIONS:
        model = _load(base, precision)
        # Padding costs little on a GPU and launches cost much: measured with the CPU's floor and without
        # (the GPU default since this run).
        model.limits.min_padding_efficiency = 0.9
        result["roberta_base"][precision] = {"texts_per_s": _texts_per_s(model, texts),
                                             "texts_per_s_batch64": _texts_per_s(model, texts, 64)}
        model.limits.min_padding_efficiency = 0.0
        result["roberta_base"][precision]["texts_per_s_batch64_no_floor"] = _texts_per_s(model, texts, 64)
        print(f"roberta-base {precision}: {result['roberta_base'][precision]}", flush=True)
        del model
        torch.cuda.empty_cache()
    fp32 = result["roberta_base"]["fp32"]["texts_per_s"]
    fp32_64 = result["roberta_base"]["fp32"]["texts_per_s_batch64"]
    for value in result["roberta_base"].values():
        value["speedup"] = value["texts_per_s"] / fp32
        value["speedup_batch64"] = value["texts_per_s_batch64"] / fp32_64

    result["respiratory_windows_per_s"] = _respiratory_windows_per_s(args.respiratory)

    result["adapter"] = adapter_on_gpu(args.demo)
    print(f"adapter: {result['adapter']}", flush=True)
    from .gpu_serving import gpu_serving_bench
    from .plan import Plan

    result["serving"] = gpu_serving_bench(Plan(), base, gpu=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
