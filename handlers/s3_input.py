"""S3 object references as request bodies, `{"s3_uri": "s3://bucket/key"}`: fetched with the serving role's
credentials and scored as if the bytes had been posted (SageMaker's real-time payloads stop at 6 MB).

Off unless `handler.s3_allowed_buckets` lists the bucket (prefixes are whole path segments); the size is checked
by HEAD before the GET, which is tied to the ETag HEAD saw, read with a bound and within the call's deadline;
explanations of fetched objects are off unless `handler.s3_explain` (docs/runtimes.md, "Recordings from S3")."""

from __future__ import annotations

import dataclasses
import functools
import json
import mimetypes
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping

from .bodies import JSON_TYPE
from .contract import Request, RequestError
from .settings import setting_flag

SETTING = "s3_allowed_buckets"
EXPLAIN_SETTING = "s3_explain"
FIELD = "s3_uri"
OPTIONS = ("sample_rate", "explain")  # passed on to the core as request options
MAX_REFERENCE_BYTES = 4096  # a reference is a small JSON object; a bigger body is read as a body
# Bucket names: 3-63 lower-case letters, digits, dots and hyphens (S3's naming rules).
S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+)", re.DOTALL)
GENERIC_TYPES = ("", "binary/octet-stream", "application/octet-stream")
BAD_SEGMENTS = ("", ".", "..")
# Budgets (seconds): each S3 call waits at most CONNECT + READ per attempt, ATTEMPTS times; HEAD and GET
# are two calls; the body is read CHUNK_BYTES at a time, each read bounded by READ_TIMEOUT_S.
CONNECT_TIMEOUT_S, READ_TIMEOUT_S, ATTEMPTS = 1.0, 3.0, 2
S3_BUDGET_S = 2 * ATTEMPTS * (CONNECT_TIMEOUT_S + READ_TIMEOUT_S)  # 16 s before the body's first byte
CHUNK_BYTES = 1 << 20


def explanation_refused() -> RequestError:
    return RequestError("explanations of S3 objects are off for this model (handler.s3_explain): they would echo "
                        "the object's content", kind="s3_explain_disabled", code=403)


def segments(path: str) -> list[str]:
    return path.split("/")


@dataclass(frozen=True)
class S3Input:
    allowed: tuple[tuple[str, str], ...]  # (bucket, key prefix as whole segments without a trailing "/"; "" = any)
    max_bytes: int  # the model's body cap
    explain: bool = False  # explanations of fetched objects (handler.s3_explain)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], max_bytes: int) -> "S3Input | None":
        """None (references refused) unless the model-config.yaml lists buckets."""
        entries = settings.get(SETTING) or []
        if isinstance(entries, str):
            entries = [e for e in entries.split(",") if e.strip()]
        allowed = []
        for entry in entries:
            bucket, _, prefix = str(entry).strip().removeprefix("s3://").partition("/")
            prefix = prefix.rstrip("/")
            if not bucket:
                raise ValueError(f"handler.{SETTING}: {entry!r} names no bucket")
            if prefix and any(part in BAD_SEGMENTS for part in segments(prefix)):
                raise ValueError(f"handler.{SETTING}: {entry!r} has an empty, '.' or '..' segment")
            allowed.append((bucket, prefix))
        if not allowed:
            return None
        return cls(tuple(allowed), int(max_bytes), setting_flag(settings, EXPLAIN_SETTING, False))

    def permits(self, bucket: str, key: str) -> bool:
        """The key lies under an allowed prefix, segment by segment (never a string prefix)."""
        parts = segments(key)
        for allowed_bucket, prefix in self.allowed:
            head = segments(prefix.rstrip("/")) if prefix.strip("/") else []
            if bucket == allowed_bucket and len(parts) > len(head) and parts[: len(head)] == head:
                return True
        return False


def reference(request: Request) -> dict | None:
    """The request's JSON object if it names an S3 object, else None (an ordinary body)."""
    body = request.body
    if isinstance(body, dict):
        doc = body
    elif request.media_type == JSON_TYPE and isinstance(body, (bytes, bytearray, str)) and len(body) <= MAX_REFERENCE_BYTES:
        if not _may_name_field(body):
            return None  # the core parses it; parsing it here too would cost every JSON request twice
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None  # not a reference: the core gives its own JSON error
    else:
        return None
    return doc if isinstance(doc, dict) and FIELD in doc else None


def _may_name_field(body: bytes | bytearray | str) -> bool:
    """Whether a JSON text could hold the key "s3_uri": spelled out, with any character escaped (\\u0073...), or
    in UTF-16 or UTF-32 (which json.loads reads from bytes too)."""
    if isinstance(body, str):
        return FIELD in body or "\\u" in body
    return FIELD.encode() in body or b"\\u" in body or not json.detect_encoding(body).startswith("utf-8")


