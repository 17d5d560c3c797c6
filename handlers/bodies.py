"""Request bodies and answers: charsets, strict JSON both ways, the Accept check, size and form refusals."""

from __future__ import annotations

import codecs
import json
from typing import Any

try:
    import orjson
except ImportError:  # optional: to_json falls back to the standard library
    orjson = None  # type: ignore[assignment]

from .contract import Request, RequestError, pairs

JSON_TYPE = "application/json"
JSON_ACCEPTS = {"", "*/*", "application/*", JSON_TYPE}
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


def refuse_form(request: Request, send_as: str) -> None:
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
    return pairs(content_type.partition(";")[2]).get("charset") or None


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
    """Strict JSON (no NaN or Infinity), what every answer is sent as: orjson where installed (a tenth of the
    standard library's time), and the standard library's strict encoder for any answer orjson would write otherwise."""
    if orjson is not None:
        try:
            out = orjson.dumps(answer)
        except TypeError:  # orjson.JSONEncodeError
            pass
        else:
            if b"null" not in out:
                return out.decode()
    return _STRICT_JSON.encode(answer)
