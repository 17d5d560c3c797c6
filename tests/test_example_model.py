"""The example model of docs/extending.md (examples/tabular/tabular.py), written only against the model contract:
trained here, packed by `marport build --core` as a user types it, served by TorchServe, SageMaker's toolkit (both
routes) and Ray Serve, each with isolation, caps and metrics, and the same answers everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import torch

from marport.sagemaker_deploy.local import LocalEndpoint
from marport.sagemaker_deploy.package import package
from tests.conftest import REPO_ROOT, answers_close, running_torchserve

pytestmark = pytest.mark.integration

EXAMPLE = REPO_ROOT / "examples" / "tabular"
ROWS = {"one": {"features": [5.1, 3.5, 1.4, 0.2]}, "many": {"inputs": [[6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]}}
# body, content type, expected status and error type
BAD = [(b'{"features": [1, 2, 3]}', "application/json", 400, "invalid_row"),
       (b'{"features": [1, 2, NaN, 4]}', "application/json", 400, "invalid_json"),
       (b'{"features": [1, 2, 1e999, 4]}', "application/json", 400, "invalid_row"),
       (json.dumps({"inputs": [[1, 2, 3, 4]] * 300}).encode(), "application/json", 413, "too_many_inputs"),
       (b"x" * 70000, "application/json", 413, "body_too_large"),
       (b"5.1,3.5,1.4,0.2", "text/csv", 415, "unsupported_media_type"),
       (b'{"features": [1, 2, 3, 4]', "application/json", 400, "invalid_json")]


def train_checkpoint(out: Path) -> Path:
    """An iris classifier (scikit-learn's bundled copy), in the layout tabular.py loads."""
    from safetensors.torch import save_file
    from sklearn.datasets import load_iris

    data = load_iris()
    x, y = torch.tensor(data.data, dtype=torch.float32), torch.tensor(data.target)
    mean, scale = x.mean(0), x.std(0)
    torch.manual_seed(0)
    # tabular.network's layers (that module imports the contract relatively, so it is not imported here)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(net((x - mean) / scale), y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    out.mkdir(parents=True)
    save_file(net.state_dict(), str(out / "model.safetensors"))
    config = {"features": [n.replace(" (cm)", "").replace(" ", "_") for n in data.feature_names],
              "labels": [str(n) for n in data.target_names], "mean": mean.tolist(), "scale": scale.tolist(),
              "hidden": 16}
    (out / "config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """`marport build --core` run as a user runs it, in a workdir of its own."""
    root = tmp_path_factory.mktemp("example")
    checkpoint = train_checkpoint(root / "iris-checkpoint")
    built = subprocess.run([sys.executable, "-m", "marport", "build", "--core", str(EXAMPLE / "tabular.py"),
                            "--config", str(EXAMPLE / "model-config.yaml"), "--checkpoint", str(checkpoint),
                            "--workdir", str(root)], capture_output=True, text=True, timeout=600, cwd=root)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert (root / "model_store" / "tabular.mar").exists()
    return root


def assert_serves(url: str, reference: dict | None = None, headers: dict | None = None) -> dict:
    """Good rows answered (equal to `reference` when given), every bad body its own JSON 4xx, a bad request in
    a concurrent batch hurting only itself."""

    def post(url: str, body: bytes, content_type: str) -> requests.Response:
        return requests.post(url, data=body, headers={**(headers or {}), "Content-Type": content_type}, timeout=60)

    answers = {}
    for case, doc in ROWS.items():
        got = post(url, json.dumps(doc).encode(), "application/json")
        assert got.status_code == 200, got.text
        answers[case] = got.json()
    assert answers["one"]["label"] == "setosa" and [a["label"] for a in answers["many"]] == ["virginica", "versicolor"]
    assert sum(answers["one"]["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    if reference is not None:
        assert all(answers_close(answers[c], reference[c]) for c in ROWS), (answers, reference)
    for body, content_type, status, kind in BAD:
        got = post(url, body, content_type)
        assert got.status_code == status and got.json()["type"] == kind, (kind, got.status_code, got.text)
    jobs = [(json.dumps(ROWS["one"]).encode(), "application/json"), (BAD[0][0], BAD[0][1])] * 4
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda job: post(url, *job), jobs))
    assert [r.status_code for r in results] == [200, 400] * 4
    assert all(answers_close(r.json(), answers["one"]) for r in results[::2])
    return answers


def test_the_example_is_one_small_module():
    assert len((EXAMPLE / "tabular.py").read_text().splitlines()) <= 150


def test_served_by_torchserve_with_its_metrics(workdir, tmp_path):
    with running_torchserve(tmp_path / "run", workdir / "model_store", ["tabular.mar"]) as server:
        url = f"{server.inference_url}/predictions/tabular"
        answers = assert_serves(url, headers=server.headers("inference"))
        metrics = requests.get(f"{server.props['metrics_address']}/metrics", timeout=10).text
    assert 'RequestsRejected{' in metrics and 'ModelName="tabular"' in metrics
    assert any(line.startswith("Rows{") for line in metrics.splitlines()), "the model's own figure"
    (workdir / "torchserve-answers.json").write_text(json.dumps(answers))


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "toolkit-route"])
def test_served_by_the_sagemaker_toolkit(workdir, tmp_path, manifest):
    reference = json.loads((workdir / "torchserve-answers.json").read_text())
    tarball = package(workdir / "model_store" / "tabular.mar", tmp_path / "model.tar.gz", manifest=manifest)
    with LocalEndpoint(tarball, tmp_path / "run") as endpoint:
        assert_serves(f"{endpoint.url}/invocations", reference)


def test_served_by_ray_serve(workdir):
    reference = json.loads((workdir / "torchserve-answers.json").read_text())
    marport = [sys.executable, "-m", "marport"]

    def run(*args):
        return subprocess.run([*marport, *args, "--workdir", str(workdir)], capture_output=True, text=True,
                              timeout=300)

    started = run("serve", "--runtime", "ray", "--models", "tabular")
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        state = json.loads((workdir / "var" / "ray" / "state.json").read_text())
        assert_serves(f"{state['url']}/predictions/tabular", reference)
    finally:
        run("stop")
