"""S3 object references as request bodies: `{"s3_uri": "s3://bucket/key"}`.

A SageMaker real-time invocation carries at most 6 MB, and a contact centre already has the
caller's recording in S3 (Amazon Connect writes it there), so a request may name the object
instead of carrying it. The handler fetches it with the serving role's credentials and
scores it exactly as if its bytes had been posted.

Safe by default: off unless `handler.s3_allowed_buckets` lists the bucket ("bucket" or
"bucket/key-prefix"); the object's size is checked (HEAD) against the model's body cap before
anything is downloaded; only `s3://` is ever fetched. Denied, missing and oversized objects
get their own errors. Other JSON keys travel as options: `sample_rate`, `explain`,
`content_type` (else the object's own Content-Type, else one guessed from the key).

Packed flat into each `.mar`; boto3 is imported only when a reference arrives.
"""

from __future__ import annotations

import functools
import json
import mimetypes
import re
from dataclasses import dataclass
from typing import Any, Mapping

from serving_common import JSON_TYPE, Request, RequestError

SETTING = "s3_allowed_buckets"
FIELD = "s3_uri"
OPTIONS = ("sample_rate", "explain")  # passed on to the core as request options
MAX_REFERENCE_BYTES = 4096  # a reference is a small JSON object; a bigger body is read as a body
# Bucket names: 3-63 lower-case letters, digits, dots and hyphens (S3's naming rules).
S3_URI = re.compile(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(.+)", re.DOTALL)
GENERIC_TYPES = ("", "binary/octet-stream", "application/octet-stream")
CONNECT_TIMEOUT_S, READ_TIMEOUT_S = 5, 30


@dataclass(frozen=True)
class S3Input:
    allowed: tuple[tuple[str, str], ...]  # (bucket, key prefix; "" = any key)
    max_bytes: int  # the model's body cap

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], max_bytes: int) -> "S3Input | None":
        """None (references refused) unless the model-config.yaml lists buckets."""
        entries = settings.get(SETTING) or []
        if isinstance(entries, str):
            entries = [e for e in entries.split(",") if e.strip()]
        allowed = []
        for entry in entries:
            bucket, _, prefix = str(entry).strip().removeprefix("s3://").partition("/")
            if not bucket:
                raise ValueError(f"handler.{SETTING}: {entry!r} names no bucket")
            allowed.append((bucket, prefix))
        return cls(tuple(allowed), int(max_bytes)) if allowed else None

    def permits(self, bucket: str, key: str) -> bool:
        return any(bucket == b and key.startswith(p) for b, p in self.allowed)


def reference(request: Request) -> dict | None:
    """The request's JSON object if it names an S3 object, else None (an ordinary body)."""
    body = request.body
    if isinstance(body, dict):
        doc = body
    elif request.media_type == JSON_TYPE and isinstance(body, (bytes, bytearray, str)) and len(body) <= MAX_REFERENCE_BYTES:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None  # not a reference: the core gives its own JSON error
    else:
        return None
    return doc if isinstance(doc, dict) and FIELD in doc else None


@functools.lru_cache(maxsize=1)
def _client():
    import boto3
    from botocore.config import Config

    # Credentials, region and endpoint (AWS_ENDPOINT_URL) come from the environment: the serving role.
    return boto3.client("s3", config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S,
                                            retries={"max_attempts": 3, "mode": "standard"}))


def _failure(err: Exception, uri: str) -> RequestError:
    """An S3 error as this request's answer: the client's problem (4xx) or S3's (503)."""
    response = getattr(err, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") or status == 404:
        return RequestError(f"{uri} does not exist", kind="s3_object_not_found", code=404)
    if code in ("403", "AccessDenied", "Forbidden") or status == 403:
        return RequestError(f"the serving role may not read {uri}", kind="s3_access_denied", code=403)
    return RequestError(f"S3 did not answer for {uri} ({code or type(err).__name__}); try again",
                        kind="s3_unavailable", code=503)


def resolve(request: Request, s3: S3Input | None) -> Request:
    """The request itself, or, for an S3 reference, the same request with the object's bytes as its body."""
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
    if not s3.permits(bucket, key):
        raise RequestError(f"{uri} is outside the buckets and prefixes this model may read (handler.{SETTING})",
                           kind="s3_not_allowed", code=403)
    try:
        head = _client().head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        if size > s3.max_bytes:
            raise RequestError(f"{uri} has {size} bytes; at most {s3.max_bytes} are accepted (max_body_bytes)",
                               kind="s3_object_too_large", code=413)
        data = _client().get_object(Bucket=bucket, Key=key)["Body"].read(s3.max_bytes + 1)
    except RequestError:
        raise
    except Exception as err:  # noqa: BLE001 - botocore's ClientError, connection errors: this request's answer
        raise _failure(err, uri) from None
    if len(data) > s3.max_bytes:  # the object grew between HEAD and GET
        raise RequestError(f"{uri} is over {s3.max_bytes} bytes (max_body_bytes)", kind="s3_object_too_large", code=413)
    declared = str(head.get("ContentType") or "")
    content_type = doc.get("content_type") or (declared if declared.lower() not in GENERIC_TYPES else "") \
        or mimetypes.guess_type(key)[0] or "application/octet-stream"
    options = {name: str(doc[name]) for name in OPTIONS if name in doc}
    return Request(body=data, content_type=str(content_type), params={**request.params, **options},
                   headers=request.headers)
