"""Every notebook runs top to bottom in a real Jupyter kernel from the project's venv."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration
NOTEBOOKS = REPO_ROOT / "notebooks"


def tagged_output(nb, tag: str) -> str:
    cell = next(c for c in nb.cells if tag in c.metadata.get("tags", []))
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def images_in(nb, tag: str) -> int:
    cell = next(c for c in nb.cells if tag in c.metadata.get("tags", []))
    return sum("image/png" in o.get("data", {}) for o in cell.outputs)


def run(name: str, work: Path, monkeypatch) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    monkeypatch.setenv("MARPORT_NOTEBOOK_WORK", str(work))
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "SAGEMAKER_ROLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(work / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(work / "no-aws-credentials"))
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


@pytest.mark.parametrize("name", ["sentiment", "respiratory"])
def test_committed_notebooks_have_no_outputs(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_sentiment_notebook(tmp_path, monkeypatch):
    nb = run("sentiment", tmp_path, monkeypatch)
    assert images_in(nb, "in-process") == 1 and (tmp_path / "sentiment" / "label_distribution.png").exists()
    served = json.loads(tagged_output(nb, "served"))
    assert served["single"]["label"] in served["single"]["scores"]
    assert sum(served["single"]["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert len(served["several"]) == 3 and all("label" in a for a in served["several"])
    assert served["broken"]["status"] == 400 and served["broken"]["type"] == "invalid_json"
    assert images_in(nb, "explanations") == 1 and (tmp_path / "sentiment" / "attributions.png").exists()
    assert tagged_output(nb, "explanations").count("[('") == 3  # each sentence's words with their scores
    assert "MAR-INF/MANIFEST.json" in tagged_output(nb, "package")
    assert (tmp_path / "sentiment" / "model.tar.gz").stat().st_size > 0
    assert tagged_output(nb, "aws").startswith("AWS steps skipped: no AWS credentials found")
    assert tagged_output(nb, "aws-mme").startswith("AWS steps skipped: no AWS credentials found")  # the MME section


def test_respiratory_notebook(tmp_path, monkeypatch):
    nb = run("respiratory", tmp_path, monkeypatch)
    assert images_in(nb, "recordings") == 2
    assert all((tmp_path / "respiratory" / f"recording-{label}.png").exists() for label in "01")
    assert images_in(nb, "report") == 1 and json.loads(tagged_output(nb, "report"))["roc_auc"] > 0.5
    served = json.loads(tagged_output(nb, "served"))
    for label in "01":
        answer = served[f"recording labelled {label}"]
        assert answer["label"] in ("healthy", "unhealthy") and 0 <= answer["probability"] <= 1
        assert answer["windows"] and answer["threshold"] > 0
    assert served["broken"]["status"] == 400 and served["broken"]["type"] == "unreadable_audio"
    assert "code/inference.py" in tagged_output(nb, "package")
    assert tagged_output(nb, "aws").startswith("AWS steps skipped: no AWS credentials found")
    offline = tagged_output(nb, "s3-async")
    assert '{"s3_uri": "s3://' in offline and "would run:" in offline and "--async --output s3://" in offline
    assert (tmp_path / "respiratory" / "connect-lambda.zip").stat().st_size > 0
