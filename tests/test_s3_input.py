"""S3 references as request bodies, against a real HTTP S3 (moto's server mode) on loopback."""

from __future__ import annotations

import json

import boto3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marport.handlers import (
    respiratory,  # noqa: E402
    s3_input,  # noqa: E402
)
from marport.handlers.contract import Request, RequestError  # noqa: E402
from marport.handlers.s3_input import S3Input, resolve  # noqa: E402
from tests.audio_helpers import cough_like, encode

BUCKET, OTHER = "calls", "elsewhere"
WAV = encode(cough_like(3, 16000, 7), 16000)


@pytest.fixture(scope="module")
def s3(s3_server):
    s3_input._client.cache_clear()  # the next client reads AWS_ENDPOINT_URL
    client = boto3.client("s3")
    for bucket in (BUCKET, OTHER):
        client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    client.put_object(Bucket=BUCKET, Key="recordings/a.wav", Body=WAV, ContentType="audio/wav")
    client.put_object(Bucket=BUCKET, Key="recordings/untyped.wav", Body=WAV)  # binary/octet-stream
    client.put_object(Bucket=BUCKET, Key="other/b.wav", Body=WAV)
    client.put_object(Bucket=OTHER, Key="recordings/a.wav", Body=WAV)
    client.put_object(Bucket=BUCKET, Key="recordings/big.wav", Body=b"\0" * 5000)
    client.put_object(Bucket=BUCKET, Key="recordings/review.txt", Body="Lovely staff".encode())
    yield client
    s3_input._client.cache_clear()


ALLOWED = S3Input(((BUCKET, "recordings"),), max_bytes=4096 * 1024)
EXPLAINED = S3Input(((BUCKET, "recordings"),), max_bytes=4096 * 1024, explain=True)


def ask(body, s3=ALLOWED, **params):
    return resolve(Request(body=json.dumps(body), content_type="application/json", params=params), s3)


def test_a_reference_becomes_the_objects_bytes_with_its_options(s3):
    got = ask({"s3_uri": f"s3://{BUCKET}/recordings/a.wav", "sample_rate": 16000, "explain": True}, EXPLAINED)
    assert got.body == WAV and got.content_type == "audio/wav"
    assert got.option("sample_rate") == "16000" and got.explain
    assert ask({"s3_uri": f"s3://{BUCKET}/recordings/untyped.wav"}).content_type == "audio/x-wav"  # from the key


def test_a_text_object_is_read_as_text(s3):
    got = ask({"s3_uri": f"s3://{BUCKET}/recordings/review.txt"})
    assert (got.body, got.media_type) == (b"Lovely staff", "text/plain")


def test_scored_exactly_as_posted_bytes(s3):
    import torch

    torch.manual_seed(0)
    model = respiratory.Respiratory.around(respiratory.RespiratoryCNN().eval(), respiratory.AudioConfig())
    by_reference = model.predict([model.parse(ask({"s3_uri": f"s3://{BUCKET}/recordings/a.wav"}))])
    by_bytes = model.predict([model.parse(Request(body=WAV, content_type="audio/wav"))])
    assert by_reference == by_bytes


@pytest.mark.parametrize("body, s3_config, kind, code", [
    ({"s3_uri": f"s3://{BUCKET}/recordings/a.wav"}, None, "s3_disabled", 403),
    ({"s3_uri": f"s3://{BUCKET}/other/b.wav"}, ALLOWED, "s3_not_allowed", 403),
    ({"s3_uri": f"s3://{OTHER}/recordings/a.wav"}, ALLOWED, "s3_not_allowed", 403),
    ({"s3_uri": f"s3://{BUCKET}/recordings/missing.wav"}, ALLOWED, "s3_object_not_found", 404),
    ({"s3_uri": f"s3://{BUCKET}/recordings/big.wav"}, S3Input(((BUCKET, ""),), 4000), "s3_object_too_large", 413),
    ({"s3_uri": "https://calls.s3.amazonaws.com/recordings/a.wav"}, ALLOWED, "invalid_s3_uri", 400),
    ({"s3_uri": "file:///etc/passwd"}, ALLOWED, "invalid_s3_uri", 400),
    ({"s3_uri": ["s3://calls/recordings/a.wav"]}, ALLOWED, "invalid_s3_uri", 400),
])
def test_denied_missing_and_oversized_objects_get_their_own_errors(s3, body, s3_config, kind, code):
    with pytest.raises(RequestError) as raised:
        ask(body, s3_config)
    assert (raised.value.kind, raised.value.code) == (kind, code)


