"""S3 references under a real TorchServe and under SageMaker's toolkit, with S3 served over HTTP on loopback."""

from __future__ import annotations

import json

import boto3
import pytest
import requests

from marport.build import build
from marport.sagemaker_deploy.local import LocalEndpoint
from marport.sagemaker_deploy.package import package
from marport.workspace import Workspace
from tests.audio_helpers import cough_like, encode
from tests.conftest import REPO_ROOT, running_torchserve
from tests.hostile import strict_json

pytestmark = pytest.mark.integration

BUCKET = "contact-centre-recordings"
WAV = encode(cough_like(6, 16000, 21), 16000)


@pytest.fixture(scope="module")
def recordings(s3_server):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    client.put_object(Bucket=BUCKET, Key="calls/c1.wav", Body=WAV, ContentType="audio/wav")
    client.put_object(Bucket=BUCKET, Key="private/c2.wav", Body=WAV, ContentType="audio/wav")
    return client


@pytest.fixture(scope="module")
def mar(tmp_path_factory):
    work = tmp_path_factory.mktemp("s3-archive")
    checkpoint = Workspace.at(REPO_ROOT).checkpoint("respiratory")
    return build("respiratory", checkpoint, export_dir=work / "store", workspace=Workspace.at(work),
                 s3_allow=[f"{BUCKET}/calls/"])


def reference(key: str) -> bytes:
    return json.dumps({"s3_uri": f"s3://{BUCKET}/{key}"}).encode()


def check_references(post) -> None:
    by_bytes = post(WAV, "audio/wav")
    by_reference = post(reference("calls/c1.wav"), "application/json")
    assert by_bytes.status_code == by_reference.status_code == 200, by_reference.text
    assert strict_json(by_reference.text) == strict_json(by_bytes.text)  # scored exactly as the posted bytes
    for key, status, kind in (("private/c2.wav", 403, "s3_not_allowed"), ("calls/none.wav", 404, "s3_object_not_found")):
        got = post(reference(key), "application/json")
        assert (got.status_code, strict_json(got.text)["type"]) == (status, kind)


def test_references_under_torchserve(recordings, mar, tmp_path):
    with running_torchserve(tmp_path / "run", mar.parent, [mar.name]) as server:
        def post(body, content_type):
            return requests.post(f"{server.inference_url}/predictions/respiratory", data=body, timeout=60,
                                 headers={**server.headers(), "Content-Type": content_type})

        check_references(post)


def test_references_under_sagemakers_toolkit(recordings, mar, tmp_path):
    with LocalEndpoint(package(mar, tmp_path / "model.tar.gz"), tmp_path / "run") as endpoint:
        def post(body, content_type):
            return requests.post(f"{endpoint.url}/invocations", data=body, timeout=60,
                                 headers={"Content-Type": content_type})

        check_references(post)
