"""Driving the sentiment handler as TorchServe's worker does, without TorchServe's front end: the GPU step
(gpu_serving.py) runs it on machines that have no Java."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from marport.resources import model_config
from marport.sentiment_data import LABELS
from marport.workspace import current

from .workloads import bench_dir

BATCH = 256  # requests per handler call: what a busy GPU worker is handed (batchSize)
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=514, type_vocab_size=1)


def tiny_checkpoint(out: Path | None = None, tokenizer_dir: Path | None = None) -> Path:
    """A random one-layer RoBERTa with the demo model's tokenizer (or the one in `tokenizer_dir`) and labels."""
    out = out or bench_dir() / "roberta-tiny"
    if (out / "config.json").exists():
        return out
    from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or current().checkpoint("sentiment"))
    torch.manual_seed(0)
    config = RobertaConfig(**TINY, vocab_size=len(tokenizer), num_labels=len(LABELS),
                           id2label=dict(enumerate(LABELS)), label2id={n: i for i, n in enumerate(LABELS)},
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id)
    RobertaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def torchserve_context(model_dir: Path, config: dict | None, gpu: int | None):
    """TorchServe's Context as its model loader builds one, metrics cache included (a GPU machine
    without TorchServe installed gets the stand-in below)."""
    import importlib.resources

    try:
        from ts.context import Context
        from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    except ImportError:
        return StandInContext(str(model_dir), config, gpu)

    metrics = MetricsCacheYamlImpl(config_file_path=str(importlib.resources.files("ts") / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    return Context("sentiment", str(model_dir), {"model": {}}, BATCH, gpu, "0.12.0", metrics=metrics,
                   model_yaml_config=config)


class _Metrics:
    request_ids: Any = None

    def add_time(self, *args, **kwargs) -> None:
        pass

    def add_metric(self, *args, **kwargs) -> Any:
        return self

    def add_or_update(self, *args, **kwargs) -> None:
        pass


class _Headers:
    def __init__(self, headers: dict):
        self.headers, self.status, self.reason = headers, 200, None

    def get_request_property(self, key: str) -> Any:
        return self.headers.get(key)


class StandInContext:
    """The parts of ts.context.Context the handlers use, for hosts without TorchServe (the GPU machines)."""

    def __init__(self, model_dir: str, config: dict | None, gpu: int | None):
        self.system_properties = {"model_dir": model_dir, "gpu_id": gpu, "batch_size": BATCH}
        self.model_yaml_config, self.manifest, self.model_name = config, {"model": {}}, "sentiment"
        self.metrics, self.request_ids, self.request_processor = _Metrics(), {}, []

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> Any:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict:
        return self.request_processor[idx].headers

    def set_response_content_type(self, idx: int, value: str) -> None:
        pass

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].status, self.request_processor[idx].reason = code, phrase


def request_processors(context: Any, headers: list[dict]) -> list:
    try:
        from ts.context import RequestProcessor
    except ImportError:
        return [_Headers(h) for h in headers]
    return [RequestProcessor(h) for h in headers]


def drive(handler: Any, context: Any, texts: list[str], batch: int) -> float:
    """Seconds to answer `texts` in handler calls of `batch` requests, as TorchServe's service.predict calls them."""
    return sum(one_call(handler, context, texts[start : start + batch], start) for start in range(0, len(texts), batch))


def one_call(handler: Any, context: Any, texts: list[str], first_id: int = 0) -> float:
    """Seconds for one handler call answering `texts`, each a text/plain request, as TorchServe's service.predict
    makes it (request ids, headers and the metrics' ids set on the context first)."""
    headers = {"Content-Type": "text/plain", "body": {"content-type": "text/plain"}}
    rows = [{"body": t.encode()} for t in texts]
    context.request_ids = {i: f"req-{first_id + i}" for i in range(len(rows))}
    context.request_processor = request_processors(context, [dict(headers) for _ in rows])
    context.metrics.request_ids = context.request_ids
    started = time.perf_counter()
    answers = handler.handle(rows, context)
    seconds = time.perf_counter() - started
    assert len(answers) == len(rows)
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
    """INFO logging into a sink, as a TorchServe worker logs (to its stdout, read by the frontend)."""
    root = logging.getLogger()
    saved = root.level, root.handlers[:]
    root.handlers[:] = [logging.StreamHandler(io.StringIO())]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
