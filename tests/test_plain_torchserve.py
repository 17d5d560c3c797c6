"""TorchServe as its own users start it, with the shipped config.properties: no marport launcher, no var/.

`torchserve --start --ts-config config.properties --model-store model_store --models all` from a folder laid
out as a fresh clone's root, the same from var/ (the by-hand command in docs/operations.md), and from a folder
holding only the wheel's template. Each must answer both models and report the handlers' metrics, with no
worker that dies, then stop with `torchserve --stop`. The config's ports are moved to free ones; nothing else
in it changes. TorchServe's pid file goes to a private TEMP.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from marport.processes import alive, free_port
from marport.resources import server_config_template
from marport.server import TS_MAIN_CLASS
from tests.audio_helpers import cough_like, encode
from tests.conftest import REPO_ROOT, built_archive

pytestmark = pytest.mark.integration

TORCHSERVE = str(Path(sys.executable).with_name("torchserve"))
READY_S = 180


def with_free_ports(config_text: str) -> tuple[str, dict[str, int]]:
    ports = {name: free_port() for name in ("inference", "management", "metrics", "grpc_inference", "grpc_management")}
    for name in ("inference", "management", "metrics"):
        config_text = re.sub(rf"^{name}_address=http://127\.0\.0\.1:\d+$",
                             f"{name}_address=http://127.0.0.1:{ports[name]}", config_text, flags=re.M)
    for name in ("grpc_inference", "grpc_management"):
        config_text = re.sub(rf"^{name}_port=\d+$", f"{name}_port={ports[name]}", config_text, flags=re.M)
    assert all(str(port) in config_text for port in ports.values())
    return config_text, ports


def lay_out(root: Path, layout: str) -> tuple[Path, list[str], dict[str, int]]:
    """(folder to run in, torchserve arguments, ports) for one way of starting it, as a fresh clone has it."""
    shipped = (REPO_ROOT / "config.properties") if layout != "wheel" else server_config_template()
    text, ports = with_free_ports(shipped.read_text())
    (root / "model_store").mkdir(parents=True)
    for model in ("sentiment", "respiratory"):
        shutil.copy2(built_archive(model), root / "model_store" / f"{model}.mar")
    (root / "config.properties").write_text(text)
    if layout == "var":  # docs/operations.md: cd var && ../.venv/bin/torchserve --start --ncs --ts-config ...
        (root / "var").mkdir()
        return root / "var", ["--start", "--ncs", "--ts-config", "../config.properties", "--model-store",
                              "../model_store"], ports
    return root, ["--start", "--ts-config", "config.properties", "--model-store", "model_store", "--models", "all"], ports


def key(cwd: Path, kind: str = "inference") -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            return json.loads((cwd / "key_file.json").read_text())[kind]["key"]
        except (OSError, ValueError, KeyError):
            time.sleep(0.5)
    raise AssertionError(f"no key_file.json in {cwd}")


def answer(url: str, body: bytes, content_type: str, headers: dict) -> requests.Response:
    """The first answer that is not 'not listening yet' or 'no worker yet' (503) within READY_S."""
    deadline = time.monotonic() + READY_S
    while True:
        try:
            got = requests.post(url, data=body, headers={**headers, "Content-Type": content_type}, timeout=120)
        except requests.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
            continue
        if got.status_code != 503 or time.monotonic() > deadline:
            return got
        time.sleep(2)


@pytest.mark.parametrize("layout", ["repo-root", "var", "wheel"])
def test_plain_torchserve_start_answers_and_stops(tmp_path, layout):
    cwd, args, ports = lay_out(tmp_path / "clone", layout)
    temp = tmp_path / "temp"
    temp.mkdir()
    env = {**os.environ, "TEMP": str(temp), "TMPDIR": str(temp)}
    said = tmp_path / "torchserve.out"
    with open(said, "wb") as out:  # the Java daemon inherits these streams: a pipe would never close
        started = subprocess.run([TORCHSERVE, *args], cwd=cwd, env=env, stdout=out, stderr=out, timeout=120)
    try:
        assert started.returncode == 0, said.read_text(errors="replace")[-2000:]
        inference = f"http://127.0.0.1:{ports['inference']}"
        auth = {"Authorization": f"Bearer {key(cwd)}"}
        got = answer(f"{inference}/predictions/sentiment", b"The staff were friendly and breakfast was generous",
                     "text/plain", auth)
        assert got.status_code == 200, got.text[:500]
        assert got.json()["label"] in {"negative", "neutral", "positive"}
        got = answer(f"{inference}/predictions/respiratory", encode(cough_like(3, 16000, 1), 16000), "audio/wav", auth)
        assert got.status_code == 200, got.text[:500]
        assert 0.0 <= got.json()["probability"] <= 1.0
        assert requests.get(f"{inference}/ping", headers=auth, timeout=10).json()["status"] == "Healthy"
        assert_form_bodies_as_documented(inference, auth)
        metrics = requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
        for series in ('Texts{ModelName="sentiment"', 'Recordings{ModelName="respiratory"'):
            assert series in metrics, metrics[-2000:]  # the handlers' metrics, with no metrics_config named
        model_log = (cwd / "logs" / "model_log.log").read_text(errors="replace")
        assert "Backend worker process died" not in model_log
    finally:
        java = _java_of(temp)
        stopped = subprocess.run([TORCHSERVE, "--stop"], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        if java and stopped.returncode != 0:
            java.kill()
    assert stopped.returncode == 0 and "TorchServe has stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 60
    while java and alive(java) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not (java and alive(java)), "TorchServe's Java front end outlived torchserve --stop"


def _java_of(temp: Path):
    """TorchServe's front end, from its pid file in this test's TEMP."""
    import psutil

    try:
        proc = psutil.Process(int((temp / ".model_server.pid").read_text().strip()))
    except (OSError, ValueError, psutil.Error):
        return None
    return proc if TS_MAIN_CLASS in proc.cmdline() else None


def assert_form_bodies_as_documented(inference: str, auth: dict) -> None:
    """What curl sends without -H (application/x-www-form-urlencoded), as docs/serving.md says: TorchServe's
    front end parses every such body as a form before a handler sees it, and no setting of 0.12 stops it.
    A text survives that parse and gets the handler's 415; a recording's bytes do not, and TorchServe itself
    answers 500 ErrorDataDecoderException. If a TorchServe release changes this, the docs must change too."""
    form = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
    text = requests.post(f"{inference}/predictions/sentiment", data=b"I hated it", headers=form, timeout=60)
    assert text.status_code == 415 and text.json()["type"] == "form_encoded_body", text.text[:300]
    wav = encode(cough_like(2, 16000, 2), 16000)
    binary = requests.post(f"{inference}/predictions/respiratory", data=wav, headers=form, timeout=60)
    assert binary.status_code == 500 and binary.json()["type"] == "ErrorDataDecoderException", binary.text[:300]
