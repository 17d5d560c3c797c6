"""SageMaker inference-toolkit adapter: `code/inference.py` in model.tar.gz.

SageMaker's PyTorch container serves an archive through our own TorchServe handler
when the tarball holds MAR-INF/MANIFEST.json (the default `sagemaker_deploy
package` output). Without a manifest, the toolkit imports this module instead and
calls `model_fn` once and `transform_fn` per request. Both routes run the same
model core from the same files at the tarball root; this module only adapts the
toolkit's calling convention.

The toolkit route is weaker, by the toolkit's design: it handles a batch one
request at a time (so it runs with batch size 1).
"""

from __future__ import annotations

import glob
import importlib
import inspect
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class Served:
    core: Any  # the model core module (sentiment, respiratory)
    model: Any  # what core.load returned
    s3: Any = None  # s3_input.S3Input when the model may read S3 references
    budget_s: float | None = None  # seconds one call may spend (serving_common.call_budget_s)


def _core_of(model_dir: str):
    """The core named by the archive's TorchServe entry (<model>_handler.py)."""
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)  # the flat handler modules sit at the tarball root
    entries = sorted(glob.glob(os.path.join(model_dir, "*_handler.py")))
    if len(entries) != 1:
        raise RuntimeError(f"expected one *_handler.py in {model_dir}, found {entries}")
    module = importlib.import_module(os.path.basename(entries[0])[:-3])
    handler = next(c for _, c in inspect.getmembers(module, inspect.isclass) if getattr(c, "core", None))
    return handler.core


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


def model_fn(model_dir: str, context=None) -> Served:
    """The toolkit passes its TorchServe context, whose gpu_id says which GPU this worker owns."""
    _keep_bodies_raw()
    core = _core_of(model_dir)
    from placement import load_core
    from serving_common import call_budget_s, read_config

    from s3_input import S3Input

    config = read_config(model_dir, None)
    properties = getattr(context, "system_properties", None) or {}
    model, _, settings = load_core(core, model_dir, config, properties.get("gpu_id"))
    return Served(core=core, model=model, s3=S3Input.from_settings(settings, core.body_limit(model)),
                  budget_s=call_budget_s(config))


def transform_fn(served: Served, data: Any, content_type: str, accept: str, context=None):
    """One request, answered as the TorchServe route answers it: strict JSON, its own status.

    The toolkit passes its TorchServe context as a fifth argument when the function
    takes one; the status is set on it, so errors are JSON bodies, not tracebacks.
    """
    from isolation import answer_batch
    from s3_input import resolve
    from serving_common import JSON_TYPE, Request, check_accept

    deadline = time.monotonic() + served.budget_s if served.budget_s else None

    def read(_: int) -> Request:
        check_accept(accept)
        return resolve(Request(body=data, content_type=content_type or ""), served.s3, deadline)

    def request_id(_: int):
        return context.get_request_id(0) if context is not None else None

    (outcome,), report = answer_batch(served.core, served.model, 1, read, request_id, deadline)
    log.info(report.line())
    if outcome.status != 200:
        if context is None:  # a toolkit without context passing: its own error type keeps the status
            from sagemaker_inference.errors import BaseInferenceToolkitError

            raise BaseInferenceToolkitError(outcome.status, outcome.body, outcome.kind)
        context.set_response_status(code=outcome.status, phrase=outcome.kind, idx=0)
    return outcome.body, JSON_TYPE
