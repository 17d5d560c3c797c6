"""The same archives through SageMaker's real serving toolkit: the same answers as local TorchServe.

Runs `sagemaker-pytorch-inference` (the PyTorch container's serving stack) on
loopback, once with the manifest route (our TorchServe handler) and once with
code/inference.py alone (the toolkit's handler), and compares every answer with
local TorchServe's for the same request. One server at a time.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from marport.processes import alive
from marport.sagemaker_deploy.local import LocalEndpoint
from marport.sagemaker_deploy.package import package
from tests.audio_helpers import cough_like, encode, npy_bytes
from tests.conftest import answers_close, built_archive
from tests.hostile import Case, respiratory_cases, sentiment_cases, strict_json
from tests.inputs import BAD, INPUTS

pytestmark = pytest.mark.integration

@pytest.fixture(params=["manifest", "toolkit"])
def route(request):
    return request.param


@pytest.mark.parametrize("model", sorted(INPUTS))
def test_toolkit_serves_what_local_torchserve_serves(model, route, reference_answers, tmp_path):
    tarball = package(built_archive(model), tmp_path / "model.tar.gz", manifest=route == "manifest")
    with LocalEndpoint(tarball, tmp_path / "run") as endpoint:
        ping = requests.get(f"{endpoint.url}/ping", timeout=10)
        assert ping.status_code == 200
        for case, (body, content_type) in INPUTS[model].items():
            got = requests.post(f"{endpoint.url}/invocations", data=body,
                                headers={"Content-Type": content_type, "Accept": "application/json"}, timeout=120)
            assert got.status_code == 200, got.text
            assert answers_close(got.json(), reference_answers[model, case]), (case, got.json())
        (body, content_type), status, kind = BAD[model]
        if route == "manifest":
            assert_bad_request_isolated_in_batches(endpoint, model, body, content_type, status, kind, reference_answers)
        else:
            # The toolkit's own handler answers one request at a time, with our JSON error.
            got = requests.post(f"{endpoint.url}/invocations", data=body, headers={"Content-Type": content_type},
                                timeout=60)
            assert got.status_code == status
            assert strict_json(got.text)["type"] == kind
        assert_hostile_bodies_get_json_4xx(endpoint, model, tmp_path)


HOSTILE = {
    "sentiment": {"deep-array", "nan-literal", "huge-integer", "lone-surrogate-escape", "lone-surrogate-bytes",
                  "zero-width-only", "charset-unknown", "charset-lies", "too-many-tokens", "not-acceptable"},
    "respiratory": {"random-bytes", "wav-1000-channels", "wav-truncated", "npy-absurd-shape", "npy-nan",
                    "npy-object", "too-long", "not-acceptable"},
}


def assert_hostile_bodies_get_json_4xx(endpoint, model, tmp_path):
    """Both routes answer hostile bodies with strict JSON 4xx errors, never the toolkit's traceback."""
    cases = sentiment_cases() if model == "sentiment" else respiratory_cases(str(tmp_path / "canary"))
    extra = [Case("json-not-utf8", b'{"text": "caf\xe9"}', {"Content-Type": "application/json"}, "invalid_encoding")]
    for case in [c for c in cases if c.name in HOSTILE[model]] + (extra if model == "sentiment" else []):
        headers = dict(case.headers)
        if "X-Sample-Rate" in headers:  # SageMaker passes no custom headers: the rate rides in the media type
            headers["Content-Type"] += f"; sample_rate={headers.pop('X-Sample-Rate')}"
        got = requests.post(f"{endpoint.url}/invocations", data=case.body, headers=headers, timeout=60)
        answer = strict_json(got.text)
        assert 400 <= got.status_code < 500 and answer["code"] == got.status_code, (case.name, got.text[:300])
        assert case.expect == "4xx" or answer["type"] == case.expect, (case.name, answer)
    assert not (tmp_path / "canary").exists()


def assert_bad_request_isolated_in_batches(endpoint, model, bad_body, bad_type, status, kind, local_answers):
    good = [(case, body, ct) for case, (body, ct) in INPUTS[model].items()]
    jobs = [(None, bad_body, bad_type)] * 4 + good * 4
    gate = threading.Barrier(len(jobs))

    def send(job):
        gate.wait()
        return requests.post(f"{endpoint.url}/invocations", data=job[1], headers={"Content-Type": job[2]}, timeout=120)

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs))
    for (case, _, _), response in zip(jobs, responses):
        if case is None:
            assert response.status_code == status and response.json()["type"] == kind
        else:
            assert response.status_code == 200, response.text
            assert answers_close(response.json(), local_answers[model, case])


