"""Handler code that runs in SageMaker's container (Python 3.12) and on the Python >= 3.10 the wheel supports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from marport.registry import MODELS, container_requirements

ROOT = Path(__file__).resolve().parent.parent
PACKED = sorted({*(ROOT / "handlers").glob("*.py"), ROOT / "connect_lambda" / "lambda_function.py"})


@pytest.mark.parametrize("path", PACKED, ids=[p.name for p in PACKED])
def test_packed_modules_parse_with_python_3_10s_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))


def test_the_containers_requirements_are_exact_pins():
    """A range in code/requirements.txt is installed afresh at every container start: pin what was tested."""
    pins = container_requirements()
    assert pins and all(req.count("==") == 1 and not any(c in req for c in "<>~!,") for req in pins), pins
    for kind in MODELS.values():
        assert set(kind.container_requirements) <= set(pins)


def test_the_container_venv_has_the_images_versions():
    """Under `make test-container` this runs with SageMaker's stack; in the main venv, with the project's."""
    import sys

    import torch

    if Path(sys.prefix).name != ".venv-container":
        pytest.skip("checks the container venv: runs under make test-container")
    from importlib.metadata import version

    assert torch.__version__.startswith("2.6.0")
    assert version("torchserve") == "0.12.0" and version("sagemaker-pytorch-inference") == "2.0.25"
