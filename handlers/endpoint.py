"""One endpoint object for every runtime: load a model core once, answer a batch, record its figures.

The runtime adapters (TorchServe's handler, the SageMaker toolkit's `code/inference.py`, the Ray
Serve deployment) only turn their own requests into `serving_common.Request`s and the outcomes back
into their own responses. Everything between is here, once: the model's placement and load (device,
the device's `auto` settings, threads), S3 references, the call's time budget, the Accept check,
per-request isolation (isolation.answer_batch), the log line and the operator metrics.

Packed into each archive (its marport_serving package); imports only the modules packed beside it.
"""

from __future__ import annotations

import gc
import glob
import importlib
import inspect
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping, Protocol

from .isolation import Outcome, answer_batch
from .placement import load_core
from .s3_input import S3Input, resolve
from .serving_common import JSON_TYPE, Request, call_budget_s, check_accept, read_config, setting_flag

log = logging.getLogger(__name__)

__all__ = ["Endpoint", "JSON_TYPE", "MetricsSink", "Outcome", "core_of"]


class MetricsSink(Protocol):
    """Where a runtime's operator metrics go (operator_metrics.OperatorMetrics for TorchServe's API)."""

    def record(self, rejected: Mapping[str, int], figures: Mapping[str, float]) -> None: ...


def entry_class(module: Any) -> type:
    """The TorchServe handler class an entry module defines (the one that names a core)."""
    found: type = next(c for _, c in inspect.getmembers(module, inspect.isclass) if getattr(c, "core", None))
    return found


def core_of(model_dir: str) -> Any:
    """The model core an archive (or an extracted tarball) serves: the one its `*_handler.py` entry names."""
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)  # the entry module and the marport_serving package sit at the archive's root
    entries = sorted(glob.glob(os.path.join(model_dir, "*_handler.py")))
    if len(entries) != 1:
        raise RuntimeError(f"expected one *_handler.py in {model_dir}, found {entries}")
    return entry_class(importlib.import_module(os.path.basename(entries[0])[:-3])).core  # type: ignore[attr-defined]


class Endpoint:
    """A model core, loaded once where the runtime put this worker, answering batches of requests."""

    def __init__(self, core: Any, model_dir: str, yaml_config: Mapping[str, Any] | None = None,
                 gpu_id: Any = None, metrics: MetricsSink | None = None):
        self.core = core
        self.config = read_config(model_dir, yaml_config)
        self.model, self.placement, self.settings = load_core(core, model_dir, self.config, gpu_id)
        self.s3 = S3Input.from_settings(self.settings, core.body_limit(self.model))  # None unless buckets are listed
        self.budget_s = call_budget_s(self.config)  # seconds one call may spend
        self.metrics = metrics
        if setting_flag(self.settings, "gc_freeze", True):
            freeze_loaded_objects()

    def answer(self, count: int, read: Callable[[int], Request],
               request_id: Callable[[int], str | None]) -> list[Outcome]:
        """Outcomes for requests 0..count-1 in order, each strict JSON with its own status; never raises.

        `read(i)` builds request i from the runtime's own (and may refuse it with a RequestError);
        the Accept header and S3 references are handled here for every runtime alike.
        """
        deadline = time.monotonic() + self.budget_s

        def read_checked(idx: int) -> Request:
            request = read(idx)
            check_accept(request.headers.get("accept"))
            return resolve(request, self.s3, deadline)  # an {"s3_uri": ...} body becomes the object's bytes

        outcomes, report = answer_batch(self.core, self.model, count, read_checked, request_id, deadline)
        log.info(report.line())  # one line a call: operators (and the tests) see batching and rejections at work
        self._record(report)
        return outcomes

    def _record(self, report: Any) -> None:
        if self.metrics is None:
            return
        try:
            figures = dict(self.core.figures(self.model, report.parsed, report.answers))
        except Exception:  # noqa: BLE001 - a figure we cannot compute never costs an answer
            log.warning("could not compute this batch's operator figures", exc_info=True)
            figures = {}
        figures["ModelMs"] = report.predict_ms
        self.metrics.record(report.rejected, figures)


def freeze_loaded_objects() -> None:
    """Collect what loading left behind, then leave everything loaded out of every later collection (gc.freeze).

    A loaded model is hundreds of thousands of objects (torch, transformers, the tokenizer) that live as long as
    the worker. Without this, each full collection walks all of them: about 0.25 s (docs/devices.md, "Per-text
    cost") that lands on whichever call is running when the collector decides one is due.
    """
    gc.collect()
    gc.freeze()


def lower_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """Header names in lower case, string values only (what Request.headers holds)."""
    return {str(k).lower(): v for k, v in (headers or {}).items() if isinstance(v, str)}
