"""The model contract: what one model implements to be served by TorchServe, SageMaker's toolkit and Ray Serve.

A model is a subclass of `Model` that overrides, by name:

- `load(model_dir)`: read the checkpoint (the archive's `checkpoint/` folder) onto `self.device` in `self.dtype`;
- `read(request)`: one request's bytes -> a validated input, or raise `RequestError` (a 4xx for that request alone);
- `prepare(inputs)`: optional work over a call's inputs together (one tokenizer call), each entry the prepared
  input or the `RequestError` that refuses it alone;
- `preprocess(inputs)` -> a batch, `forward(batch)` -> the model's output (run under `torch.inference_mode`),
  `postprocess(output, inputs)` -> one JSON-able answer per input, in order;
- `figures(inputs, answers)`: optional numbers for the operator metrics (operator_metrics.METRICS names).

The endpoint (endpoint.py) resolves settings and placement, calls these in order and keeps each request's failure
its own (isolation.py). docs/extending.md walks through a model written against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
TRUE_WORDS = ("1", "true", "yes", "on")
DEFAULT_MAX_BODY_BYTES = 1 << 20


class RequestError(Exception):
    """A problem with one request: answered with its 4xx JSON, never crashes the worker."""

    def __init__(self, message: str, *, kind: str = "invalid_input", code: int = 400):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code

    def payload(self) -> dict:
        return {"code": self.code, "type": self.kind, "message": self.message}


def pairs(text: str, sep: str = ";") -> dict[str, str]:
    """`a=1; b="2"` -> {"a": "1", "b": "2"} (keys lower case)."""
    found = {}
    for part in text.split(sep) if text else ():
        key, eq, value = part.partition("=")
        if eq:
            found[key.strip().lower()] = value.strip().strip('"')
    return found


@functools.lru_cache(maxsize=64)
def _option_header(name: str) -> str:
    return "x-" + name.replace("_", "-")  # sample_rate -> x-sample-rate


@dataclass(slots=True)
class Request:
    """One request as a runtime hands it over, reduced to what a model needs."""

    body: Any  # bytes, or what TorchServe already decoded (str, dict, list)
    content_type: str = ""
    params: Mapping[str, str] = field(default_factory=dict)  # query string / form fields
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    allow_explain: bool = True  # False for a body fetched from S3: an explanation would echo its content
    media_type: str = field(init=False, default="")  # the Content-Type without parameters, lower case
    _options: dict | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.media_type = self.content_type.partition(";")[0].strip().lower()

    def option(self, name: str) -> str | None:
        """A per-request option (`sample_rate`) wherever a client can put it on every runtime: a form field, an
        `X-Sample-Rate` header, SageMaker's custom attributes (`sample_rate=16000`) or a media-type parameter."""
        found = self.params.get(name) or self.headers.get(_option_header(name))
        if found:
            return found
        if self._options is None:
            self._options = {**pairs(self.content_type.partition(";")[2]),
                             **pairs(self.headers.get(CUSTOM_ATTRIBUTES) or "")}
        return self._options.get(name) or None

    @property
    def explain(self) -> bool:
        """TorchServe's /explanations route marks its requests with an `explain: True` header; elsewhere the
        `explain` option asks for one."""
        if str(self.headers.get("explain", "")).lower() == "true":
            return True
        return str(self.option("explain") or "").strip().lower() in TRUE_WORDS


class Model:
    """Base of a served model: device, precision and inference mode are handled here, once."""

    defaults: ClassVar[Mapping[str, Any]] = {}  # handler settings an archive's model-config.yaml may leave out

    def __init__(self, settings: Mapping[str, Any], device: torch.device, dtype: torch.dtype = torch.float32,
                 precision: str = "fp32"):
        self.settings = dict(settings)  # model-config.yaml's handler section over `defaults`, resolved for device
        self.device = device
        self.dtype = dtype
        self.precision = precision

    @property
    def max_body_bytes(self) -> int:
        """The most bytes one request body may have; S3 references are held to it too."""
        return int(self.settings.get("max_body_bytes") or DEFAULT_MAX_BODY_BYTES)

    def load(self, model_dir: str) -> None:
        raise NotImplementedError

    def read(self, request: Request) -> Any:
        raise NotImplementedError

    def prepare(self, inputs: Sequence[Any]) -> list:
        return list(inputs)

    def preprocess(self, inputs: Sequence[Any]) -> Any:
        return inputs

    def forward(self, batch: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, output: Any, inputs: Sequence[Any]) -> list:
        return list(output)

    def figures(self, inputs: Sequence[Any], answers: Sequence[Any]) -> Mapping[str, float | None]:
        return {}

    def predict(self, inputs: Sequence[Any]) -> list:
        """Prepared inputs -> one answer each: preprocess, forward without autograd, postprocess."""
        batch = self.preprocess(inputs)
        with torch.inference_mode():
            output = self.forward(batch)
        return self.postprocess(output, inputs)

    def parse(self, request: Request) -> Any:
        """One request read and prepared (notebooks, tests): raises the RequestError that would refuse it."""
        (prepared,) = self.prepare([self.read(request)])
        if isinstance(prepared, RequestError):
            raise prepared
        return prepared

    def answer(self, request: Request) -> Any:
        """One request start to end, outside any runtime."""
        return self.predict([self.parse(request)])[0]