def test_an_unreachable_s3_is_a_503_for_that_request(monkeypatch):
    from marport.processes import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setattr(s3_input, "CONNECT_TIMEOUT_S", 1)
    s3_input._client.cache_clear()
    try:
        with pytest.raises(RequestError) as raised:
            ask({"s3_uri": f"s3://{BUCKET}/recordings/a.wav"})
        assert (raised.value.kind, raised.value.code) == ("s3_unavailable", 503)
    finally:
        s3_input._client.cache_clear()


def test_ordinary_bodies_are_left_alone():
    for request in (Request(body=WAV, content_type="audio/wav"),
                    Request(body=b'{"text": "s3://calls/x"}', content_type="application/json"),
                    Request(body=b'{"s3_uri": ', content_type="application/json"),
                    Request(body=json.dumps({"s3_uri": "s3://x/y", "pad": "x" * 5000}), content_type="application/json")):
        assert resolve(request, ALLOWED) is request


@pytest.mark.parametrize("body", [
    b'{"\\u0073\\u0033_uri": "s3://calls/recordings/a.wav"}',  # the key spelled with escapes
    '{"s3_uri": "s3://calls/recordings/a.wav"}'.encode("utf-16"),  # json.loads reads UTF-16 bytes too
    '{"s3_uri": "s3://calls/recordings/a.wav"}'.encode("utf-32-le"),
])
def test_a_reference_however_spelled_is_recognised(body):
    """The quick look that spares ordinary JSON bodies a second parse misses no spelling of the key."""
    assert s3_input.reference(Request(body=body, content_type="application/json")) == {"s3_uri": "s3://calls/recordings/a.wav"}


@pytest.mark.parametrize("entries, allowed", [
    (None, None), ([], None), (["calls"], ((BUCKET, ""),)), ("calls/recordings/,s3://b2", ((BUCKET, "recordings"), ("b2", ""))),
])
def test_allow_list_settings(entries, allowed):
    got = S3Input.from_settings({"s3_allowed_buckets": entries}, 100)
    assert (got.allowed if got else None) == allowed


# Keys that share the allowed prefix as a string but not as whole segments, or walk out of it.
ESCAPES = ["recordings-private/notes.txt", "recordingsX/a.wav", "recordings/../private/notes.txt", "recordings//a.wav",
           "recordings/./a.wav", "recordings/", "recordings", "./recordings/a.wav", "/recordings/a.wav",
           "recordings/a.wav/..", "recordings/sub/../../other/b.wav"]


@pytest.mark.parametrize("key", ESCAPES)
def test_the_allow_list_is_whole_segments(s3, key):
    s3.put_object(Bucket=BUCKET, Key=key.replace("//", "/x/").strip("/") or "x", Body=b"private words")
    with pytest.raises(RequestError) as raised:
        ask({"s3_uri": f"s3://{BUCKET}/{key}"})
    assert raised.value.kind in ("s3_not_allowed", "invalid_s3_uri") and raised.value.code in (400, 403)


def test_allow_list_entries_with_dot_segments_are_refused_at_load():
    for entry in ("calls/recordings/../private", "calls/./x", "calls//x"):
        with pytest.raises(ValueError):
            S3Input.from_settings({"s3_allowed_buckets": [entry]}, 100)


def test_explanations_of_fetched_objects_are_off_unless_configured(s3):
    s3.put_object(Bucket=BUCKET, Key="recordings/explain.json", Body=b'{"text": "secret words", "explain": true}',
                  ContentType="application/json")
    with pytest.raises(RequestError) as raised:
        ask({"s3_uri": f"s3://{BUCKET}/recordings/a.wav", "explain": True})
    assert (raised.value.kind, raised.value.code) == ("s3_explain_disabled", 403)
    with pytest.raises(RequestError) as raised:  # the /explanations route's header
        resolve(Request(body=json.dumps({"s3_uri": f"s3://{BUCKET}/recordings/a.wav"}), content_type="application/json",
                        headers={"explain": "True"}), ALLOWED)
    assert raised.value.kind == "s3_explain_disabled"
    # An object whose own JSON asks for an explanation is refused by the core, which sees where it came from.
    from marport.handlers import sentiment
    from marport.handlers.text_input import TextCaps

    fetched = ask({"s3_uri": f"s3://{BUCKET}/recordings/explain.json"})
    assert fetched.allow_explain is False
    with pytest.raises(RequestError) as raised:
        refusing = sentiment.Sentiment.__new__(sentiment.Sentiment)  # nothing loaded: refused before tokenising
        refusing.caps = TextCaps(1 << 20, 5000, 64)
        refusing.read(fetched)
    assert raised.value.kind == "s3_explain_disabled"


