"""What goes into each archive: everything its handler imports, and nothing of this project's packages."""

from __future__ import annotations

import ast
import sys
import zipfile

import pytest

from marport.build import MODELS
from sagemaker_deploy.package import CONTAINER_REQUIREMENTS
from tests.conftest import built_archive

# Third-party modules the serving side may import: TorchServe's own, torch and what
# code/requirements.txt installs in SageMaker's container.
SERVING_DEPENDENCIES = {"torch", "numpy", "yaml", "ts", "sagemaker_inference", "transformers", "soundfile", "soxr",
                        "safetensors", "onnxruntime"}


def imported_names(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("model", sorted(MODELS))
def test_archive_holds_every_module_its_handler_imports(model):
    with zipfile.ZipFile(built_archive(model)) as mar:
        members = set(mar.namelist())
        packed = {n[:-3] for n in members if n.endswith(".py") and "/" not in n}
        sources = {n: mar.read(f"{n}.py").decode() for n in packed}
    assert {"MAR-INF/MANIFEST.json", "model-config.yaml", "checkpoint/config.json"} <= members
    assert packed == {m[:-3] for m in MODELS[model].modules}
    for name, source in sources.items():
        outside = imported_names(source) - packed - set(sys.stdlib_module_names)
        assert outside <= SERVING_DEPENDENCIES, f"{name}.py imports {outside - SERVING_DEPENDENCIES}"
        assert not outside & {"marport", "sagemaker_deploy", "tests", "bench"}


def test_container_requirements_cover_the_handlers_needs():
    listed = {line.split(">")[0].split("=")[0].split("<")[0].strip() for line in CONTAINER_REQUIREMENTS.splitlines()}
    # torch, numpy, yaml and the toolkit ship with SageMaker's PyTorch image.
    assert {"transformers", "soundfile", "soxr", "safetensors"} <= listed


def test_every_serving_dependency_outside_the_container_is_in_code_requirements():
    """SageMaker's PyTorch image has torch, numpy, yaml and the toolkit; the rest must be installed from the tarball."""
    from sagemaker_deploy.package import CONTAINER_REQUIREMENTS

    listed = {line.split(">")[0].split("=")[0].strip() for line in CONTAINER_REQUIREMENTS.splitlines() if line.strip()}
    in_image = {"torch", "numpy", "yaml", "ts", "sagemaker_inference"}
    assert SERVING_DEPENDENCIES - in_image <= listed | {"safetensors"} and "onnxruntime" in listed

