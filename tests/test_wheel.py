"""The wheel path: build marport's wheel, install it into a fresh venv outside the repo, and use
the `marport` command from an empty folder as a new user would.

The new venv gets its third-party dependencies from the project's .venv (through a .pth line,
so that nothing is downloaded), but marport itself only from the wheel: no source checkout is
on its path, and the commands run in a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from marport.processes import free_port
from marport.server import read_properties, write_properties
from tests.checkpoints import save_tiny_checkpoint
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.integration


PACKAGED = ("pyproject.toml", "README.md", "config.properties", "marport", "handlers", "sagemaker_deploy", "bench")


def _source_tree(dest: Path) -> Path:
    """The files a clone has (tracked, or new and not ignored), copied: the wheel builds from
    what a user gets, and building leaves nothing in the repo."""
    listing = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True)
    if listing.returncode != 0:  # an export without .git: what pyproject.toml packs, minus build litter
        for name in PACKAGED:
            src = REPO_ROOT / name
            if src.is_dir():
                shutil.copytree(src, dest / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "results"))
            else:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
        return dest
    listed = listing.stdout.decode().split("\0")
    for name in filter(None, listed):
        src, dst = REPO_ROOT / name, dest / name
        if not src.exists() and not src.is_symlink():  # deleted but not yet committed
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    source = _source_tree(work / "src")
    # A standard build: pip sets up pyproject.toml's build requirements in an isolated environment.
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--quiet", "-w", str(work / "dist")],
                   check=True)
    (built,) = (work / "dist").glob("marport-*.whl")
    return built


def _requires(wheel: Path) -> list:
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(meta).decode().splitlines()
    return [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]


def test_the_library_asks_for_ranges_and_extras_by_use(wheel):
    requires = _requires(wheel)
    base = [r for r in requires if r.marker is None]
    assert not [str(r) for r in base if any(s.operator in ("==", "===") for s in r.specifier)]
    by_name = {r.name: r for r in base}
    for version in ("2.6.0", "2.11.0", "2.13.0"):  # SageMaker's last TorchServe image, the GPU hosts', this repo's
        assert by_name["torch"].specifier.contains(version)
    assert "torchserve" not in by_name and "scikit-learn" not in by_name and "captum" not in by_name
    extras = {str(r.marker).split('"')[1] for r in requires if r.marker is not None}
    assert {"serve", "train", "sagemaker", "ray", "notebooks", "bench", "dev"} <= extras


def test_installing_keeps_the_users_torch(wheel, tmp_path):
    """pip, asked to install the wheel where another torch is installed, leaves that torch alone (a dry
    run against the package index: a stand-in torch 2.6.0 distribution is what the venv has)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    info = site / "torch-2.6.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.6.0\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    report = tmp_path / "report.json"
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--dry-run", "--report", str(report), str(wheel)],
                   check=True)
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "marport" in planned and "transformers" in planned
    assert "torch" not in planned  # 2.6.0 satisfies the range: nothing replaces it