class Recorder:
    """The real client, with its GET bodies watched (closed?) and an optional change between HEAD and GET."""

    def __init__(self, client, change=None):
        self.client, self.change, self.bodies = client, change, []

    def head_object(self, **kw):
        head = self.client.head_object(**kw)
        if self.change:
            self.client.put_object(Bucket=kw["Bucket"], Key=kw["Key"], Body=self.change)
        return head

    def get_object(self, **kw):
        self.last_get = kw
        got = self.client.get_object(**kw)
        self.bodies.append(got["Body"])
        return got


def test_get_is_tied_to_head_and_its_stream_closed(s3, monkeypatch):
    s3.put_object(Bucket=BUCKET, Key="recordings/moving.wav", Body=WAV)
    watched = Recorder(s3_input._client())
    monkeypatch.setattr(s3_input, "_client", lambda: watched)
    assert ask({"s3_uri": f"s3://{BUCKET}/recordings/moving.wav"}).body == WAV
    assert "IfMatch" in watched.last_get and all(b._raw_stream.closed for b in watched.bodies)
    watched.change = b"swapped after the size check" * 1000
    with pytest.raises(RequestError) as raised:
        ask({"s3_uri": f"s3://{BUCKET}/recordings/moving.wav"})
    assert (raised.value.kind, raised.value.code) == ("s3_object_changed", 409)
    assert all(b._raw_stream.closed for b in watched.bodies)


def test_no_fetch_starts_that_could_outlast_the_deadline(s3, monkeypatch):
    import time

    calls = []
    monkeypatch.setattr(s3_input, "_client", lambda: calls.append(1))
    request = Request(body=json.dumps({"s3_uri": f"s3://{BUCKET}/recordings/a.wav"}), content_type="application/json")
    with pytest.raises(RequestError) as raised:
        resolve(request, ALLOWED, deadline=time.monotonic() + s3_input.S3_BUDGET_S - 1)
    assert (raised.value.kind, raised.value.code, calls) == ("deadline_exceeded", 503, [])


SEGMENT = st.sampled_from(["recordings", "recordings-private", "recordingsX", "..", ".", "", "a.wav", "other", "Recordings"])
KEYS = st.lists(SEGMENT, min_size=1, max_size=4).map("/".join) | st.text(max_size=30)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.one_of(st.text(max_size=80), st.builds(lambda b, k: f"s3://{b}/{k}",
                                                 st.sampled_from([BUCKET, OTHER, "calls2"]) | st.text(max_size=20), KEYS),
                 st.integers(), st.none(), st.lists(st.text(max_size=5), max_size=2)))
def test_no_uri_reaches_outside_the_allow_list(s3, uri):
    """Whatever the client writes, only an allowed bucket and prefix is ever read; everything else is a 4xx."""
    try:
        got = ask({"s3_uri": uri})
    except RequestError as err:
        assert 400 <= err.code < 500, err.payload()
    else:
        key = uri.removeprefix(f"s3://{BUCKET}/")
        parts = key.split("/")
        assert uri.startswith(f"s3://{BUCKET}/") and parts[0] == "recordings" and len(parts) > 1
        assert not any(p in ("", ".", "..") for p in parts) and got.body == WAV


def test_s3_waits_fit_inside_the_handler_calls_budget(s3):
    from marport.handlers.settings import call_budget_s

    config = s3_input._client().meta.config
    worst = 2 * config.retries["total_max_attempts"] * (config.connect_timeout + config.read_timeout)  # HEAD + GET
    assert worst == s3_input.S3_BUDGET_S
    for model in ("sentiment", "respiratory"):  # the shipped responseTimeouts leave room to score after a fetch
        import yaml

        from marport.resources import model_config

        budget = call_budget_s(yaml.safe_load(model_config(model).read_text()))
        assert s3_input.S3_BUDGET_S < budget / 2 and budget <= 60
