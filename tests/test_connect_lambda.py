"""The contact-flow Lambda with realistic Amazon Connect events, against S3 and SageMaker runtime served
over HTTP on loopback (moto's server mode); failures must still give the flow a branchable answer."""

from __future__ import annotations

import json
import zipfile

import boto3
import pytest
import requests
from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from marport.connect_lambda import lambda_function as fn
from marport.processes import free_port

BUCKET = "connect-recordings"
KEY = "connect/instance/CallRecordings/2026/11/23/5ca32fbd-8f92-46af-92a5-6b0f970f0efe_20261123T10:15_UTC.wav"
KEY2 = KEY.replace("5ca32fbd", "7d1e0c2a")
ENDPOINT = "respiratory-triage"
FLAT_KEYS = {"label", "probability", "threshold", "review", "error"}


CONTACT = "5ca32fbd-8f92-46af-92a5-6b0f970f0efe"


def contact_flow_event(parameters: dict | None = None, attributes: dict | None = None, contact: str = CONTACT) -> dict:
    """What Connect's "Invoke AWS Lambda function" block sends."""
    return {
        "Name": "ContactFlowEvent",
        "Details": {
            "ContactData": {
                "Attributes": attributes or {},
                "Channel": "VOICE",
                "ContactId": contact,
                "CustomerEndpoint": {"Address": "+441632960001", "Type": "TELEPHONE_NUMBER"},
                "InitialContactId": contact,
                "InitiationMethod": "INBOUND",
                "InstanceARN": "arn:aws:connect:eu-west-1:123456789012:instance/0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0",
                "PreviousContactId": "5ca32fbd-8f92-46af-92a5-6b0f970f0efe",
                "Queue": None,
                "SystemEndpoint": {"Address": "+441632960999", "Type": "TELEPHONE_NUMBER"},
            },
            "Parameters": parameters or {},
        },
    }


@pytest.fixture(scope="module")
def recordings(s3_server):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    for key in (KEY, KEY2):  # moto answers the same request body with the same result: one key per answer
        client.put_object(Bucket=BUCKET, Key=key, Body=b"RIFF....WAVE", ContentType="audio/wav")
    return s3_server


