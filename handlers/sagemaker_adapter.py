"""SageMaker inference-toolkit adapter, `code/inference.py` in model.tar.gz: the toolkit's route when the tarball has
no MAR-INF/MANIFEST.json (with one, the container runs our TorchServe handler). `model_fn` loads the Endpoint once,
`transform_fn` answers one request at a time, as the toolkit calls it."""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def _keep_bodies_raw() -> None:
    """Stop the toolkit decoding JSON/CSV bodies as UTF-8 before transform_fn (it answers a non-UTF-8 body with a
    traceback); our decoder honours charsets and answers a bad body with a 400 JSON error."""
    try:
        from sagemaker_inference import content_types
    except ImportError:  # not under the toolkit
        return
    content_types.UTF8_TYPES[:] = []


def model_fn(model_dir: str, context=None):
    """The toolkit passes its TorchServe context, whose gpu_id says which GPU this worker owns."""
    _keep_bodies_raw()
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)  # the archive's marport_serving package and entry sit at the tarball root
    from marport_serving.endpoint import Endpoint, core_of

    properties = getattr(context, "system_properties", None) or {}
    return Endpoint(core_of(model_dir), model_dir, None, properties.get("gpu_id"))


def _headers(context) -> dict:
    """The request's headers, lower-cased, from the toolkit's TorchServe context
    (X-Amzn-SageMaker-Custom-Attributes carries `sample_rate=...` and `explain=true`)."""
    from marport_serving.endpoint import lower_headers

    try:
        headers = context.get_all_request_header(0) if context is not None else {}
    except Exception:  # noqa: BLE001 - a context without headers: none
        headers = {}
    return lower_headers(headers)


def transform_fn(served, data: Any, content_type: str, accept: str, context=None):
    """One request, answered as the TorchServe route answers it: strict JSON, its own status set on the context
    (so errors are JSON bodies, not tracebacks), the operator metrics to its metrics cache."""
    from marport_serving.contract import Request
    from marport_serving.endpoint import JSON_TYPE
    from marport_serving.operator_metrics import from_context

    if served.metrics is None:
        served.metrics = from_context(context)
    request = Request(body=data, content_type=content_type or "", headers={**_headers(context), "accept": accept or ""})
    request_id = context.get_request_id(0) if context is not None else None
    (outcome,) = served.answer([request], [request_id])
    if outcome.status != 200:
        if context is None:  # a toolkit without context passing: its own error type keeps the status
            from sagemaker_inference.errors import BaseInferenceToolkitError

            raise BaseInferenceToolkitError(outcome.status, outcome.body, outcome.kind)
        context.set_response_status(code=outcome.status, phrase=outcome.kind, idx=0)
    return outcome.body, JSON_TYPE
