"""Pieces every model core shares: the request error type, body decoding, settings.

Packed into each `.mar` with the model's core module (the archive's marport_serving package);
it imports nothing else from the project: only the standard library, numpy and torch.
"""

from __future__ import annotations

import codecs
import functools
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

try:
    import orjson
except ImportError:  # optional: to_json falls back to the standard library
    orjson = None  # type: ignore[assignment]

from .names import CHECKPOINT_SUBDIR, CONFIG_DIR

JSON_TYPE = "application/json"
CUSTOM_ATTRIBUTES = "x-amzn-sagemaker-custom-attributes"
JSON_ACCEPTS = {"", "*/*", "application/*", JSON_TYPE}
THREADS_ENV = "MARPORT_TORCH_THREADS"
TRUE_WORDS = ("1", "true", "yes", "on")
BOM_CHAR = "\ufeff"
# Python codecs that are not character sets a client could mean (escapes, IDNA, a codec that always fails).
PSEUDO_CODECS = {"undefined", "unicode-escape", "raw-unicode-escape", "punycode", "idna", "mbcs", "oem"}
# Byte-order marks, longest first: UTF-32's little-endian mark begins with UTF-16's.
BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# A body starting otherwise has no BOM to look for (a tuple: bytearray slices are unhashable).
BOM_STARTS = tuple(sorted({bom[:1] for bom, _ in BOMS}))


class RequestError(Exception):
    """A problem with one request: answered with a 4xx, never crashes the worker."""

    def __init__(self, message: str, *, kind: str = "invalid_input", code: int = 400):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.code = code

    def payload(self) -> dict:
        return {"code": self.code, "type": self.kind, "message": self.message}


class ModelCore(Protocol):
    """What a model core module (sentiment.py, respiratory.py) provides to the runtime adapters.

    `load` puts the model where `placement` (placement.Placement: device and precision) says;
    `read_request` does the checks of one request that need no model work and refuses with RequestError;
    `parse_batch` does the rest for a handler call's read requests together (one tokenizer call, say),
    answering each entry with the parsed request or the RequestError that refuses it alone;
    `parse_request` is both for one request (for callers outside a handler call);
    `predict` runs already-parsed requests together and answers each in order;
    `figures` says what a handler call did, for the operator metrics.
    """

    SHIPPED: Mapping[str, Any]  # the shipped model-config.yaml's handler section: what an archive's own leaves out

    def load(self, model_dir: str, settings: Mapping[str, Any] | None = None, placement: Any = None) -> Any: ...

    def read_request(self, request: "Request", model: Any) -> Any: ...

    def parse_batch(self, model: Any, items: Sequence[Any]) -> list: ...

    def parse_request(self, request: "Request", model: Any) -> Any: ...

    def predict(self, model: Any, parsed: Sequence[Any]) -> list: ...

    def body_limit(self, model: Any) -> int:
        """The most bytes one request body may have (max_body_bytes); S3 references are held to it too."""

    def figures(self, model: Any, parsed: Sequence[Any], answers: Sequence[Any]) -> Mapping[str, float]:
        """One handler call's figures for the operator metrics (operator_metrics.METRICS names)."""


@dataclass(slots=True)
class Request:
    """One request as the runtimes hand it to us, reduced to what a core needs."""

    body: Any  # bytes, or whatever TorchServe already decoded (str, dict, list)
    content_type: str = ""
    params: Mapping[str, str] = field(default_factory=dict)  # query string / form fields
    headers: Mapping[str, str] = field(default_factory=dict)  # request headers, lower-case names
    allow_explain: bool = True  # False for a body fetched from S3 (s3_input: its words would be echoed back)
    # Worked out once, here: a handler call asks each request for its type and options several times.
    media_type: str = field(init=False, default="")  # the Content-Type's media type, lower case
    # SageMaker's custom attributes and the Content-Type's parameters, parsed when an option is first asked for.
    _custom: dict | None = field(init=False, repr=False, default=None)
    _media_params: dict | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self.media_type = self.content_type.partition(";")[0].strip().lower()

    def option(self, name: str) -> str | None:
        """A per-request option, such as `sample_rate`, wherever the client could put it.

        TorchServe 0.12 does not pass query parameters of a request with a body to
        the handler, and SageMaker's toolkit passes no headers at all, so an option
        may come as a form field, an `X-Sample-Rate` header, SageMaker's
        `X-Amzn-SageMaker-Custom-Attributes: sample_rate=16000`, or a media-type
        parameter (`application/x-npy; sample_rate=16000`), which every route keeps.
        """
        found = self.params.get(name) or self.headers.get(_option_header(name))
        if found:
            return found
        if self._custom is None:  # parsed on the first option not found above (most requests have neither)
            custom = self.headers.get(CUSTOM_ATTRIBUTES)
            self._custom = _pairs(custom, ";") if custom else {}
            self._media_params = _pairs(self.content_type.partition(";")[2], ";") if ";" in self.content_type else {}
        return self._custom.get(name) or (self._media_params or {}).get(name) or None

    @property
    def explain(self) -> bool:
        """Asked for an explanation: TorchServe's /explanations route marks its requests with an
        `explain: True` header; elsewhere (SageMaker's /invocations) the `explain` option
        (`X-Explain: true`, custom attributes `explain=true`) asks for one."""
        marked = self.headers.get("explain")
        if marked is not None and str(marked).lower() == "true":
            return True
        asked = self.option("explain")
        return asked is not None and str(asked).strip().lower() in TRUE_WORDS