@pytest.fixture
def endpoint(recordings, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_ENDPOINT", ENDPOINT)
    monkeypatch.setenv("RECORDING_BUCKET", BUCKET)
    monkeypatch.setenv("RECORDING_PREFIX", "connect/instance/CallRecordings")
    fn._build_clients.cache_clear()  # clients are kept per container: these tests change their endpoints
    yield recordings
    fn._build_clients.cache_clear()


def answer_next(server: str, answer: dict) -> None:
    """The next invoke_endpoint on the moto server returns this body."""
    requests.post(f"{server}/moto-api/static/sagemaker/endpoint-results", timeout=10, json={
        "region": "eu-west-1", "results": [{"Body": json.dumps(answer), "ContentType": "application/json"}]})


def sent_bodies(monkeypatch) -> list[dict]:
    """Record what the Lambda asks the endpoint (its clients, with a hook on InvokeEndpoint)."""
    sent = []
    real = fn._clients

    def clients():
        s3, runtime = real()
        runtime.meta.events.register("provide-client-params.sagemaker-runtime.InvokeEndpoint",
                                     lambda params, **_: sent.append(dict(params)))
        return s3, runtime

    monkeypatch.setattr(fn, "_clients", clients)
    return sent


def test_a_recording_named_in_the_blocks_parameters_is_scored(endpoint, monkeypatch):
    sent = sent_bodies(monkeypatch)
    answer_next(endpoint, {"label": "unhealthy", "probability": 0.7134, "threshold": 0.0841, "review": False})
    got = fn.lambda_handler(contact_flow_event({"recording_key": KEY}))
    assert got == {"label": "unhealthy", "probability": "0.7134", "threshold": "0.0841", "review": "false", "error": ""}
    (call,) = sent
    assert call["EndpointName"] == ENDPOINT and call["ContentType"] == "application/json"
    assert json.loads(call["Body"]) == {"s3_uri": f"s3://{BUCKET}/{KEY}"}  # a reference, never the audio


def test_a_recording_uri_in_the_blocks_parameters_is_scored(endpoint):
    answer_next(endpoint, {"label": "healthy", "probability": 0.031, "threshold": 0.084, "review": True})
    got = fn.lambda_handler(contact_flow_event({"recording_s3_uri": f"s3://{BUCKET}/{KEY2}"}, contact=KEY2.split("/")[-1][:36]))
    assert (got["label"], got["review"], got["error"]) == ("healthy", "true", "")


MISSING = KEY.rsplit("/", 1)[0] + f"/{CONTACT}_missing.wav"
HOSTILE = [  # (parameters, attributes): none may reach S3 or the endpoint
    ({}, {"recording_s3_uri": f"s3://{BUCKET}/{KEY}"}),  # attributes are never read
    ({}, {"recording_bucket": "other-bucket", "recording_key": KEY}),
    ({"recording_s3_uri": f"s3://other-bucket/{KEY}"}, {}),
    ({"recording_key": KEY2}, {}),  # another caller's recording
    ({"recording_key": "connect/instance/Other/" + KEY.rsplit("/", 1)[1]}, {}),  # outside RECORDING_PREFIX
    ({"recording_key": "connect/instance/CallRecordings-private/" + KEY.rsplit("/", 1)[1]}, {}),
    ({"recording_key": "connect/instance/CallRecordings/../Other/" + KEY.rsplit("/", 1)[1]}, {}),
    ({"recording_key": "connect/instance/CallRecordings//" + KEY.rsplit("/", 1)[1]}, {}),
    ({"recording_key": "connect/instance/CallRecordings"}, {}),
    ({"recording_key": f"connect/instance/CallRecordings/{CONTACT}/../x.wav"}, {}),
]


@pytest.mark.parametrize("parameters, attributes", HOSTILE)
def test_events_cannot_redirect_the_lambda(endpoint, monkeypatch, parameters, attributes):
    sent = sent_bodies(monkeypatch)
    heads = []
    s3, _ = fn._clients()
    s3.meta.events.register("provide-client-params.s3.HeadObject", lambda params, **_: heads.append(params))
    got = fn.lambda_handler(contact_flow_event(parameters, attributes))
    assert (got["label"], got["review"]) == ("error", "true")
    assert got["error"].split(":")[0] in ("no_recording", "recording_not_allowed"), got["error"]
    assert heads == [] and sent == []


def test_contact_binding_can_be_turned_off_for_flows_that_name_recordings_otherwise(endpoint, monkeypatch):
    monkeypatch.setenv("RECORDING_KEY_MATCH_CONTACT", "false")
    key = "connect/instance/CallRecordings/custom-name.wav"
    with pytest.raises(fn.Unscorable, match="recording_unavailable"):  # allowed, so it is looked for
        fn.score(*fn.recording_location(contact_flow_event({"recording_key": key})))


class FakeContext:
    """Lambda's context object: how long the function has left."""

    def __init__(self, ms: int):
        self.ms = ms

    def get_remaining_time_in_millis(self) -> int:
        return self.ms


def test_one_deadline_under_connects_limit(endpoint, monkeypatch):
    sent = sent_bodies(monkeypatch)
    got = fn.lambda_handler(contact_flow_event({"recording_key": KEY}), FakeContext(2000))
    assert got["error"].startswith("no_time") and sent == []  # 1.7 s left cannot hold the endpoint's 5.5 s
    s3, runtime = fn._clients()
    worst = (s3.meta.config.connect_timeout + s3.meta.config.read_timeout + runtime.meta.config.connect_timeout
             + runtime.meta.config.read_timeout)
    assert worst <= fn.BUDGET_S < fn.CONNECT_LIMIT_S
    assert s3.meta.config.retries["total_max_attempts"] == runtime.meta.config.retries["total_max_attempts"] == 1
    assert fn._clients() == (s3, runtime)  # built once per container


@pytest.mark.parametrize("event, error", [
    (contact_flow_event(), "no_recording"),
    (contact_flow_event({"recording_s3_uri": "https://example.com/a.wav"}), "bad_recording_uri"),
    (contact_flow_event({"recording_key": MISSING}), "recording_unavailable"),
    ({}, "no_recording"),
])
def test_unscorable_calls_still_branch_to_a_person(endpoint, event, error):
    got = fn.lambda_handler(event)
    assert set(got) == FLAT_KEYS and all(isinstance(v, str) for v in got.values())
    assert (got["label"], got["review"]) == ("error", "true") and got["error"].startswith(error)


def test_an_endpoint_that_is_down_still_gives_a_branchable_answer(endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME", f"http://127.0.0.1:{free_port()}")  # nothing there
    monkeypatch.setenv("INVOKE_TIMEOUT_S", "1")
    got = fn.lambda_handler(contact_flow_event({"recording_s3_uri": f"s3://{BUCKET}/{KEY}"}))
    assert (got["label"], got["review"]) == ("error", "true") and got["error"].startswith("endpoint_failed")


def test_a_model_error_is_passed_on_in_error(endpoint, monkeypatch):
    real = fn._clients

    def clients():
        s3, runtime = real()
        stub = Stubber(runtime)
        stub.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424,
                              service_message="Received client error (404)",
                              response_meta={"OriginalMessage": '{"type": "s3_object_not_found"}'})
        stub.activate()
        return s3, runtime

    monkeypatch.setattr(fn, "_clients", clients)
    got = fn.lambda_handler(contact_flow_event({"recording_s3_uri": f"s3://{BUCKET}/{KEY}"}))
    assert got["label"] == "error" and got["review"] == "true" and "ModelError" in got["error"]


def test_a_missing_endpoint_setting_is_named(recordings, monkeypatch):
    monkeypatch.delenv("SAGEMAKER_ENDPOINT", raising=False)
    monkeypatch.setenv("RECORDING_BUCKET", BUCKET)
    got = fn.lambda_handler(contact_flow_event({"recording_s3_uri": f"s3://{BUCKET}/{KEY}"}))
    assert got["error"].startswith("misconfigured") and got["review"] == "true"


@settings(max_examples=100, deadline=None)
@given(st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=20)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=10), inner,
                                                                                          max_size=3)),
                    max_leaves=12))
def test_any_event_gets_a_flat_map_of_strings(event):
    """Connect needs string values whatever arrives; a malformed event is an answer, not an exception."""
    got = fn.lambda_handler(event if isinstance(event, dict) else {"Details": event})
    assert set(got) == FLAT_KEYS and all(isinstance(v, str) for v in got.values())


def test_lambda_package_is_the_handler_alone(tmp_path):
    from marport.sagemaker_deploy.lambda_package import lambda_zip

    first, second = lambda_zip(tmp_path / "a.zip"), lambda_zip(tmp_path / "b.zip")
    assert zipfile.ZipFile(first).namelist() == ["lambda_function.py"]
    assert first.read_bytes() == second.read_bytes()  # reproducible
    source = zipfile.ZipFile(first).read("lambda_function.py").decode()
    assert "def lambda_handler(" in source and "import marport" not in source
