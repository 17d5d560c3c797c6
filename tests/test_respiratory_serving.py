"""respiratory.mar behind a real TorchServe (Java) on free loopback ports, over real HTTP."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import requests

from marport.build import extract_archive
from marport.handlers import respiratory
from marport.handlers.contract import Request
from marport.handlers.endpoint import load_model
from tests.audio_helpers import cough_like, encode, npy_bytes, pickle_canary_npy, tone
from tests.conftest import built_archive, logged_batches, running_torchserve, send_together, worker_pids

pytestmark = pytest.mark.integration


GOOD = {
    "wav-48k-stereo": (encode(np.stack([cough_like(10, 48000, 1)] * 2, axis=1), 48000, "wav-16"), "audio/wav", {}),
    "flac-16k": (encode(cough_like(8, 16000, 2), 16000, "flac"), "audio/flac", {}),
    "ogg-long": (encode(cough_like(31, 22050, 3), 22050, "ogg"), "audio/ogg", {}),
    "npy-8k": (npy_bytes(cough_like(5, 8000, 4)), "application/x-npy", {"X-Sample-Rate": "8000"}),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("model_store")
    shutil.copy2(built_archive("respiratory"), store / "respiratory.mar")
    with running_torchserve(tmp_path_factory.mktemp("run"), store, ["respiratory.mar"]) as ts:
        yield ts


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    unpacked = extract_archive(built_archive("respiratory"), tmp_path_factory.mktemp("ref"))
    model = load_model(respiratory.Respiratory, str(unpacked))
    out = {}
    for name, (body, content_type, headers) in GOOD.items():
        lower = {k.lower(): v for k, v in headers.items()}
        recording = model.parse(Request(body, content_type, headers=lower))
        out[name] = model.predict([recording])[0]
    return out


def post(server, body, content_type, headers=None):
    headers = {"Content-Type": content_type, **(headers or {}), **server.headers()}
    return requests.post(f"{server.inference_url}/predictions/respiratory", data=body, headers=headers, timeout=120)


def assert_matches(answer, expected):
    assert answer["label"] == expected["label"]
    assert answer["probability"] == pytest.approx(expected["probability"], abs=1e-5)
    assert [w["start_s"] for w in answer["windows"]] == [w["start_s"] for w in expected["windows"]]
    assert answer["duration_s"] == pytest.approx(expected["duration_s"])


@pytest.mark.parametrize("name", sorted(GOOD))
def test_recordings_are_scored_like_in_process(server, reference, name):
    body, content_type, headers = GOOD[name]
    got = post(server, body, content_type, headers)
    assert got.status_code == 200, got.text
    answer = got.json()
    assert_matches(answer, reference[name])
    assert 0.0 <= answer["probability"] <= 1.0 and answer["threshold"] == reference[name]["threshold"]


def test_long_recording_has_overlapping_windows(server):
    answer = post(server, *GOOD["ogg-long"][:2]).json()
    assert [w["start_s"] for w in answer["windows"]] == [0.0, 10.0, 20.0]


def test_multipart_upload(server, reference):
    body, _, _ = GOOD["flac-16k"]
    got = requests.post(
        f"{server.inference_url}/predictions/respiratory",
        files={"file": ("cough.flac", body, "audio/flac")},
        headers=server.headers(),
        timeout=120,
    )
    assert got.status_code == 200, got.text
    assert_matches(got.json(), reference["flac-16k"])
    # Any file field name, with the .npy's rate as a plain form field beside it.
    npy, _, _ = GOOD["npy-8k"]
    named = requests.post(
        f"{server.inference_url}/predictions/respiratory",
        files={"recording": ("cough.npy", npy, "application/x-npy")}, data={"sample_rate": "8000"},
        headers=server.headers(), timeout=120,
    )
    assert named.status_code == 200, named.text
    assert_matches(named.json(), reference["npy-8k"])


def test_silence_is_answered_and_flagged(server):
    got = post(server, encode(np.zeros(8000 * 3, dtype=np.float32), 8000), "audio/wav")
    assert got.status_code == 200 and got.json()["flags"] == ["silent"]


def test_mixed_batch_with_bad_recordings_and_no_unpickling(server, reference, tmp_path):
    pids_before = worker_pids(server, "respiratory")
    canary = tmp_path / "unpickled-canary"
    wav = encode(cough_like(2, 8000, 9), 8000)
    bad = [
        (b"", "audio/wav", {}, 400, "empty_body"),
        (b"definitely not audio " * 20, "audio/wav", {}, 400, "unreadable_audio"),
        (wav[: len(wav) // 2], "audio/wav", {}, 400, "truncated_audio"),
        (npy_bytes(np.full(800, np.nan, dtype=np.float32)), "application/x-npy", {"X-Sample-Rate": "8000"}, 400,
         "non_finite_audio"),
        (pickle_canary_npy(str(canary)), "application/x-npy", {"X-Sample-Rate": "8000"}, 400, "pickled_array"),
        (encode(np.zeros(8000 * 601, dtype=np.int16), 8000), "audio/wav", {}, 413, "audio_too_long"),
        (encode(tone(1, 8000, channels=9), 8000), "audio/wav", {}, 400, "too_many_channels"),
    ]
    good = [(b, ct, h, 200, name) for name, (b, ct, h) in GOOD.items()]
    jobs = (good + bad) * 2
    responses = send_together(jobs, lambda job: post(server, job[0], job[1], job[2]))
    for (_, _, _, status, name), response in zip(jobs, responses):
        assert response.status_code == status, (name, response.text)
        if status == 200:
            assert_matches(response.json(), reference[name])
        else:
            assert response.json()["type"] == name and response.json()["code"] == status
    assert not canary.exists(), "the server unpickled request data"
    mixed = logged_batches(server)
    assert any(0 < r < n for n, r in mixed), f"no batch mixed good and bad recordings: {mixed}"
    assert worker_pids(server, "respiratory") == pids_before, "a worker died and was restarted"
