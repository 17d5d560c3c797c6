"""TorchServe adapter over a model core (sentiment.py, respiratory.py).

A core module (serving_common.ModelCore) provides `load`, `parse_request` and
`predict`. This adapter turns TorchServe's batch into Requests and hands them to
isolation.answer_batch, which answers each request on its own (a bad one with its
own 4xx JSON error) and runs the good ones through the model together.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from isolation import answer_batch
from operator_metrics import OperatorMetrics
from placement import load_core
from s3_input import S3Input, resolve
from serving_common import (
    JSON_TYPE, Request, call_budget_s, check_accept, read_config,
)

log = logging.getLogger(__name__)

# Field names a body may arrive under: raw bodies are "body" (or "data" with some
# clients); multipart uploads use the form field's name.
BODY_FIELDS = ("body", "data", "file", "audio", "text", "inputs")


def to_request(row: Mapping[str, Any], headers: Mapping[str, Any]) -> Request:
    """One entry of TorchServe's batch -> Request (body, content type, parameters)."""
    lowered, plain_headers = {}, {}  # all headers by lower-case name; those that are plain strings
    for key, value in (headers or {}).items():
        key = str(key).lower()
        lowered[key] = value
        if isinstance(value, str):
            plain_headers[key] = value
    headers = lowered
    name = next((f for f in BODY_FIELDS if row.get(f) is not None), None)
    if name is None:
        # A multipart upload under some other field name: take its one file part. Raw
        # bodies are bytes whatever the part, so plain form fields (no type, or text/*)
        # are told apart by their part's content type.
        def part_type_of(key):
            part = headers.get(str(key).lower())
            return (part.get("content-type") or "") if isinstance(part, Mapping) else ""

        binary = [k for k, v in row.items() if isinstance(v, (bytes, bytearray))]
        files = [k for k in binary if part_type_of(k) and not part_type_of(k).startswith("text/")]
        name = files[0] if len(files) == 1 else (binary[0] if len(binary) == 1 else None)
    body = row.get(name) if name else None
    part = headers.get(name.lower()) if name else None
    part_type = (part.get("content-type") or "") if isinstance(part, Mapping) else ""
    outer = headers.get("content-type") or ""
    # A multipart upload's own type is its part's; otherwise the request header,
    # which keeps media-type parameters (TorchServe strips them from the part's).
    content_type = part_type if outer.lower().startswith("multipart/") else (outer or part_type)
    params = {}
    for key, value in row.items():
        if key == name:
            continue
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", errors="replace")
        params[key] = value if isinstance(value, str) else str(value)
    return Request(body=body, content_type=content_type, params=params, headers=plain_headers)


class CoreHandler:
    """TorchServe's class entry point; subclasses name their core module."""

    core = None  # set by subclasses

    def __init__(self):
        self.model = None
        self.metrics = None
        self.s3 = None  # S3 references accepted (handler.s3_allowed_buckets), else None
        self.budget_s = None  # seconds a handler call may spend (serving_common.call_budget_s)
        self.initialized = False

    def initialize(self, context) -> None:
        model_dir = context.system_properties.get("model_dir")
        config = read_config(model_dir, getattr(context, "model_yaml_config", None))
        self.budget_s = call_budget_s(config)
        # TorchServe gives a worker its GPU (from deviceType/deviceIds in model-config.yaml) as gpu_id.
        self.model, _, settings = load_core(self.core, model_dir, config, context.system_properties.get("gpu_id"))
        self.metrics = OperatorMetrics(getattr(context, "metrics", None), getattr(context, "model_name", ""))
        self.s3 = S3Input.from_settings(settings, self.core.body_limit(self.model))
        self.initialized = True

    def handle(self, data, context) -> list:
        """One answer per request, each strict JSON with its own status; never raises."""
        deadline = time.monotonic() + self.budget_s

        def read(idx: int) -> Request:
            request = to_request(data[idx], context.get_all_request_header(idx))
            check_accept(request.headers.get("accept"))
            return resolve(request, self.s3, deadline)  # an {"s3_uri": ...} body becomes the object's bytes

        outcomes, report = answer_batch(self.core, self.model, len(data), read, context.get_request_id, deadline)
        for idx, outcome in enumerate(outcomes):
            context.set_response_content_type(idx, JSON_TYPE)
            if outcome.status != 200:
                context.set_response_status(code=outcome.status, phrase=outcome.kind, idx=idx)
        # One line per batch: operators (and the tests) can see batching and rejections at work.
        log.info(report.line())
        self._record(report)
        return [outcome.body for outcome in outcomes]

    def _record(self, report) -> None:
        try:
            figures = dict(self.core.figures(self.model, report.parsed, report.answers))
        except Exception:  # noqa: BLE001 - a figure we cannot compute never costs an answer
            log.warning("could not compute this batch's operator figures", exc_info=True)
            figures = {}
        figures["ModelMs"] = report.predict_ms
        self.metrics.record(report.rejected, figures)
