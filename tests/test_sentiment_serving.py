"""sentiment.mar behind a real TorchServe (Java) on free loopback ports, over real HTTP."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from marport.build import build, extract_archive
from marport.handlers import sentiment
from marport.handlers.endpoint import load_model
from marport.processes import alive
from marport.server import TS_MAIN_CLASS
from tests.checkpoints import save_tiny_checkpoint
from tests.conftest import built_archive, logged_batches, running_torchserve, worker_pids

pytestmark = pytest.mark.integration

TEXTS = [
    "The hotel staff were wonderful and the room was spotless",
    "My order arrived broken and support never replied",
    "The meeting has been moved to Thursday",
    "Best concert I have been to in years",
    "The app crashes every time I open the camera",
    "The library opens at nine on weekdays",
    "I regret buying this phone, the battery is awful",
    "Such a friendly little bakery, lovely bread",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("model_store")
    shutil.copy2(built_archive("sentiment"), store / "sentiment.mar")
    ckpt = save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "mine")
    build("sentiment", checkpoint=ckpt, export_dir=store, name="mine")
    # The demo checkpoint again, packed for int8 (ONNX Runtime): same requests, same answers' shape.
    demo = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("demo")) / "checkpoint"
    build("sentiment", checkpoint=demo, export_dir=store, name="int8", precision="int8")
    return store


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    with running_torchserve(tmp_path_factory.mktemp("run"), store, ["sentiment.mar", "mine.mar", "int8.mar"]) as ts:
        yield ts


@pytest.fixture(scope="module")
def reference(store, tmp_path_factory):
    """In-process predictions from the very files inside the archive."""
    model = load_model(sentiment.Sentiment, str(extract_archive(store / "sentiment.mar", tmp_path_factory.mktemp("ref"))))
    return {t: a for t, a in zip(TEXTS, model.predict_texts(TEXTS))}


def post(server, body, content_type="text/plain", model="sentiment", auth=True):
    headers = {"Content-Type": content_type, **(server.headers() if auth else {})}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{server.inference_url}/predictions/{model}", data=data, headers=headers, timeout=60)


def assert_matches(answer, expected):
    assert answer["label"] == expected["label"]
    for label, score in expected["scores"].items():
        assert answer["scores"][label] == pytest.approx(score, abs=1e-4)


def test_ping_needs_the_token_and_answers_healthy(server):
    assert requests.get(f"{server.inference_url}/ping", timeout=10).status_code in (400, 401)
    ping = requests.get(f"{server.inference_url}/ping", headers=server.headers(), timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


def test_the_key_file_and_its_folder_are_the_users_alone(server):
    """TorchServe writes key_file.json under the process umask before restricting it: neither it nor the
    run folder may ever be readable by another user."""
    import stat

    assert stat.S_IMODE(server.run_dir.stat().st_mode) == 0o700
    key_file = server.run_dir / "key_file.json"
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) & 0o077 == 0


def test_curl_data_without_a_content_type_is_named(server):
    """`curl --data 'I hated it'` sends a form: a 415 that names it and says what to send."""
    curl = {"Content-Type": "application/x-www-form-urlencoded", **server.headers()}  # what curl --data sends
    got = requests.post(f"{server.inference_url}/predictions/sentiment", data=b"I hated it", headers=curl, timeout=60)
    assert got.status_code == 415 and got.json()["type"] == "form_encoded_body" and "text/plain" in got.json()["message"]


def test_prediction_without_token_is_refused(server):
    assert post(server, TEXTS[0], auth=False).status_code in (400, 401)


def test_single_text_plain_and_json(server, reference):
    plain = post(server, TEXTS[0])
    assert plain.status_code == 200
    assert_matches(plain.json(), reference[TEXTS[0]])
    as_json = post(server, {"text": TEXTS[1]}, "application/json")
    assert as_json.status_code == 200
    assert_matches(as_json.json(), reference[TEXTS[1]])
    assert sum(as_json.json()["scores"].values()) == pytest.approx(1.0, abs=1e-5)


def test_list_of_texts_in_order(server, reference):
    got = post(server, {"inputs": TEXTS}, "application/json")
    assert got.status_code == 200
    answers = got.json()
    assert len(answers) == len(TEXTS)
    for text, answer in zip(TEXTS, answers):
        assert_matches(answer, reference[text])


def test_32_concurrent_requests_are_batched_and_each_gets_its_own_answer(server, reference):
    texts = [TEXTS[i % len(TEXTS)] for i in range(32)]
    gate = threading.Barrier(32)

    def send(text):
        gate.wait()
        return post(server, text)

    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(send, texts))
    for text, response in zip(texts, responses):
        assert response.status_code == 200
        assert_matches(response.json(), reference[text])
    sizes = [n for n, _ in logged_batches(server)]
    assert max(sizes) > 1, f"TorchServe never batched requests: {sizes}"


def test_bad_inputs_inside_a_batch_get_their_own_4xx(server, reference):
    pids_before = worker_pids(server, "sentiment")
    bad = [
        (b"", "text/plain", 400, "empty_body"),
        (b"\xff\xfe\xfa", "text/plain", 400, "invalid_encoding"),
        (b'{"text": ', "application/json", 400, "invalid_json"),
        (json.dumps({"text": ["not", "a", "string"]}), "application/json", 400, "invalid_type"),
        (json.dumps({"inputs": ["x"] * 65}), "application/json", 413, "too_many_inputs"),
        (json.dumps({"text": "long " * 2000}), "application/json", 413, "text_too_long"),
    ]
    jobs = [(t.encode(), "text/plain", 200, None) for t in TEXTS] + bad
    jobs = jobs + jobs  # twice over, so bad and good requests share batches
    gate = threading.Barrier(len(jobs))

    def send(job):
        gate.wait()
        return post(server, job[0], job[1])

    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(send, jobs))
    for (body, _, status, kind), response in zip(jobs, responses):
        assert response.status_code == status, response.text
        if status == 200:
            assert_matches(response.json(), reference[body.decode()])
        else:
            error = response.json()
            assert error["code"] == status and error["type"] == kind and error["message"]
    mixed = logged_batches(server)
    assert any(0 < r < n for n, r in mixed), f"no batch mixed good and bad requests: {mixed}"
    assert worker_pids(server, "sentiment") == pids_before, "a worker died and was restarted"


def test_a_brought_checkpoint_serves_its_own_labels(server):
    got = post(server, "any text at all", model="mine")
    assert got.status_code == 200
    assert set(got.json()["scores"]) == {"bad", "good"}


def test_pid_is_the_java_front_end_whose_jit_the_benchmarks_watch(server):
    import psutil

    assert TS_MAIN_CLASS in psutil.Process(server.pid).cmdline()


def test_int8_archive_keeps_the_request_and_answer_contract(server, store, reference, tmp_path):
    """precision: int8 serves through ONNX Runtime; answers have the same shape and (nearly always) label."""
    import zipfile

    with zipfile.ZipFile(store / "int8.mar") as mar:
        assert "checkpoint/model.int8.onnx" in mar.namelist()  # exported at build, not at worker start
        assert "precision: int8" in mar.read("model-config.yaml").decode()
    single = post(server, TEXTS[1], model="int8")
    assert single.status_code == 200 and set(single.json()) == {"label", "score", "scores"}
    many = post(server, {"inputs": TEXTS}, "application/json", model="int8").json()
    assert [set(a["scores"]) for a in many] == [set(reference[t]["scores"]) for t in TEXTS]
    assert sum(a["label"] == reference[t]["label"] for a, t in zip(many, TEXTS)) >= len(TEXTS) - 1
    bad = post(server, b"\xff\xfe\x00", model="int8")
    assert bad.status_code == 400 and bad.json()["type"] == "invalid_encoding"


def test_clean_stop(server):
    """stop() returns only once Java and its workers are gone: the next server (the
    SageMaker toolkit adopts any running TorchServe) must not find a dying one."""
    family = [server.pid, *worker_pids(server, "sentiment")]
    server.stop()
    assert not server.is_running()
    assert not [pid for pid in family if alive(pid)], "a TorchServe process outlived stop()"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.inference_url}/ping", timeout=5)
