"""SageMaker inference-toolkit adapter: `code/inference.py` in model.tar.gz.

SageMaker's PyTorch container serves an archive through our own TorchServe handler
when the tarball holds MAR-INF/MANIFEST.json (the default `sagemaker_deploy
package` output). Without a manifest, the toolkit imports this module instead and
calls `model_fn` once and `transform_fn` per request. Both routes run the same
model core from the same files at the tarball root; this module only adapts the
toolkit's calling convention onto endpoint.Endpoint, the object every runtime uses.

The toolkit route is weaker, by the toolkit's design: it handles a batch one
request at a time (so it runs with batch size 1).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

log = logging.getLogger(__name__)


def _keep_bodies_raw() -> None:
    """Stop the toolkit decoding JSON/CSV bodies as UTF-8 before transform_fn.

    Its decode raises outside our code on a non-UTF-8 body and answers with a
    plain-text traceback; our own decoder honours charsets and BOMs and answers a
    bad body with a 400 JSON error. The toolkit reads this list at call time.
    """
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