def test_stop_ends_torchserve_and_its_workers(tmp_path):
    """The toolkit adopts whichever TorchServe is running, so a stopped endpoint must leave none."""
    endpoint = LocalEndpoint(package(built_archive("sentiment"), tmp_path / "model.tar.gz"), tmp_path / "run")
    with endpoint:
        java = endpoint.torchserve_process()
        assert java is not None, "no TorchServe started with this endpoint's config"
        family = [java.pid, *(c.pid for c in java.children(recursive=True))]
        assert len(family) > 1, "no worker under TorchServe"
    assert not [pid for pid in family if alive(pid)], "a TorchServe process outlived stop()"


@pytest.mark.parametrize("route", ["manifest", "toolkit"])
def test_sagemaker_headers_on_both_routes(route, tmp_path):
    """Accept is honoured, and an npy's sample rate rides in SageMaker's custom attributes, on the manifest
    route and on the toolkit's own (which once dropped them: both now read requests through one Endpoint)."""
    tarball = package(built_archive("respiratory"), tmp_path / "model.tar.gz", manifest=route == "manifest")
    samples = cough_like(3, 16000, 8)
    with LocalEndpoint(tarball, tmp_path / "run") as endpoint:
        url = f"{endpoint.url}/invocations"
        as_npy = requests.post(url, data=npy_bytes(samples), timeout=60, headers={
            "Content-Type": "application/x-npy", "X-Amzn-SageMaker-Custom-Attributes": "sample_rate=16000"})
        as_wav = requests.post(url, data=encode(samples, 16000, "wav-float"), timeout=60,
                               headers={"Content-Type": "audio/wav"})
        assert as_npy.status_code == 200, as_npy.text
        assert as_npy.json()["probability"] == pytest.approx(as_wav.json()["probability"], abs=1e-5)
        media_param = requests.post(url, data=npy_bytes(samples), timeout=60,
                                    headers={"Content-Type": "application/x-npy; sample_rate=16000"})
        assert media_param.status_code == 200
        csv = requests.post(url, data=encode(samples, 16000), timeout=60,
                            headers={"Content-Type": "audio/wav", "Accept": "text/csv"})
        assert csv.status_code == 406 and csv.json()["type"] == "not_acceptable"
        silent = requests.post(url, data=npy_bytes(np.zeros(1600, dtype=np.float32)), timeout=60,
                               headers={"Content-Type": "application/x-npy; sample_rate=8000"})
        assert silent.json()["flags"] == ["silent"]


@pytest.mark.parametrize("route", ["manifest", "toolkit"])
def test_explanations_and_review_band_through_invocations(route, tmp_path):
    """SageMaker has no /explanations route: {"explain": true} asks through /invocations, and a review
    band set at package time marks the answers."""
    tarball = package(built_archive("sentiment"), tmp_path / "model.tar.gz", manifest=route == "manifest",
                      review_band="0,1")
    text = "Spotless room and a warm welcome"
    with LocalEndpoint(tarball, tmp_path / "run") as endpoint:
        url = f"{endpoint.url}/invocations"
        got = requests.post(url, data=json.dumps({"text": text, "explain": True}), timeout=120,
                            headers={"Content-Type": "application/json"})
        assert got.status_code == 200, got.text
        answer = strict_json(got.text)
        assert [w["text"] for w in answer["attributions"]] == text.split() and answer["review"] is True
        plain = requests.post(url, data=text.encode(), headers={"Content-Type": "text/plain"}, timeout=60).json()
        assert "attributions" not in plain and plain["review"] is True
        refused = requests.post(url, data=json.dumps({"text": text, "explain": "please"}), timeout=60,
                                headers={"Content-Type": "application/json"})
        assert refused.status_code == 400 and strict_json(refused.text)["type"] == "invalid_type"


@pytest.mark.parametrize("route", ["manifest", "toolkit"])
def test_respiratory_explanation_through_custom_attributes(route, tmp_path):
    tarball = package(built_archive("respiratory"), tmp_path / "model.tar.gz", manifest=route == "manifest")
    with LocalEndpoint(tarball, tmp_path / "run") as endpoint:
        got = requests.post(f"{endpoint.url}/invocations", data=encode(cough_like(8, 16000, 5), 16000), timeout=120,
                            headers={"Content-Type": "audio/wav", "X-Amzn-SageMaker-Custom-Attributes": "explain=true"})
        assert got.status_code == 200, got.text
        assert strict_json(got.text)["explanation"]["method"] == "occlusion" and len(got.json()["attributions"]) == 8
