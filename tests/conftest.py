"""Shared fixtures: built archives, tiny checkpoints, and a real TorchServe on free ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from marport.server import LocalTorchServe, free_port_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent  # the tests run in the repo, its root the workspace
MODEL_STORE = REPO_ROOT / "model_store"


def running_torchserve(run_dir: Path, model_store: Path, models: list[str]):
    """A real TorchServe (Java) with config.properties, on free loopback ports.

    Tests use it one module at a time, so two instances never run together.
    """
    server = LocalTorchServe(run_dir=run_dir, overrides=free_port_overrides(), model_store=model_store)
    return server.serving(models)


# boto3 would otherwise ask the EC2 metadata address for credentials; tests talk
# to loopback only.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


REGION = "eu-west-1"  # every AWS test's region (moto)


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """In-process moto with throwaway credentials; yields a SageMaker execution role's ARN."""
    import boto3
    from moto import mock_aws

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "SAGEMAKER_ROLE", "SAGEMAKER_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("MARPORT_SAGEMAKER_POLL_S", "0.2")  # moto's endpoint is InService at the second look
    with mock_aws():
        role = boto3.client("iam").create_role(RoleName="sagemaker-exec", AssumeRolePolicyDocument="{}")
        yield role["Role"]["Arn"]


def invocations_sent(monkeypatch) -> list:
    """The InvokeEndpoint requests sent from now on, as botocore sends them (moto answers with canned bodies)."""
    from marport.sagemaker_deploy import aws as aws_module

    sent: list = []
    real = aws_module.boto_session

    def watched(region=None):
        session = real(region)
        session.events.register("before-send.sagemaker-runtime.InvokeEndpoint", lambda request, **_: sent.append(request))
        return session

    monkeypatch.setattr(aws_module, "boto_session", watched)
    return sent


def torchserve_answers(tmp_path_factory, inputs: dict) -> dict:
    """Local TorchServe's answer to every body of `inputs` ({model: {case: (body, content type)}}), keyed by
    (model, case): the reference the other runtimes (SageMaker's toolkit, Ray Serve) must match."""
    import shutil

    import requests

    store = tmp_path_factory.mktemp("store")
    for model in inputs:
        shutil.copy2(built_archive(model), store / f"{model}.mar")
    answers = {}
    with running_torchserve(tmp_path_factory.mktemp("run"), store, [f"{m}.mar" for m in inputs]) as ts:
        for model, cases in inputs.items():
            for case, (body, content_type) in cases.items():
                got = requests.post(f"{ts.inference_url}/predictions/{model}", data=body,
                                    headers={"Content-Type": content_type, **ts.headers()}, timeout=120)
                assert got.status_code == 200, got.text
                answers[model, case] = got.json()
    return answers


@pytest.fixture(scope="session")
def reference_answers(tmp_path_factory) -> dict:
    """TorchServe's answers to tests/inputs.INPUTS, fetched once a session: what every other runtime must answer."""
    from tests.inputs import INPUTS

    return torchserve_answers(tmp_path_factory, INPUTS)


def answers_close(a, b, tol=1e-5) -> bool:
    """Two JSON answers alike: the same keys, labels and flags, numbers within `tol`."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(answers_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(answers_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b


def built_archive(name: str) -> Path:
    mar = MODEL_STORE / f"{name}.mar"
    if not mar.exists():
        pytest.fail(f"{mar} is missing: run the tests with `make test`, which builds it")
    return mar


def worker_pids(server: LocalTorchServe, model: str) -> list[int]:
    import requests

    got = requests.get(f"{server.management_url}/models/{model}", headers=server.headers("management"), timeout=10)
    return sorted(w["pid"] for w in got.json()[0]["workers"] if w["status"] == "READY")


def logged_batches(server: LocalTorchServe) -> list[tuple[int, int]]:
    """(requests, rejected) of every batch the handlers logged."""
    import re

    log = (server.run_dir / "logs" / "model_log.log").read_text()
    return [(int(n), int(r)) for n, r in re.findall(r"batch of (\d+) requests, (\d+) rejected", log)]


def send_together(jobs: list, send) -> list:
    """send(job) for every job at the same moment (one thread each, released by a barrier), so that
    TorchServe batches them together; the responses come back in job order."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Barrier(len(jobs))

    def released(job):
        gate.wait()
        return send(job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(released, jobs))


@pytest.fixture(scope="module")
def s3_server():
    """A real HTTP S3 (moto's server mode) on a free loopback port, for handlers that fetch S3 references.

    Clients (ours, TorchServe's workers, SageMaker's toolkit) reach it through AWS_ENDPOINT_URL,
    with throwaway credentials; nothing leaves the machine.
    """
    from moto.server import ThreadedMotoServer

    from marport.processes import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            env.delenv(var, raising=False)
        env.setenv("AWS_ENDPOINT_URL", url)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_REGION", REGION)
        env.setenv("AWS_DEFAULT_REGION", REGION)
        try:
            yield url
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def _one_archive_package_at_a_time():
    """A worker process serves one archive, whose code is the package `marport_serving` (and its root entry
    module); tests that load several archives in one process forget the last one's after each test."""
    import sys

    yield
    for name in [n for n in sys.modules if n == "marport_serving" or n.startswith("marport_serving.")
                 or n in ("sentiment_handler", "respiratory_handler")]:
        del sys.modules[name]