@functools.lru_cache(maxsize=64)
def _option_header(name: str) -> str:
    """The header an option may come as: sample_rate -> x-sample-rate."""
    return "x-" + name.replace("_", "-")


def explanation_refused() -> RequestError:
    return RequestError("explanations of S3 objects are off for this model (handler.s3_explain): they would echo "
                        "the object's content", kind="s3_explain_disabled", code=403)


def _pairs(text: str, sep: str) -> dict[str, str]:
    if not text:
        return {}
    pairs = {}
    for part in text.split(sep):
        key, eq, value = part.partition("=")
        if eq:
            pairs[key.strip().lower()] = value.strip().strip('"')
    return pairs


def check_accept(accept: str | None) -> None:
    """Answers are JSON; a client that accepts nothing like it gets a 406."""
    if not accept or accept == "*/*":  # what nearly every client sends
        return
    offered = [a.split(";", 1)[0].strip().lower() for a in accept.split(",")]
    if not any(a in JSON_ACCEPTS for a in offered):
        raise RequestError(
            f"cannot answer with {accept!r}: answers are application/json",
            kind="not_acceptable",
            code=406,
        )


def as_bytes(body: Any) -> bytes:
    """The body as bytes; TorchServe gives bytearray for raw bodies."""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"body has an unpaired surrogate at character {exc.start}", kind="invalid_encoding") from None
    raise RequestError(f"expected a raw request body, got {type(body).__name__}")


FORM_TYPE = "application/x-www-form-urlencoded"


def refuse_form(request: "Request", send_as: str) -> None:
    """`curl --data` without -H sends application/x-www-form-urlencoded, which TorchServe splits into form
    fields: the body arrives empty or mangled ('+' and '%' decoded, '&' and '=' cut), so it is refused
    by name rather than guessed at (docs/serving.md, "`curl --data` without a content type")."""
    if request.media_type == FORM_TYPE:
        raise RequestError(
            f"the body was sent as {FORM_TYPE} (what curl --data sends without a Content-Type), which the server "
            f"splits into form fields; send it as {send_as} (curl -H 'Content-Type: {send_as}' --data-binary ...)",
            kind="form_encoded_body", code=415,
        )


def check_body_size(body: Any, limit: int) -> None:
    """Refuse an over-size body before any decoding work is spent on it."""
    size = len(body) if isinstance(body, (bytes, bytearray, memoryview, str)) else 0
    if size > limit:
        raise RequestError(
            f"request body has {size} bytes; at most {limit} are accepted (max_body_bytes)",
            kind="body_too_large",
            code=413,
        )


def _charset(content_type: str) -> str | None:
    return _pairs(content_type.partition(";")[2], ";").get("charset") or None


def as_text(body: Any, content_type: str = "") -> str:
    """Decode a text body strictly: the declared charset, else a BOM, else UTF-8.

    Invalid bytes for the encoding are the caller's error (400); an unknown or
    non-text charset is a 415.
    """
    if isinstance(body, str):
        return body.removeprefix(BOM_CHAR)
    data = body if isinstance(body, (bytes, bytearray)) else as_bytes(body)  # both decode as they are: no copy
    declared = _charset(content_type) if ";" in content_type else None
    if declared:
        try:
            codec = codecs.lookup(declared)
        except LookupError:
            codec = None
        if codec is None or codec.name in PSEUDO_CODECS or not getattr(codec, "_is_text_encoding", True):
            raise RequestError(
                f"unsupported charset {declared!r}; send UTF-8 (or name a text encoding such as utf-16)",
                kind="unsupported_charset",
                code=415,
            )
        encoding = codec.name
    else:
        encoding = next((enc for bom, enc in BOMS if data.startswith(bom)), "utf-8") if data[:1] in BOM_STARTS else "utf-8"
    try:
        text = data.decode(encoding)
    except UnicodeError as exc:
        where = f" (byte {exc.start})" if isinstance(exc, UnicodeDecodeError) else ""
        raise RequestError(
            f"request body is not valid {encoding}{where}; send UTF-8 text",
            kind="invalid_encoding",
        ) from None
    # A BOM says how the bytes are encoded; it is not part of the text.
    return text.removeprefix(BOM_CHAR)


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def as_json(body: Any, content_type: str = "") -> Any:
    """Parse a JSON body strictly (RFC 8259: no NaN/Infinity) unless the runtime already did."""
    if isinstance(body, (dict, list)):
        return body
    text = as_text(body, content_type)
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
            kind="invalid_json",
        ) from None
    except RecursionError:
        raise RequestError("JSON nests too deeply; send a flat document", kind="json_too_deep") from None
    except ValueError as exc:  # NaN/Infinity literals, integers past Python's digit limit
        raise RequestError(f"invalid JSON: {exc}", kind="invalid_json") from None


