"""Both models behind one multi-model endpoint's container: SageMaker's real toolkit in MME mode on loopback,
the tarballs laid out as the platform lays them, and this test playing the platform's calls."""

from __future__ import annotations

import json

import psutil
import pytest
import requests

from marport.processes import alive
from marport.sagemaker_deploy.local_mme import LocalMultiModel, opaque_name
from marport.sagemaker_deploy.package import package
from tests.audio_helpers import cough_like, encode
from tests.conftest import answers_close, built_archive, running_torchserve, torchserve_answers

pytestmark = pytest.mark.integration

BODIES = {
    "sentiment": (b"The staff were friendly and the breakfast was excellent", "text/plain"),
    "respiratory": (encode(cough_like(3, 16000, 4), 16000), "audio/wav"),
}
HOSTILE = {"sentiment": (b'{"text": 5}', "application/json", "invalid_type"),
           "respiratory": (b"not a recording at all " * 10, "audio/wav", "unreadable_audio")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """What the single-model path (local TorchServe, the same archives) answers for each body."""
    return torchserve_answers(tmp_path_factory, {model: {"one": body} for model, body in BODIES.items()})


@pytest.fixture(scope="module")
def mme(tmp_path_factory):
    """Both demo archives and one a user builds from a checkpoint of their own, under one prefix."""
    import subprocess
    import sys

    from tests.checkpoints import save_tiny_checkpoint

    folder = tmp_path_factory.mktemp("mme")
    tarballs = {f"{m}.tar.gz": package(built_archive(m), folder / "prefix" / f"{m}.tar.gz") for m in BODIES}
    mine = save_tiny_checkpoint(folder / "my-checkpoint", labels=("bad", "good"))
    subprocess.run([sys.executable, "-m", "marport", "build", "sentiment", "--checkpoint", str(mine), "--name", "mine",
                    "--workdir", str(folder)], check=True, capture_output=True, timeout=600)
    tarballs["mine.tar.gz"] = package(folder / "model_store" / "mine.mar", folder / "prefix" / "mine.tar.gz")
    with running_torchserve(folder / "single", folder / "model_store", ["mine.mar"]) as single:  # its reference
        mine_alone = requests.post(f"{single.inference_url}/predictions/mine", data=b"Lovely staff", timeout=120,
                                   headers={"Content-Type": "text/plain", **single.headers()}).json()
    with LocalMultiModel(tarballs, folder / "run") as endpoint:
        endpoint.mine_alone = mine_alone  # type: ignore[attr-defined]
        yield endpoint
    java = [p for p in psutil.process_iter(["cmdline"]) if str(folder) in " ".join(p.info["cmdline"] or [])]
    assert not [p for p in java if alive(p)], "the toolkit's TorchServe outlived the endpoint"


def load(endpoint, target: str) -> requests.Response:
    folder = endpoint.models[target]
    return requests.post(f"{endpoint.url}/models", json={"model_name": opaque_name(target), "url": str(folder)},
                         timeout=300)


def test_the_platforms_calls_load_invoke_and_unload_every_model(mme, reference):
    assert requests.get(f"{mme.url}/ping", timeout=10).status_code == 200  # healthy with nothing loaded
    for target in mme.models:
        assert load(mme, target).status_code == 200, target
    assert load(mme, "sentiment.tar.gz").status_code == 409  # loaded already
    listed = {m["modelName"] for m in requests.get(f"{mme.url}/models", timeout=10).json()["models"]}
    assert listed == {opaque_name(t) for t in mme.models}
    assert requests.get(f"{mme.url}/models/{opaque_name('nope.tar.gz')}", timeout=10).status_code == 404
    for model, (body, content_type) in BODIES.items():
        target = f"{model}.tar.gz"
        got = requests.post(f"{mme.url}/models/{opaque_name(target)}/invoke", data=body, timeout=120,
                            headers={"Content-Type": content_type, "X-Amzn-SageMaker-Target-Model": target})
        assert got.status_code == 200, got.text[:300]
        assert answers_close(json.loads(got.text), reference[model, "one"]), (model, got.text[:300])
        hostile, kind, error = HOSTILE[model]
        refused = requests.post(f"{mme.url}/models/{opaque_name(target)}/invoke", data=hostile, timeout=120,
                                headers={"Content-Type": kind, "X-Amzn-SageMaker-Target-Model": target})
        assert refused.status_code == 400 and json.loads(refused.text)["type"] == error, refused.text[:300]
    explained = requests.post(f"{mme.url}/models/{opaque_name('sentiment.tar.gz')}/invoke", timeout=120,
                              data=BODIES["sentiment"][0],
                              headers={"Content-Type": "text/plain", "X-Amzn-SageMaker-Target-Model": "sentiment.tar.gz",
                                       "X-Amzn-SageMaker-Custom-Attributes": "explain=true"})
    assert explained.status_code == 200 and explained.json()["attributions"], explained.text[:300]
    mine = requests.post(f"{mme.url}/models/{opaque_name('mine.tar.gz')}/invoke", data=b"Lovely staff", timeout=120,
                         headers={"Content-Type": "text/plain", "X-Amzn-SageMaker-Target-Model": "mine.tar.gz"})
    assert mine.status_code == 200 and set(mine.json()["scores"]) == {"bad", "good"}, mine.text[:300]  # its labels
    assert answers_close(mine.json(), mme.mine_alone), (mine.text, mme.mine_alone)  # as its single-model server
    unloaded = requests.delete(f"{mme.url}/models/{opaque_name('sentiment.tar.gz')}", timeout=60)
    assert unloaded.status_code == 200
    assert requests.get(f"{mme.url}/models/{opaque_name('sentiment.tar.gz')}", timeout=10).status_code == 404
    gone = requests.post(f"{mme.url}/models/{opaque_name('sentiment.tar.gz')}/invoke", data=b"hello", timeout=60,
                         headers={"Content-Type": "text/plain"})
    assert gone.status_code == 404
    assert requests.get(f"{mme.url}/ping", timeout=10).status_code == 200


@pytest.mark.parametrize("url", ["/etc", "{models}/../..", "relative/model", "http://example.com/model.tar.gz"])
def test_no_model_is_registered_from_outside_the_models_folder(mme, url):
    url = url.format(models=mme.models_dir)
    refused = requests.post(f"{mme.url}/models", json={"model_name": "x", "url": url}, timeout=30)
    assert refused.status_code == 403 and refused.json()["type"] == "url_outside_models", refused.text
    query = requests.post(f"{mme.url}/models", params={"url": url, "model_name": "y"}, timeout=30)
    assert query.status_code == 403


def test_only_the_platforms_calls_are_answered_and_only_on_loopback(mme):
    for method, path in (("PUT", "/models/x?min_worker=4"), ("GET", "/api-description"), ("POST", "/workflows")):
        assert requests.request(method, f"{mme.url}{path}", timeout=30).status_code == 404, path
    java = [p for p in psutil.process_iter(["cmdline"]) if str(mme.workdir) in " ".join(p.info["cmdline"] or [])]
    ports = {c.laddr.port for p in java for q in [p, *p.children(recursive=True)]
             for c in q.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    for port in ports:  # TorchServe's own TCP listeners (metrics, gRPC): none registers a model
        try:
            got = requests.post(f"http://127.0.0.1:{port}/models", params={"url": "/etc"}, timeout=5)
        except requests.RequestException:
            continue
        assert got.status_code >= 400, port
    listeners = [c.laddr.ip for p in java for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listeners), listeners
