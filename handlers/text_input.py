"""Text request bodies: text/plain, {"text": "..."} or {"inputs": [...]} -> checked texts, or a RequestError.

Every check that needs no tokens: body size, charset, JSON shape, text count and length, Unicode that can be
encoded, text a reader could see. The sibling of audio_input.py for text models.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from .bodies import JSON_TYPE, as_json, as_text, check_body_size, refuse_form
from .contract import Request, RequestError

TEXT_TYPES = ("text/plain", "")  # an absent Content-Type is read as text
# Categories of characters a reader cannot see: spaces, controls, format marks (zero-width, BOM, bidi).
INVISIBLE = ("Zs", "Zl", "Zp", "Cc", "Cf")
ASCII_INVISIBLE = "".join(c for c in map(chr, range(128)) if unicodedata.category(c) in INVISIBLE)
SHAPES = 'send text/plain, {"text": "..."} or {"inputs": [...]}'


@dataclass(frozen=True)
class TextCaps:
    max_body_bytes: int  # refused before decoding
    max_chars: int  # per text: bounds tokenisation work before it starts
    max_items: int  # texts per {"inputs": [...]} request


@dataclass(frozen=True)
class Texts:
    texts: list[str]
    single: bool  # answer with one object rather than a list
    explain: bool  # the JSON body asked for an explanation


def check_text(text: Any, where: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise RequestError(f"{where} must be a string, got {type(text).__name__}", kind="invalid_type")
    if len(text) > max_chars:
        raise RequestError(f"{where} has {len(text)} characters; at most {max_chars} are accepted (max_chars)",
                           kind="text_too_long", code=413)
    if text.isascii():  # most texts: no surrogates possible, and str.strip finds a visible character
        blank = not text.strip(ASCII_INVISIBLE)
    else:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RequestError(f"{where} has an unpaired surrogate (U+{ord(text[exc.start]):04X}) at character "
                               f"{exc.start}; send valid Unicode text", kind="invalid_text") from None
        blank = all(unicodedata.category(ch) in INVISIBLE for ch in text)
    if blank:
        raise RequestError(f"{where} has no visible characters; send non-blank text", kind="empty_text")
    return text


def json_type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _explain_field(doc: dict) -> bool:
    value = doc.get("explain", False)
    if not isinstance(value, bool):
        raise RequestError(f'"explain" must be true or false, got {json_type(value)}', kind="invalid_type")
    return value


def _listed(items: Any, caps: TextCaps) -> list[str]:
    if not isinstance(items, list):
        raise RequestError(f'"inputs" must be a list of strings, got {type(items).__name__}', kind="invalid_type")
    if not items:
        raise RequestError('"inputs" is an empty list', kind="empty_text")
    if len(items) > caps.max_items:
        raise RequestError(f'"inputs" has {len(items)} texts; at most {caps.max_items} per request (max_items)',
                           kind="too_many_inputs", code=413)
    return [check_text(t, f'"inputs"[{i}]', caps.max_chars) for i, t in enumerate(items)]


def read_texts(request: Request, caps: TextCaps) -> Texts:
    """The request's texts, checked."""
    body = request.body
    refuse_form(request, "text/plain")
    if body is None or (isinstance(body, (bytes, bytearray, str)) and len(body) == 0):
        raise RequestError(f"request body is empty; {SHAPES}", kind="empty_body")
    check_body_size(body, caps.max_body_bytes)
    if request.media_type != JSON_TYPE and not isinstance(body, (dict, list)):
        if request.media_type not in TEXT_TYPES:
            raise RequestError(f"unsupported content type {request.media_type!r}; use text/plain or "
                               "application/json", kind="unsupported_media_type", code=415)
        return Texts([check_text(as_text(body, request.content_type), "text", caps.max_chars)], True, False)
    doc = as_json(body, request.content_type)
    if isinstance(doc, dict) and "text" in doc:
        return Texts([check_text(doc["text"], '"text"', caps.max_chars)], True, _explain_field(doc))
    if isinstance(doc, dict) and "inputs" in doc:
        if isinstance(doc["inputs"], str):  # Hugging Face's and SageMaker's single input
            return Texts([check_text(doc["inputs"], '"inputs"', caps.max_chars)], True, _explain_field(doc))
        return Texts(_listed(doc["inputs"], caps), False, _explain_field(doc))
    raise RequestError('JSON body must be an object with "text" (a string) or "inputs" (a list of strings)',
                       kind="invalid_json_shape")