# Built once: json.dumps with options builds a new encoder per call.
_STRICT_JSON = json.JSONEncoder(allow_nan=False, ensure_ascii=False)


def to_json(answer: Any) -> str:
    """Strict JSON (no NaN or Infinity): what every answer is sent as.

    orjson, where installed (marport[serve] and the archives' code/requirements.txt bring it), writes an
    answer in a tenth of the standard library's time, which on a GPU is a real share of a text's cost
    (docs/devices.md). It writes NaN and Infinity as null and refuses what it has no form for (keys
    that are not strings, integers past 64 bits): any such answer, and any with a null in it, is
    written by the standard library's strict encoder instead, which decides as it always did.
    """
    if orjson is not None:
        try:
            out = orjson.dumps(answer)
        except TypeError:  # orjson.JSONEncodeError
            pass
        else:
            if b"null" not in out:
                return out.decode()
    return _STRICT_JSON.encode(answer)


def checkpoint_dir(model_dir: str) -> str:
    """Archives keep the checkpoint in a subfolder; a bare checkpoint folder works too."""
    sub = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    return sub if os.path.isdir(sub) else model_dir


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(settings: Mapping[str, Any]) -> int:
    """Give each worker a fixed number of intra-op threads.

    Several workers each using every core fight over the same CPUs; the `threads`
    setting (or MARPORT_TORCH_THREADS) divides them on purpose. `all` is every core this
    process may run on (the CPU default for one worker); `auto` left unresolved means the same.
    """
    value = str(os.environ.get(THREADS_ENV) or settings.get("threads") or 1).strip().lower()
    threads = usable_cores() if value in ("all", "auto") else int(value)
    torch.set_num_threads(max(1, threads))
    return torch.get_num_threads()


def setting_flag(settings: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A yes/no handler setting, whether YAML parsed it as a bool or an environment gave a string."""
    value = settings.get(key, default)
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE_WORDS


def read_config(model_dir: str, yaml_config: Mapping[str, Any] | None) -> dict:
    """The whole model-config.yaml: TorchServe passes the parsed file in; the SageMaker toolkit
    path and in-process callers read the copy packed in the archive."""
    config = yaml_config
    if config is None:
        path = os.path.join(model_dir, "model-config.yaml")
        if os.path.exists(path):
            import yaml

            with open(path, encoding="utf-8") as fh:
                config = yaml.safe_load(fh)
    return dict(config or {})


def handler_settings(config: Mapping[str, Any]) -> dict:
    """The `handler:` section of a parsed model-config.yaml."""
    return dict(config.get("handler") or {})


def read_settings(model_dir: str, yaml_config: Mapping[str, Any] | None) -> dict:
    """The `handler:` section of model-config.yaml."""
    return handler_settings(read_config(model_dir, yaml_config))


def shipped_settings(model: str) -> dict:
    """The `handler:` section of a model's shipped model-config.yaml (config/<model>.yaml beside these modules,
    in the repo, the wheel and every archive): the one source of a core's defaults. An archive's own
    settings are laid over it, so a setting its model-config.yaml leaves out keeps the shipped value."""
    import yaml

    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), CONFIG_DIR, f"{model}.yaml"),
              encoding="utf-8") as fh:
        return handler_settings(yaml.safe_load(fh) or {})


# TorchServe's own default when model-config.yaml names no responseTimeout.
DEFAULT_RESPONSE_TIMEOUT_S = 120
# A handler call stops starting new work (S3 fetches, bisection halves) after this share of
# responseTimeout, so that what it has done still reaches the front end before the worker is
# declared stuck and restarted (docs/caps.md, "Time budgets").
BUDGET_SHARE = 0.85


def call_budget_s(config: Mapping[str, Any]) -> float:
    """Seconds one handler call may spend: BUDGET_SHARE of the model's responseTimeout."""
    return BUDGET_SHARE * float(config.get("responseTimeout") or DEFAULT_RESPONSE_TIMEOUT_S)
