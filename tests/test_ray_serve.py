"""The same archives under a real Ray Serve (ray[serve] from PyPI), started on loopback from the packed tarball.

`marport sagemaker package --runtime ray` writes what SageMaker's Ray Serve DLC extracts into
/opt/ml/model; the tests extract it, run `serve run` on its own config.yaml (its port moved to a free
loopback one) and compare every answer with local TorchServe's for the same body. One server at a time:
TorchServe's reference answers are taken first.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from marport.ray_server import RayServe
from marport.sagemaker_deploy.package import package
from marport.sagemaker_deploy.ray_runtime import DlcAdapter
from tests.audio_helpers import cough_like, encode
from tests.conftest import answers_close, built_archive
from tests.hostile import respiratory_cases, sentiment_cases, strict_json
from tests.inputs import INPUTS

pytestmark = pytest.mark.integration

BATCH_LINE = re.compile(r"batch of (\d+) requests")


def ray_processes() -> int:
    """Ray's head processes still running (a zombie has stopped; reaping it is its parent's business)."""
    import psutil

    from marport.processes import alive

    return sum(1 for p in psutil.process_iter(["name"]) if p.info["name"] in ("raylet", "gcs_server") and alive(p))


def assert_locked(pid: int, token_path, canary) -> None:
    """Every listener of the Ray session on loopback; no HTTP port runs a job without Ray's token."""
    import psutil

    from marport.ray_server import session_processes

    pids = {p.pid for p in session_processes(pid)}
    listeners = [(c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN and c.pid in pids]
    assert len(listeners) >= 5, listeners  # GCS, raylet, dashboard, agent, proxy at least
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for ip, _ in listeners), listeners
    token = token_path.read_text().strip()
    assert oct(token_path.stat().st_mode & 0o777) == "0o600" and len(token) >= 32
    job = {"entrypoint": f"touch {canary}"}
    answered_with_token = []
    for _, port in listeners:
        for path in ("/api/jobs/", "/api/job_agent/jobs/"):
            try:
                refused = requests.post(f"http://127.0.0.1:{port}{path}", json=job, timeout=5)
            except requests.RequestException:  # a gRPC port: no HTTP there at all
                continue
            assert refused.status_code >= 400, (port, path, refused.status_code, refused.text[:200])
        try:
            listed = requests.get(f"http://127.0.0.1:{port}/api/jobs/", headers={"Authorization": f"Bearer {token}"},
                                  timeout=5)
        except requests.RequestException:
            continue
        if listed.status_code == 200 and listed.text.startswith("["):
            answered_with_token.append(port)
    assert answered_with_token, "the Jobs API is expected behind the token, and nowhere else"
    time.sleep(2)
    assert not canary.exists(), "a job ran without Ray's token"


def extracted(model, tmp_path):
    tarball = package(built_archive(model), tmp_path / "model.tar.gz", runtime="ray")
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "model", filter="data")
    return tmp_path / "model", names


@pytest.mark.parametrize("model", sorted(INPUTS))
def test_ray_serve_answers_what_torchserve_answers(model, reference_answers, tmp_path):
    folder, names = extracted(model, tmp_path)
    assert {"config.yaml", "ray_adapter.py", "model-config.yaml", "code/requirements.txt"} <= set(names)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (app,) = config["applications"]
    assert app["import_path"] == "ray_adapter:build" and app["route_prefix"] == "/"
    before = ray_processes()
    log = tmp_path / "ray.log"
    with RayServe(folder, log) as ray:
        url = f"{ray.url}/"
        for case, (body, content_type) in INPUTS[model].items():
            got = requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=120)
            assert got.status_code == 200, got.text
            assert answers_close(strict_json(got.text), reference_answers[model, case]), (case, got.text)
        assert_hostile_cases_refused_alike(url, model, tmp_path)
        assert_concurrent_requests_are_batched(url, model, log)
        with DlcAdapter(ray.url) as dlc:  # what SageMaker talks to in the DLC: only Content-Type and Accept pass
            assert requests.get(f"{dlc.url}/ping", timeout=10).status_code == 200
            body, content_type = next(iter(INPUTS[model].values()))
            got = requests.post(f"{dlc.url}/invocations", data=body, timeout=120,
                                headers={"Content-Type": content_type, "Accept": "application/json"})
            assert got.status_code == 200 and answers_close(got.json(), next(
                reference_answers[model, c] for c in INPUTS[model])), got.text
            refused = requests.post(f"{dlc.url}/invocations", data=b"", headers={"Content-Type": content_type},
                                    timeout=60)
            assert refused.status_code == 400 and strict_json(refused.text)["type"] == "empty_body"
            assert_explanations_survive_the_dlc_adapter(dlc.url, model)
    assert ray_processes() == before, "Ray's processes outlived the server that started them"