@pytest.fixture(scope="module")
def user(wheel, tmp_path_factory):
    """A fresh venv with the wheel installed, and a `run` that calls marport in an empty folder."""
    root = tmp_path_factory.mktemp("user")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                    "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # Dependencies from the project's venv, after the new venv's own site-packages (marport from the wheel wins).
    Path(site, "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    folder = root / "work"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    # torchserve and torch-model-archiver are dependencies too: their scripts are in the project's venv.
    env["PATH"] = os.pathsep.join([str(venv / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(venv / "bin" / "marport"), *args], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=900)
        if check and done.returncode != 0:
            raise AssertionError(f"marport {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    return python, folder, env, run


def test_the_wheel_carries_what_the_tools_need(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"marport/handlers/sentiment_handler.py", "marport/handlers/contract.py",
            "marport/handlers/config/sentiment.yaml", "marport/handlers/config/respiratory.yaml",
            "marport/templates/config.properties", "marport/sagemaker_deploy/package.py",
            "marport/bench/run.py", "marport/data/sentiment/README.md", "marport/templates/torchserve_metrics.yaml",
            "marport/connect_lambda/lambda_function.py", "marport/handlers/s3_input.py", "marport/handlers/endpoint.py",
            "marport/handlers/ray_adapter.py", "marport/ui/index.html", "marport/ui/app.js",
            "marport/ray_server.py", "marport/sagemaker_deploy/ray_runtime.py"} <= names
    # The link in marport/templates/ becomes the repo's file itself.
    assert zipfile.ZipFile(wheel).read("marport/templates/config.properties") == (REPO_ROOT / "config.properties").read_bytes()
    assert any(n.startswith("marport/data/sentiment/marport/") and n.endswith(".tsv") for n in names)
    assert not any(n.startswith(("bench/", "sagemaker_deploy/", "handlers/", "connect_lambda/", "tests/"))
                   for n in names), \
        "only the marport package goes into site-packages"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode().replace(" ", "").split()
    assert scripts == ["[console_scripts]", "marport=marport.cli:main"], "one command, no stray entry points"


def test_marport_comes_from_the_wheel_and_hides_nothing(user):
    python, folder, env, _ = user
    probe = ("import marport, marport.build, marport.resources as r, marport.handlers.sentiment; "
             "import sagemaker_inference, review; "
             "print(marport.__file__); print(r.handlers_dir()); print(sagemaker_inference.__file__); print(review.__file__)")
    user_module = folder / "review.py"  # a user's own module, named like one of ours
    user_module.write_text("WHOSE = 'the user'\n")
    try:
        lines = subprocess.run([str(python), "-c", probe], cwd=folder, env=env, capture_output=True, text=True,
                               check=True).stdout.split()
    finally:
        user_module.unlink()
    venv = python.parent.parent
    assert all(Path(p).is_relative_to(venv) for p in lines[:2]), lines
    # The handlers are a package: nothing of theirs shadows a library's or the user's modules (a bare
    # handlers/ on the path once hid the toolkit's package behind a sagemaker_inference.py; `review` is the user's).
    assert not Path(lines[2]).is_relative_to(Path(lines[1])), lines
    assert Path(lines[3]).parent == folder, lines
    help_text = subprocess.run([str(python), "-m", "marport", "--help"], cwd=folder, env=env, capture_output=True,
                               text=True, check=True).stdout
    for command in ("train", "build", "serve", "stop", "status", "predict", "token", "sagemaker", "bench"):
        assert f"\n    {command}" in help_text


def test_a_user_builds_serves_and_packages_their_own_checkpoint(user, tmp_path):
    python, folder, env, run = user
    # A first serve in the empty folder says what to build.
    first = run("serve", check=False)
    assert first.returncode != 0 and "marport build MODEL --checkpoint DIR --name NAME" in first.stderr
    assert run("status", check=False).returncode == 3

    checkpoint = tmp_path / "my-checkpoint"
    save_tiny_checkpoint(checkpoint, labels=("bad", "good"))
    run("build", "sentiment", "--checkpoint", str(checkpoint), "--name", "mine")
    assert (folder / "model_store" / "mine.mar").exists()

    # The folder's own config.properties wins over the shipped one: here, free ports.
    props = read_properties(folder.parent / "venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
                            / "site-packages" / "marport" / "templates" / "config.properties")
    props.update(inference_address=f"http://127.0.0.1:{free_port()}",
                 management_address=f"http://127.0.0.1:{free_port()}",
                 metrics_address=f"http://127.0.0.1:{free_port()}",
                 grpc_inference_port=str(free_port()), grpc_management_port=str(free_port()))
    write_properties(folder / "config.properties", props)
    try:
        served = run("serve")
        assert "serving mine" in served.stdout and 'marport predict mine "' in served.stdout
        status = run("status")
        assert status.stdout.startswith("running") and props["inference_address"] in status.stdout

        answer = json.loads(run("predict", "mine", "The staff were lovely").stdout)
        assert answer["label"] in ("bad", "good") and set(answer["scores"]) == {"bad", "good"}
        (folder / "reviews.json").write_text(json.dumps({"inputs": ["Great room", "Awful food"]}))
        several = json.loads(run("predict", "mine", "--file", "reviews.json").stdout)
        assert [a["label"] in ("bad", "good") for a in several] == [True, True]
        refused = run("predict", "mine", "--file", "reviews.json", "--content-type", "application/x-npy",
                      check=False)
        assert refused.returncode != 0 and json.loads(refused.stdout)["type"]  # the handler's JSON error

        old_key = json.loads((folder / "var" / "key_file.json").read_text())["inference"]["key"]
        new_key = run("token").stdout.strip()
        assert new_key and new_key != old_key
        import requests

        url = f"{props['inference_address']}/predictions/mine"
        stale = requests.post(url, data=b"ok", headers={"Authorization": f"Bearer {old_key}"}, timeout=30)
        assert stale.status_code == 400 and stale.json()["type"] == "InvalidKeyException"  # TorchServe's refusal
        assert requests.post(url, data=b"ok", headers={"Authorization": f"Bearer {new_key}"}, timeout=30).ok
        assert json.loads(run("predict", "mine", "Still fine").stdout)["label"] in ("bad", "good")
    finally:
        run("stop", check=False)
    assert run("status", check=False).returncode == 3

    run("sagemaker", "package", "mine")
    tarball = folder / "build" / "sagemaker" / "mine" / "model.tar.gz"
    with tarfile.open(tarball) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("code/requirements.txt").read().decode()
    assert {"MAR-INF/MANIFEST.json", "model-config.yaml", "checkpoint/config.json", "code/inference.py",
            "sentiment_handler.py"} <= names
    assert "transformers" in requirements

