"""SageMaker inference-toolkit adapter: `code/inference.py` in model.tar.gz.

SageMaker's PyTorch container serves an archive through our own TorchServe handler
when the tarball holds MAR-INF/MANIFEST.json (the default `sagemaker_deploy
package` output). Without a manifest, the toolkit imports this module instead and
calls `model_fn` once and `transform_fn` per request. Both routes run the same
model core from the same files at the tarball root; this module only adapts the
toolkit's calling convention.

The toolkit route is weaker, by the toolkit's design: it handles a batch one
request at a time, and it decodes text bodies before we see them.
"""

from __future__ import annotations

import glob
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass
class Served:
    core: Any  # the model core module (sentiment, respiratory)
    model: Any  # what core.load returned


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


def model_fn(model_dir: str) -> Served:
    core = _core_of(model_dir)
    from serving_common import configure_threads, read_settings

    settings = read_settings(model_dir, None)
    configure_threads(settings)
    return Served(core=core, model=core.load(model_dir, settings))


def _toolkit_error(err):
    """A RequestError as the toolkit's own error type, so it answers with err.code."""
    from sagemaker_inference.errors import BaseInferenceToolkitError

    return BaseInferenceToolkitError(err.code, json.dumps(err.payload()), err.kind)


def transform_fn(served: Served, data: Any, content_type: str, accept: str):
    from serving_common import JSON_TYPE, Request, RequestError, check_accept

    try:
        check_accept(accept)
        request = Request(body=data, content_type=content_type or "")
        parsed = served.core.parse_request(request, served.model)
    except RequestError as err:
        raise _toolkit_error(err) from None
    answer = served.core.predict(served.model, [parsed])[0]
    return json.dumps(answer), JSON_TYPE
