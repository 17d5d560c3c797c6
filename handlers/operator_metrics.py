"""The handlers' own metrics through TorchServe's metrics API: rejections by error type, the work given, padding,
where time went, explanations, answers marked for review (METRICS), and any figure a model reports by a name of
its own. Emitting never fails a request; a runtime without the API is skipped (docs/operations.md)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

log = logging.getLogger(__name__)

# name -> (TorchServe metric type, unit, dimensions besides ModelName): the one list; `marport serve` declares
# them to TorchServe from here (marport/server.py, metrics_declaration).
METRICS = {
    "RequestsRejected": ("counter", "Count", ("ErrorType",)),
    "ExplanationsServed": ("counter", "Count", ()),
    "ReviewFlagged": ("counter", "Count", ()),
    "Texts": ("counter", "Count", ()),
    "Tokens": ("counter", "Count", ()),
    "PaddingEfficiency": ("gauge", "Percent", ()),
    "Recordings": ("counter", "Count", ()),
    "AudioSeconds": ("counter", "Seconds", ()),
    "DecodeMs": ("gauge", "ms", ()),
    "ResampleMs": ("gauge", "ms", ()),
    "ModelMs": ("gauge", "ms", ()),
}
CUSTOM = ("counter", "Count", ())  # a figure a model reports under a name of its own


class OperatorMetrics:
    """Writes one handler call's figures to a TorchServe metrics cache (context.metrics)."""

    def __init__(self, cache: Any, model_name: str):
        self.cache = cache
        self.model_name = model_name or "unknown"
        self._metrics: dict[str, Any] = {}
        self._warned = False

    def _metric(self, name: str):
        if name not in self._metrics:
            from ts.metrics.metric_type_enum import MetricTypes

            kind, unit, dims = METRICS.get(name, CUSTOM)
            kind = MetricTypes(kind)
            try:  # declared in metrics.yaml: the worker's cache already holds it
                self._metrics[name] = self.cache.get_metric(name, kind)
            except Exception:  # noqa: BLE001 - not declared (log mode, SageMaker's config): declare it here
                self._metrics[name] = self.cache.add_metric_to_cache(name, unit, ["ModelName", *dims], kind)
        return self._metrics[name]

    def emit(self, name: str, value: float, **dims: str) -> None:
        try:
            extra = [str(dims[d]) for d in METRICS.get(name, CUSTOM)[2]]
            self._metric(name).add_or_update(float(value), [self.model_name, *extra])
        except Exception:  # noqa: BLE001 - metrics are for operators; they never fail a request
            if not self._warned:
                log.warning("operator metric %s could not be recorded; further failures are not logged", name,
                            exc_info=True)
                self._warned = True

    def record(self, rejected: Mapping[str, int], figures: Mapping[str, float | None]) -> None:
        """One handler call: rejections by error type, then the core's own figures (see METRICS)."""
        if self.cache is None:
            return
        for kind, count in rejected.items():
            self.emit("RequestsRejected", count, ErrorType=kind)
        for name, value in figures.items():
            if value is not None:
                self.emit(name, value)


def from_context(context: Any) -> OperatorMetrics | None:
    """The metrics of a TorchServe context (TorchServe's handler, and the SageMaker toolkit's which passes one)."""
    return None if context is None else OperatorMetrics(getattr(context, "metrics", None),
                                                        getattr(context, "model_name", ""))
