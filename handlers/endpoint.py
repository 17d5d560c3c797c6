"""One endpoint object for every runtime: a model loaded once where the runtime put it, answering batches.

The runtime adapters (torchserve_adapter, sagemaker_adapter, ray_adapter) turn their requests into
`contract.Request`s and the Outcomes back into their responses. Everything between is here, once: settings and
placement, threads, S3 references, the call's time budget, the Accept check, the model's steps in order with each
request's failure its own (isolation.py), the log line and the operator metrics.
"""

from __future__ import annotations

import gc
import glob
import importlib
import inspect
import logging
import os
import time
from typing import Any, Callable, Mapping, Protocol, Sequence, TypeVar

from .bodies import JSON_TYPE, check_accept
from .contract import Model, Request
from .isolation import Outcome, failed, late, out_of_time, serialised, together
from .placement import check_batching, place
from .s3_input import S3Input, resolve
from .settings import call_budget_s, configure_threads, device_settings, handler_settings, read_config, setting_flag

log = logging.getLogger(__name__)
M = TypeVar("M", bound=Model)

__all__ = ["Endpoint", "JSON_TYPE", "MetricsSink", "Outcome", "core_of", "lower_headers"]


class MetricsSink(Protocol):
    """Where a runtime's operator metrics go (operator_metrics.OperatorMetrics, ray_adapter.RayMetrics)."""

    def record(self, rejected: Mapping[str, int], figures: Mapping[str, float | None]) -> None: ...


def entry_class(module: Any) -> type:
    """The TorchServe handler class an entry module defines (the one that names a core)."""
    found: type = next(c for _, c in inspect.getmembers(module, inspect.isclass) if getattr(c, "core", None))
    return found


def core_of(model_dir: str) -> type[Model]:
    """The Model class an archive serves: the one its `*_handler.py` entry names (the archive's root is on
    sys.path: TorchServe puts it there; the other adapters do)."""
    entries = sorted(glob.glob(os.path.join(model_dir, "*_handler.py")))
    if len(entries) != 1:
        raise RuntimeError(f"expected one *_handler.py in {model_dir}, found {entries}")
    return entry_class(importlib.import_module(os.path.basename(entries[0])[:-3])).core  # type: ignore[attr-defined]


def load_model(core: type[M], model_dir: str, config: Mapping[str, Any] | None = None, gpu_id: Any = None) -> M:
    """Settings (model-config.yaml's, default the archive's own, over the model's defaults; then the device's
    `auto` values), placement, threads, then the model's own load."""
    started = time.perf_counter()
    config = read_config(model_dir) if config is None else config
    settings = {**core.defaults, **handler_settings(config)}
    placement = place(gpu_id, settings)
    settings = device_settings(settings, placement.device)
    threads = configure_threads(settings)
    model = core(settings, placement.device, placement.dtype, placement.precision)
    model.load(model_dir)
    log.info("%s loaded in %.2fs on %s with %d torch threads", core.__name__, time.perf_counter() - started,
             placement.describe(), threads)
    check_batching(config, placement.device)
    return model


class Endpoint:
    """A model, loaded once, answering batches of requests."""

    def __init__(self, core: type[Model], model_dir: str, yaml_config: Mapping[str, Any] | None = None,
                 gpu_id: Any = None, metrics: MetricsSink | None = None):
        self.config = read_config(model_dir, yaml_config)
        self.model = load_model(core, model_dir, self.config, gpu_id)
        self.s3 = S3Input.from_settings(self.model.settings, self.model.max_body_bytes)  # None unless allowed
        self.budget_s = call_budget_s(self.config)
        self.metrics = metrics
        if setting_flag(self.model.settings, "gc_freeze", True):
            freeze_loaded_objects()

    def _read(self, request: Request | Outcome, request_id: str | None, deadline: float) -> Any:
        """One request read on its own: the model's input, or the Outcome that answers it."""
        if isinstance(request, Outcome):
            return request
        if late(deadline):
            return out_of_time(request_id, "reading")
        try:
            check_accept(request.headers.get("accept"))
            return self.model.read(resolve(request, self.s3, deadline))  # {"s3_uri": ...}: the object's bytes
        except Exception as exc:  # noqa: BLE001 - confined to this request
            return failed(exc, request_id, "reading")

    def answer(self, requests: Sequence[Request | Outcome], ids: Sequence[str | None]) -> list[Outcome]:
        """One Outcome per request, in order, each strict JSON with its own status; never raises."""
        deadline = time.monotonic() + self.budget_s
        started = time.perf_counter()
        read = [self._read(request, request_id, deadline) for request, request_id in zip(requests, ids)]
        prepared = self._run(self.model.prepare, read, ids, deadline, "reading")[0]
        parse_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        results, calls = self._run(self.model.predict, prepared, ids, deadline, "scoring")
        predict_ms = (time.perf_counter() - started) * 1000
        outcomes = [serialised(r, i) for r, i in zip(results, ids)]
        rejected: dict[str, int] = {}
        for outcome in outcomes:
            if outcome.kind:
                rejected[outcome.kind] = rejected.get(outcome.kind, 0) + 1
        log.info("batch of %d requests, %d rejected%s; parse %.1f ms, model %.1f ms in %d call(s)", len(outcomes),
                 sum(rejected.values()), "".join(f" {k}={v}" for k, v in sorted(rejected.items())), parse_ms,
                 predict_ms, calls)
        answered = [(p, r) for p, r in zip(prepared, results) if not isinstance(r, Outcome)]
        self._record(rejected, answered, predict_ms)
        return outcomes

    @staticmethod
    def _run(step: Callable[[list], list], items: list, ids: Sequence[str | None], deadline: float,
             stage: str) -> tuple[list, int]:
        """step over the items not yet answered, together; the results back in their places."""
        todo = [i for i, item in enumerate(items) if not isinstance(item, Outcome)]
        done, calls = together(step, [items[i] for i in todo], [ids[i] for i in todo], deadline, stage)
        merged = list(items)
        for i, result in zip(todo, done):
            merged[i] = result
        return merged, calls

    def _record(self, rejected: Mapping[str, int], answered: list[tuple[Any, Any]], predict_ms: float) -> None:
        """The call's figures (the model's, over the inputs it answered) and rejections, to the runtime's metrics."""
        if self.metrics is None:
            return
        try:
            figures = dict(self.model.figures([p for p, _ in answered], [r for _, r in answered]))
        except Exception:  # noqa: BLE001 - a figure we cannot compute never costs an answer
            log.warning("could not compute this batch's operator figures", exc_info=True)
            figures = {}
        figures["ModelMs"] = predict_ms
        self.metrics.record(rejected, figures)


def freeze_loaded_objects() -> None:
    """Collect what loading left, then keep everything loaded out of later collections (gc.freeze): a loaded
    model is hundreds of thousands of long-lived objects a full collection would otherwise walk each time."""
    gc.collect()
    gc.freeze()


def lower_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Header names in lower case, string values only (what Request.headers holds)."""
    return {str(k).lower(): v for k, v in (headers or {}).items() if isinstance(v, str)}