@functools.lru_cache(maxsize=1)
def _client():
    import boto3
    from botocore.config import Config

    # Credentials, region and endpoint (AWS_ENDPOINT_URL) come from the environment: the serving role.
    return boto3.client("s3", config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                                            retries={"total_max_attempts": ATTEMPTS, "mode": "standard"}))


def _failure(err: Exception, uri: str) -> RequestError:
    """An S3 error as this request's answer: the client's problem (4xx) or S3's (503)."""
    response = getattr(err, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404:
        return RequestError(f"{uri} does not exist", kind="s3_object_not_found", code=404)
    if code in ("412", "PreconditionFailed") or status == 412:
        return RequestError(f"{uri} changed while it was being read; send the request again",
                            kind="s3_object_changed", code=409)
    if code in ("403", "AccessDenied", "Forbidden") or status == 403:
        return RequestError(f"the serving role may not read {uri}", kind="s3_access_denied", code=403)
    return RequestError(f"S3 did not answer for {uri} ({code or type(err).__name__}); try again",
                        kind="s3_unavailable", code=503)


def _out_of_time(uri: str) -> RequestError:
    return RequestError(f"no time was left in this batch's budget to fetch {uri} (responseTimeout); send it again",
                        kind="deadline_exceeded", code=503)


def _check_key(uri: str, key: str) -> None:
    if any(part in BAD_SEGMENTS for part in segments(key)):
        raise RequestError(f"{uri!r:.200} has an empty, '.' or '..' path segment; name the object by its plain key",
                           kind="invalid_s3_uri")


def fetch(bucket: str, key: str, max_bytes: int, deadline: float | None) -> tuple[bytes, dict]:
    """The object's bytes (at most max_bytes, read before the deadline) and its HEAD answer."""
    uri = f"s3://{bucket}/{key}"
    if deadline is not None and deadline - time.monotonic() < S3_BUDGET_S:
        raise _out_of_time(uri)
    try:
        head = _client().head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        if size > max_bytes:
            raise RequestError(f"{uri} has {size} bytes; at most {max_bytes} are accepted (max_body_bytes)",
                               kind="s3_object_too_large", code=413)
        tied = {"IfMatch": head["ETag"]} if head.get("ETag") else {}
        body = _client().get_object(Bucket=bucket, Key=key, **tied)["Body"]
        try:
            data = _read_bounded(body, max_bytes, deadline, uri)
        finally:
            body.close()
    except RequestError:
        raise
    except Exception as err:  # noqa: BLE001 - botocore's ClientError, connection errors: this request's answer
        raise _failure(err, uri) from None
    return data, head


def _read_bounded(body, max_bytes: int, deadline: float | None, uri: str) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise _out_of_time(uri)
        chunk = body.read(min(CHUNK_BYTES, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:  # the object grew between HEAD and GET
            raise RequestError(f"{uri} is over {max_bytes} bytes (max_body_bytes)", kind="s3_object_too_large",
                               code=413)


def resolve(request: Request, s3: S3Input | None, deadline: float | None = None) -> Request:
    """The request, or for an S3 reference the same request with the object's bytes as its body; no fetch starts
    that could outlast `deadline` (time.monotonic(), the handler call's)."""
    doc = reference(request)
    if doc is None:
        return request
    uri = doc[FIELD]
    if s3 is None:
        raise RequestError(f"S3 references are off for this model (handler.{SETTING} lists no bucket)",
                           kind="s3_disabled", code=403)
    match = S3_URI.fullmatch(uri) if isinstance(uri, str) else None
    if match is None:
        raise RequestError(f'"{FIELD}" must be an s3://bucket/key URI, got {uri!r:.200}', kind="invalid_s3_uri")
    bucket, key = match.groups()
    _check_key(uri, key)
    if not s3.permits(bucket, key):
        raise RequestError(f"{uri} is outside the buckets and prefixes this model may read (handler.{SETTING})",
                           kind="s3_not_allowed", code=403)
    options = {name: str(doc[name]) for name in OPTIONS if name in doc}
    resolved = Request(body=b"", content_type="", params={**request.params, **options}, headers=request.headers,
                       allow_explain=s3.explain)
    if resolved.explain and not s3.explain:  # refused before the fetch; the core refuses what the object asks
        raise explanation_refused()
    data, head = fetch(bucket, key, s3.max_bytes, deadline)
    declared = str(head.get("ContentType") or "")
    content_type = doc.get("content_type") or (declared if declared.lower() not in GENERIC_TYPES else "") \
        or mimetypes.guess_type(key)[0] or "application/octet-stream"
    return dataclasses.replace(resolved, body=data, content_type=str(content_type))