def assert_explanations_survive_the_dlc_adapter(url, model):
    """Only Content-Type and Accept reach Ray Serve there: an explanation is asked in the media type
    (audio) or in the JSON body (text), and still comes back."""
    if model == "sentiment":
        body, content_type = b'{"text": "Spotless room and a warm welcome", "explain": true}', "application/json"
    else:
        body, content_type = encode(cough_like(4, 16000, 3), 16000), "audio/wav; explain=true"
    got = requests.post(f"{url}/invocations", data=body, headers={"Content-Type": content_type,
                                                                  "X-Amzn-SageMaker-Custom-Attributes": "x=1"},
                        timeout=120)
    assert got.status_code == 200, got.text
    assert strict_json(got.text)["attributions"] and got.json()["explanation"]["method"]


def assert_hostile_cases_refused_alike(url, model, tmp_path):
    """The hostile corpus gets the same strict-JSON 4xx (type and status) as on TorchServe, with a request id."""
    cases = sentiment_cases() if model == "sentiment" else respiratory_cases(str(tmp_path / "canary"))
    for case in cases:
        got = requests.post(url, data=case.body, headers=case.headers, timeout=120)
        answer = strict_json(got.text)
        if case.expect == "ok":
            assert got.status_code == 200, (case.name, got.text[:300])
            continue
        assert 400 <= got.status_code < 500 and answer["code"] == got.status_code, (case.name, got.text[:300])
        assert answer["request_id"], case.name
        assert case.expect == "4xx" or answer["type"] == case.expect, (case.name, answer)
        assert not case.code or got.status_code == case.code, (case.name, answer)
    assert not (tmp_path / "canary").exists(), "a .npy payload was unpickled"


def assert_concurrent_requests_are_batched(url, model, log):
    """32 requests at once reach the core in batches (of at most batchSize), each answered on its own."""
    if model == "sentiment":
        bodies = [(f"Review number {i}: the room was fine".encode(), "text/plain") for i in range(32)]
    else:
        bodies = [(encode(cough_like(2, 16000, i), 16000), "audio/wav") for i in range(32)]
    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(lambda b: requests.post(url, data=b[0], headers={"Content-Type": b[1]},
                                                         timeout=120).status_code, bodies))
    assert statuses == [200] * 32
    deadline = time.monotonic() + 20  # replica log lines reach the driver's output within a few seconds
    while True:
        sizes = [int(n) for n in BATCH_LINE.findall(log.read_text(errors="replace"))]
        if (sizes and max(sizes) > 1) or time.monotonic() > deadline:
            break
        time.sleep(1)
    limit = yaml.safe_load((log.parent / "model" / "model-config.yaml").read_text())["batchSize"]
    assert max(sizes) > 1 and max(sizes) <= limit, sizes


def test_marport_serve_runtime_ray_predict_status_stop(tmp_path):
    """The commands a user runs: serve on Ray, predict (the same /predictions/NAME path as TorchServe), status, stop."""
    import sys

    store = tmp_path / "model_store"
    store.mkdir()
    shutil.copy2(built_archive("sentiment"), store / "sentiment.mar")
    marport = [sys.executable, "-m", "marport"]
    before = ray_processes()

    def run(*args):
        return subprocess.run([*marport, *args, "--workdir", str(tmp_path)], capture_output=True, text=True,
                              timeout=300)

    started = run("serve", "--runtime", "ray")
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert "Ray Serve is serving sentiment" in started.stdout
        answer = run("predict", "sentiment", "The staff were friendly and breakfast was generous")
        assert answer.returncode == 0 and strict_json(answer.stdout)["label"] in {"negative", "neutral", "positive"}
        refused = run("predict", "sentiment", "--file", "/dev/null")
        assert refused.returncode == 1 and strict_json(refused.stdout)["type"] == "empty_body"
        assert "Ray Serve running" in run("status").stdout
        state = json.loads((tmp_path / "var" / "ray" / "state.json").read_text())
        assert_locked(int(state["pid"]), Path(state["token_path"]), tmp_path / "canary")
    finally:
        stopped = run("stop")
    assert "Ray Serve stopped" in stopped.stdout and "TorchServe" not in stopped.stdout  # nothing else was running
    assert ray_processes() == before
