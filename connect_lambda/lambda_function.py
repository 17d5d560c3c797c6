"""Amazon Connect contact-flow Lambda: score a caller's recording with the respiratory endpoint through an S3
reference, and answer the flat string map Connect requires (label, probability, threshold, review, error).

Only recordings it is configured for (RECORDING_BUCKET, under RECORDING_PREFIX, named after this contact unless
RECORDING_KEY_MATCH_CONTACT is false); any failure still gives the flow a branchable answer (label "error", review
"true"); one deadline of BUDGET_S covers the call, under Connect's 8 s. docs/runtimes.md, "The call-centre hook"."""

from __future__ import annotations

import functools
import json
import os
import time

URI_KEYS = ("recording_s3_uri", "RecordingS3Uri", "recording_uri")
KEY_KEYS = ("recording_key", "RecordingKey")
CONNECT_LIMIT_S = 8.0  # Connect's limit for the whole Lambda call
BUDGET_S = 7.0  # ours: a second for Lambda's own start and the answer's way back
HEAD_CONNECT_S, HEAD_READ_S = 0.5, 1.0
INVOKE_CONNECT_S, DEFAULT_INVOKE_READ_S = 0.5, 5.0
MARGIN_S = 0.3  # kept back from the function's own remaining time
BAD_SEGMENTS = ("", ".", "..")
FALSE_WORDS = ("0", "false", "no", "off")


class Unscorable(Exception):
    """Why no score could be had; its text goes to the flow's `error` attribute."""


def _first(source: dict, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = source.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _setting(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise Unscorable(f"misconfigured: {name} is not set")
    return value


def recording_location(event: dict) -> tuple[str, str]:
    """(bucket, key) of the recording the block's parameters name, if the configuration allows it."""
    bucket = _setting("RECORDING_BUCKET")
    details = event.get("Details") if isinstance(event, dict) else None
    details = details if isinstance(details, dict) else {}
    parameters = details.get("Parameters") or {}
    parameters = parameters if isinstance(parameters, dict) else {}
    uri = _first(parameters, URI_KEYS)
    if uri:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise Unscorable(f"bad_recording_uri: {uri[:200]!r} is not s3://bucket/key")
        named, _, key = uri[5:].partition("/")
        if named != bucket:
            raise Unscorable(f"recording_not_allowed: bucket {named[:64]!r} is not RECORDING_BUCKET")
    else:
        key = _first(parameters, KEY_KEYS)
    if not key:
        raise Unscorable("no_recording: the block's parameters name no recording (recording_key, or "
                         "recording_s3_uri in RECORDING_BUCKET)")
    _check_key(key, details.get("ContactData") or {})
    return bucket, key  # literal: Connect's keys hold ':' and are not URL-encoded


def _check_key(key: str, contact: dict) -> None:
    parts = key.split("/")
    if any(part in BAD_SEGMENTS for part in parts):
        raise Unscorable("recording_not_allowed: the key has an empty, '.' or '..' segment")
    prefix = [p for p in os.environ.get("RECORDING_PREFIX", "").strip("/").split("/") if p]
    if len(parts) <= len(prefix) or parts[: len(prefix)] != prefix:
        raise Unscorable("recording_not_allowed: the key is not under RECORDING_PREFIX")
    if os.environ.get("RECORDING_KEY_MATCH_CONTACT", "true").strip().lower() in FALSE_WORDS:
        return
    ids = [contact.get(k) for k in ("ContactId", "InitialContactId")] if isinstance(contact, dict) else []
    if not any(isinstance(i, str) and len(i) >= 8 and i in parts[-1] for i in ids):
        raise Unscorable("recording_not_allowed: the recording's name does not carry this contact's id")


def _invoke_read_s() -> float:
    try:
        return min(float(os.environ.get("INVOKE_TIMEOUT_S", DEFAULT_INVOKE_READ_S)), BUDGET_S - HEAD_CONNECT_S
                   - HEAD_READ_S - INVOKE_CONNECT_S)
    except ValueError:
        return DEFAULT_INVOKE_READ_S


@functools.lru_cache(maxsize=4)
def _build_clients(invoke_read_s: float):
    import boto3
    from botocore.config import Config

    head = Config(connect_timeout=HEAD_CONNECT_S, read_timeout=HEAD_READ_S, retries={"total_max_attempts": 1})
    invoke = Config(connect_timeout=INVOKE_CONNECT_S, read_timeout=invoke_read_s, retries={"total_max_attempts": 1})
    return boto3.client("s3", config=head), boto3.client("sagemaker-runtime", config=invoke)


def _clients():
    """(s3, sagemaker-runtime), built once per container (and per INVOKE_TIMEOUT_S)."""
    return _build_clients(_invoke_read_s())


def deadline_of(context) -> float:
    """time.monotonic() by which the answer must be ready."""
    budget = BUDGET_S
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        budget = min(budget, remaining() / 1000 - MARGIN_S)
    return time.monotonic() + budget


def _error_kind(err: Exception) -> str:
    code = ((getattr(err, "response", None) or {}).get("Error") or {}).get("Code")
    return str(code or type(err).__name__)


def score(bucket: str, key: str, deadline: float | None = None) -> dict:
    endpoint = _setting("SAGEMAKER_ENDPOINT")
    deadline = time.monotonic() + BUDGET_S if deadline is None else deadline
    s3, runtime = _clients()
    try:  # fail fast, and say so, before the endpoint is asked
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as err:  # noqa: BLE001
        raise Unscorable(f"recording_unavailable: s3://{bucket}/{key} ({_error_kind(err)})") from None
    if deadline - time.monotonic() < INVOKE_CONNECT_S + _invoke_read_s():
        raise Unscorable("no_time: too little of Connect's 8 s was left to ask the endpoint")
    body = json.dumps({"s3_uri": f"s3://{bucket}/{key}"})
    try:
        reply = runtime.invoke_endpoint(EndpointName=endpoint, ContentType="application/json",
                                        Accept="application/json", Body=body)
    except Exception as err:  # noqa: BLE001 - endpoint down, throttled, a model error: all branchable
        detail = ((getattr(err, "response", None) or {}).get("OriginalMessage") or "")[:200]
        raise Unscorable(f"endpoint_failed: {endpoint} ({_error_kind(err)}) {detail}".strip()) from None
    try:
        answer = json.loads(reply["Body"].read())
        return {"label": str(answer["label"]), "probability": f"{float(answer['probability']):.4f}",
                "threshold": f"{float(answer['threshold']):.4f}",
                "review": "true" if answer.get("review") else "false", "error": ""}
    except (ValueError, KeyError, TypeError) as err:
        raise Unscorable(f"bad_answer: the endpoint answered without a score ({type(err).__name__})") from None


def lambda_handler(event, context=None) -> dict:
    """Connect's entry point: always a flat map of strings."""
    try:
        deadline = deadline_of(context)
        return score(*recording_location(event), deadline)
    except Unscorable as why:
        return {"label": "error", "probability": "", "threshold": "", "review": "true", "error": str(why)}
    except Exception as err:  # noqa: BLE001 - never leave the flow without an answer
        return {"label": "error", "probability": "", "threshold": "", "review": "true",
                "error": f"internal: {type(err).__name__}"}
