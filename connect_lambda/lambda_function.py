"""Amazon Connect contact-flow Lambda: score a caller's recording with the respiratory endpoint.

A contact flow's "Invoke AWS Lambda function" block sends the contact's event; this function
finds the recording in S3 (the block's parameters, else the contact's attributes), asks the
SageMaker endpoint for a score with an S3 reference (`{"s3_uri": ...}`: no 6 MB payload
limit, no audio through Lambda), and returns the flat string-to-string map Connect requires:

    label, probability, threshold, review ("true"/"false"), error ("" when all went well)

Whatever fails (no recording named, object missing, endpoint down, a model error), the flow
still gets a branchable answer: label "error", review "true" (a person decides), and the
reason in `error`. Only the standard library and boto3 (in every Lambda Python runtime).

Environment: SAGEMAKER_ENDPOINT (required), RECORDING_BUCKET (when events give only a key),
INVOKE_TIMEOUT_S (default 6: Connect waits at most 8 s for a Lambda).
"""

from __future__ import annotations

import json
import os

URI_KEYS = ("recording_s3_uri", "RecordingS3Uri", "recording_uri")
BUCKET_KEYS = ("recording_bucket", "RecordingBucket")
KEY_KEYS = ("recording_key", "RecordingKey")
DEFAULT_TIMEOUT_S = 6.0


class Unscorable(Exception):
    """Why no score could be had; its text goes to the flow's `error` attribute."""


def _first(sources: list[dict], names: tuple[str, ...]) -> str | None:
    for source in sources:
        for name in names:
            value = source.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def recording_location(event: dict) -> tuple[str, str]:
    """(bucket, key) of the recording the event names: block parameters first, then contact attributes."""
    details = (event or {}).get("Details") or {}
    sources = [details.get("Parameters") or {}, (details.get("ContactData") or {}).get("Attributes") or {}]
    uri = _first(sources, URI_KEYS)
    if uri:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise Unscorable(f"bad_recording_uri: {uri!r} is not s3://bucket/key")
        bucket, _, key = uri[5:].partition("/")
        return bucket, key
    key = _first(sources, KEY_KEYS)
    bucket = _first(sources, BUCKET_KEYS) or os.environ.get("RECORDING_BUCKET", "")
    if not key or not bucket:
        raise Unscorable("no_recording: the event names no recording (recording_s3_uri, or recording_bucket "
                         "and recording_key, in the block's parameters or the contact's attributes)")
    return bucket, key  # literal: Connect's keys hold ':' and are not URL-encoded


def _clients():
    import boto3
    from botocore.config import Config

    timeout = float(os.environ.get("INVOKE_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    config = Config(connect_timeout=2, read_timeout=timeout, retries={"max_attempts": 1})
    return boto3.client("s3", config=config), boto3.client("sagemaker-runtime", config=config)


def _error_kind(err: Exception) -> str:
    code = ((getattr(err, "response", None) or {}).get("Error") or {}).get("Code")
    return str(code or type(err).__name__)


def score(bucket: str, key: str) -> dict:
    endpoint = os.environ.get("SAGEMAKER_ENDPOINT")
    if not endpoint:
        raise Unscorable("misconfigured: SAGEMAKER_ENDPOINT is not set")
    s3, runtime = _clients()
    try:  # fail fast, and say so, before the endpoint is asked
        s3.head_object(Bucket=bucket, Key=key)
    except Exception as err:  # noqa: BLE001
        raise Unscorable(f"recording_unavailable: s3://{bucket}/{key} ({_error_kind(err)})") from None
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
        return score(*recording_location(event))
    except Unscorable as why:
        return {"label": "error", "probability": "", "threshold": "", "review": "true", "error": str(why)}
    except Exception as err:  # noqa: BLE001 - never leave the flow without an answer
        return {"label": "error", "probability": "", "threshold": "", "review": "true",
                "error": f"internal: {type(err).__name__}"}
