"""TorchServe adapter: TorchServe's batch -> Requests for endpoint.Endpoint, its Outcomes -> per-request statuses."""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Mapping

from .contract import Model, Request
from .endpoint import JSON_TYPE, Endpoint, lower_headers
from .isolation import failed
from .operator_metrics import from_context

log = logging.getLogger(__name__)

# Field names a body may arrive under: raw bodies are "body" ("data" with some clients); multipart, the field's.
BODY_FIELDS = ("body", "data", "file", "audio", "text", "inputs")


def to_request(row: Mapping[str, Any], headers: Mapping[str, Any]) -> Request:
    """One entry of TorchServe's batch -> Request (body, content type, parameters).

    Runs once per request: TorchServe names a body's part in the headers exactly as in the row, so the
    common case (a raw body under "body") needs one pass over the headers and no search.
    """
    headers = headers or {}
    plain = lower_headers(headers)
    name = "body" if row.get("body") is not None else body_field(row, headers)
    body = row.get(name) if name else None
    part = (headers.get(name) or _by_lower_name(headers, name)) if name else None
    # TorchServe's part headers are dicts: checked first, as the Mapping check is several times slower.
    part_type = (part.get("content-type") or "") if isinstance(part, dict) or isinstance(part, Mapping) else ""
    outer = plain.get("content-type") or ""
    # A multipart upload's type is its part's; otherwise the request's (TorchServe strips the part's parameters).
    content_type = part_type if outer[:10].lower() == "multipart/" else (outer or part_type)
    params = {} if len(row) == 1 and name else {key: text_of(value) for key, value in row.items() if key != name}
    return Request(body, content_type, params, plain)


def _by_lower_name(headers: Mapping[str, Any], name: str) -> Any:
    name = name.lower()
    return next((v for k, v in headers.items() if str(k).lower() == name), None)


def body_field(row: Mapping[str, Any], headers: Mapping[str, Any]) -> str | None:
    """The field a body arrived under, when it is not "body"."""
    name = next((f for f in BODY_FIELDS if row.get(f) is not None), None)
    if name is not None:
        return name

    # A multipart upload under another field name: its one file part (form fields have no type, or text/*).
    def part_type_of(key):
        part = headers.get(key) or _by_lower_name(headers, str(key))
        return (part.get("content-type") or "") if isinstance(part, Mapping) else ""

    binary = [k for k, v in row.items() if isinstance(v, (bytes, bytearray))]
    files = [k for k in binary if part_type_of(k) and not part_type_of(k).startswith("text/")]
    return files[0] if len(files) == 1 else (binary[0] if len(binary) == 1 else None)


def text_of(value: Any) -> str:
    """A form field's value as text."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return value if isinstance(value, str) else str(value)


class CoreHandler:
    """TorchServe's class entry point; subclasses name their Model class."""

    core: ClassVar[type[Model]]

    def __init__(self):
        self.endpoint: Endpoint | None = None
        self.initialized = False

    @property
    def model(self) -> Any:
        return self.endpoint.model if self.endpoint else None

    def initialize(self, context) -> None:
        # TorchServe gives a worker its GPU (from deviceType/deviceIds in model-config.yaml) as gpu_id.
        self.endpoint = Endpoint(self.core, context.system_properties.get("model_dir"),
                                 getattr(context, "model_yaml_config", None),
                                 context.system_properties.get("gpu_id"), from_context(context))
        self.initialized = True

    def handle(self, data, context) -> list:
        """One answer per request, each strict JSON with its own status; never raises."""
        assert self.endpoint is not None, "initialize() first"  # TorchServe calls it before any request
        ids = [context.get_request_id(idx) for idx in range(len(data))]
        requests: list = []
        for idx, row in enumerate(data):
            try:
                requests.append(to_request(row, context.get_all_request_header(idx)))
            except Exception as exc:  # noqa: BLE001 - a row that cannot be read answers alone
                requests.append(failed(exc, ids[idx], "reading"))
        outcomes = self.endpoint.answer(requests, ids)
        for idx, outcome in enumerate(outcomes):
            context.set_response_content_type(idx, JSON_TYPE)
            if outcome.status != 200:
                context.set_response_status(code=outcome.status, phrase=outcome.kind, idx=idx)
        return [outcome.body for outcome in outcomes]
