"""What goes into each archive: everything its handler imports, as one package, and nothing of this project's
packages."""

from __future__ import annotations

import ast
import sys
import zipfile

import pytest

from marport.registry import MODELS
from tests.conftest import built_archive

# Third-party modules the serving side may import: TorchServe's own, torch and what
# code/requirements.txt installs in SageMaker's container.
SERVING_DEPENDENCIES = {"torch", "numpy", "yaml", "ts", "sagemaker_inference", "transformers", "soundfile", "soxr",
                        "safetensors", "onnxruntime", "captum", "boto3", "botocore", "orjson"}


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
    """The serving code is the package marport_serving; the only top-level module is TorchServe's entry, so nothing
    in an archive can shadow a user's or a library's module (`review`, `placement`, `int8` ...)."""
    package = "marport_serving"
    with zipfile.ZipFile(built_archive(model)) as mar:
        members = set(mar.namelist())
        top_level = {n[:-3] for n in members if n.endswith(".py") and "/" not in n}
        packed = {n[len(package) + 1 : -3] for n in members if n.startswith(f"{package}/") and n.endswith(".py")}
        sources = {n: mar.read(f"{package}/{n}.py").decode() for n in packed}
        entry = mar.read(MODELS[model].entry).decode()
    assert {"MAR-INF/MANIFEST.json", "model-config.yaml", "checkpoint/config.json"} <= members
    assert top_level == {MODELS[model].entry[:-3]}
    assert packed == {"__init__"} | {m[:-3] for m in MODELS[model].modules}
    assert imported_names(entry) == {package}
    for name, source in sources.items():
        outside = imported_names(source) - set(sys.stdlib_module_names)
        assert outside <= SERVING_DEPENDENCIES, f"{name}.py imports {outside - SERVING_DEPENDENCIES}"
        assert not outside & {"marport", "marport_serving", "sagemaker_deploy", "tests", "bench"}
        relative = {node.module for node in ast.walk(ast.parse(source))
                    if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
        assert relative <= packed, f"{name}.py imports {relative - packed}, which is not packed"


def _requirement_names(kind) -> set[str]:
    import re

    return {re.split(r"[<>=!~ ]", line, maxsplit=1)[0] for line in kind.container_requirements}


# What SageMaker's PyTorch 2.6 image already has: torch, numpy, yaml, TorchServe and the toolkit.
# boto3 (and its botocore) come with the toolkit, which requires them.
IN_IMAGE = {"torch", "numpy", "yaml", "ts", "sagemaker_inference", "boto3", "botocore"}


@pytest.mark.parametrize("model", sorted(MODELS))
def test_code_requirements_cover_what_the_archive_imports(model, tmp_path):
    """SageMaker's image lacks the rest: each archive's model.tar.gz must pip-install what its modules import."""
    import tarfile

    from marport.sagemaker_deploy.package import package

    tarball = package(built_archive(model), tmp_path / "model.tar.gz")
    with tarfile.open(tarball) as tar:
        sources = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers()
                   if m.name.endswith(".py") and m.name.count("/") <= 1}
        requirements = tar.extractfile("code/requirements.txt").read().decode()
    ours = {"marport_serving"} | {n.rsplit("/", 1)[-1][:-3] for n in sources}
    imported = set().union(*(imported_names(src) for src in sources.values())) - ours - set(sys.stdlib_module_names)
    listed = _requirement_names(MODELS[model])
    assert imported - IN_IMAGE <= listed, f"{model}: {imported - IN_IMAGE - listed} missing from code/requirements.txt"
    assert requirements.split() == list(MODELS[model].container_requirements)
    # transformers loads weights through safetensors without importing it by name here.
    assert model != "sentiment" or {"transformers", "safetensors", "onnxruntime"} <= listed


@pytest.mark.parametrize("model, other", [("respiratory", "sentiment"), ("sentiment", "respiratory")])
def test_a_checkpoint_of_another_kind_is_refused_before_anything_is_built(model, other, tmp_path):
    """`marport build MODEL --checkpoint DIR` loads DIR as the archive's worker will and refuses with the reason."""
    import subprocess

    from tests.conftest import REPO_ROOT

    checkpoint = REPO_ROOT / "build" / other / "demo-checkpoint"
    if not (checkpoint / "config.json").exists():
        pytest.fail(f"{checkpoint} is missing: run the tests with `make test`, which trains it")
    built = subprocess.run([sys.executable, "-m", "marport", "build", model, "--checkpoint", str(checkpoint),
                            "--name", "wrong", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 1
    assert f"cannot be served as a {model} model" in built.stderr and "nothing was built" in built.stderr
    reason = {"respiratory": "Error(s) in loading state_dict for RespiratoryCNN", "sentiment": "tokenizer"}[model]
    assert reason in built.stderr, built.stderr[-2000:]
    assert "Traceback" not in built.stderr
    assert not (tmp_path / "model_store" / "wrong.mar").exists()
