"""The local launcher's checks that run before TorchServe does."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from marport.processes import alive
from marport.server import LocalTorchServe, free_port_overrides, read_properties
from tests.conftest import REPO_ROOT


def test_busy_port_is_reported_before_starting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        overrides = {**free_port_overrides(), "inference_address": f"http://127.0.0.1:{busy.getsockname()[1]}"}
        server = LocalTorchServe(run_dir=tmp_path, overrides=overrides, model_store=tmp_path)
        with pytest.raises(RuntimeError, match="inference_address in config.properties\\) is already in use"):
            server.start([])
    assert not server.is_running()


def test_missing_archive_is_named(tmp_path):
    server = LocalTorchServe(run_dir=tmp_path, overrides=free_port_overrides(), model_store=tmp_path)
    with pytest.raises(FileNotFoundError, match="nothere.mar missing: build it first"):
        server.start(["nothere.mar"])


def test_an_empty_model_store_says_what_to_build(tmp_path):
    """A first `marport serve` in an empty folder (load_models=all) names the build commands."""
    server = LocalTorchServe(run_dir=tmp_path / "var", overrides=free_port_overrides(), model_store=tmp_path)
    with pytest.raises(FileNotFoundError, match="no model archives in") as raised:
        server.start()
    from marport.registry import MODELS

    for name in MODELS:  # the hint is the registry's: every model kind, and one's own checkpoint
        assert f"marport build {name} " in str(raised.value)
    assert "--checkpoint DIR --name NAME" in str(raised.value)
    assert not server.is_running()


def test_the_metrics_declaration_is_torchserves_plus_every_handler_metric():
    """Generated from operator_metrics.METRICS (one list): TorchServe 0.12 publishes only what is declared."""
    import yaml

    from marport.handlers.operator_metrics import METRICS
    from marport.server import metrics_declaration

    declared = yaml.safe_load(metrics_declaration())
    models = {m["name"]: (kind, m) for kind, ms in declared["model_metrics"].items() for m in ms}
    for name, (kind, unit, dimensions) in METRICS.items():
        assert models[name][0] == kind and models[name][1]["unit"] == unit
        assert models[name][1]["dimensions"] == ["ModelName", *dimensions]
    assert {"HandlerTime", "PredictionTime"} <= set(models)  # TorchServe's own, kept
    assert "Requests2XX" in {m["name"] for ms in declared["ts_metrics"].values() for m in ms}


def test_metrics_declaration_generated_unless_the_config_names_one_that_exists(tmp_path):
    """The shipped config names no metrics_config (TorchServe's bundled one is found wherever it starts);
    marport serve declares every metric itself, takes a named file relative to the config's folder, and
    refuses a named file that does not exist instead of starting workers that die one after another."""
    config = tmp_path / "config.properties"
    shipped = (REPO_ROOT / "config.properties").read_text()
    assert "metrics_config" not in read_properties(REPO_ROOT / "config.properties")
    config.write_text(shipped)
    server = LocalTorchServe(run_dir=tmp_path / "var", overrides=free_port_overrides(), model_store=tmp_path,
                             config=config)
    assert server.props["metrics_config"] == str(tmp_path / "var" / "metrics.yaml")  # generated at start
    config.write_text(shipped + "metrics_config=mine.yaml\n")
    named = LocalTorchServe(run_dir=tmp_path / "var", overrides=free_port_overrides(), model_store=tmp_path,
                            config=config)
    with pytest.raises(RuntimeError, match="mine.yaml does not exist"):
        named.props
    (tmp_path / "mine.yaml").write_text("dimensions: []\n")
    again = LocalTorchServe(run_dir=tmp_path / "var", overrides=free_port_overrides(), model_store=tmp_path,
                            config=config)
    assert again.props["metrics_config"] == str(tmp_path / "mine.yaml")


def test_the_wheel_ships_the_repos_config():
    """The template the wheel carries is the repo's config.properties itself (a link to it, which the wheel
    resolves into a file), not a copy that could drift from it."""
    from marport.resources import server_config_template

    template = REPO_ROOT / "marport" / "templates" / "config.properties"
    assert template.is_symlink() and template.resolve() == (REPO_ROOT / "config.properties").resolve()
    assert server_config_template().resolve() == (REPO_ROOT / "config.properties").resolve()
    assert read_properties(server_config_template())["load_models"] == "all"


def test_shipped_config_is_safe_by_default():
    props = read_properties(REPO_ROOT / "config.properties")
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["disable_token_authorization"] == "false" and props["enable_model_api"] == "false"
    assert props["allowed_urls"].startswith("file://")
    assert int(props["max_request_size"]) > 0 and int(props["max_response_size"]) > 0


@pytest.mark.integration
def test_starting_leaves_the_callers_output_streams_free(tmp_path):
    """`make serve | tee log` must end: the Java daemon may not inherit the caller's pipes."""
    script = (
        "from pathlib import Path; from marport.server import LocalTorchServe, free_port_overrides;"
        f"LocalTorchServe(run_dir=Path({str(tmp_path)!r}), overrides=free_port_overrides(),"
        f" model_store=Path({str(tmp_path)!r})).start([])"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    server = LocalTorchServe(run_dir=tmp_path, model_store=tmp_path)
    try:
        launcher.communicate(timeout=120)  # EOF on both pipes once the launcher itself exits
        assert launcher.returncode == 0
        assert server.pid is not None and alive(server.pid), "TorchServe did not start"
    finally:
        launcher.kill()
        server.stop()


@pytest.mark.integration
def test_marport_serve_says_why_a_model_cannot_load_within_seconds(tmp_path):
    """An archive whose weights are broken (built by hand: `marport build` refuses such a checkpoint): the worker
    dies at load, TorchServe would retry it forever, and `marport serve` says why at once and stops."""
    import time

    broken_archive(tmp_path / "model_store")
    started = time.monotonic()
    served = subprocess.run([sys.executable, "-m", "marport", "serve", "--workdir", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert served.returncode == 1
    assert "could not load" in served.stderr and "SafetensorError" in served.stderr, served.stderr[-2000:]
    assert took < 60, f"the load error took {took:.0f} s to surface"
    server = LocalTorchServe(run_dir=tmp_path / "var", model_store=tmp_path / "model_store")
    assert not server.is_running()


def broken_archive(folder):
    """The respiratory archive with its weights replaced by bytes that are not safetensors."""
    import zipfile

    from tests.conftest import built_archive

    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(built_archive("respiratory")) as good, zipfile.ZipFile(folder / "broken.mar", "w") as broken:
        for item in good.infolist():
            broken.writestr(item, b"not weights" if item.filename.endswith(".safetensors") else good.read(item))
    return folder / "broken.mar"


@pytest.mark.integration
def test_serve_local_says_why_a_model_cannot_load_within_seconds(tmp_path):
    """The same under SageMaker's toolkit, whose TorchServe would retry the model until serve-local's timeout."""
    import time

    from marport.processes import free_port

    mar = broken_archive(tmp_path / "model_store")
    started = time.monotonic()
    served = subprocess.run([sys.executable, "-m", "marport", "sagemaker", "serve-local", str(mar), "--port",
                             str(free_port()), "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300)
    took = time.monotonic() - started
    assert served.returncode == 1
    assert "could not load" in served.stderr and "SafetensorError" in served.stderr, served.stderr[-2000:]
    assert "Traceback" not in served.stderr
    assert took < 90, f"the load error took {took:.0f} s to surface"


@pytest.mark.parametrize("prefix, model", [("W-9000-my_model_0.1.0-stdout ", "my_model"), ("", "the model")])
def test_a_dead_workers_error_is_read_from_either_log_format(prefix, model):
    """TorchServe's own log layout names the worker's thread; SageMaker's toolkit's does not."""
    from marport.server import load_failures

    lines = [f"2026-12-07T05:09:33,315 [INFO ] {prefix}MODEL_LOG - {text}" for text in (
        "loading", "Backend worker process died.", "Traceback (most recent call last):", '  File "x.py", line 1',
        "RuntimeError: Error(s) in loading state_dict for RespiratoryCNN:", "\tMissing key(s) in state_dict: a")]
    assert load_failures(lines) == {model: "RuntimeError: Error(s) in loading state_dict for RespiratoryCNN:\n  "
                                           "Missing key(s) in state_dict: a"}
    assert load_failures(lines[:1]) == {}
