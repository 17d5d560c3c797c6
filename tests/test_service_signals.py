"""Servers that marport commands start behave like services: SIGTERM stops everything they started,
and the local toolkit's management API is out of other users' reach."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import psutil
import pytest
import requests

from marport.processes import alive, free_port
from marport.sagemaker_deploy.local import unix_get
from marport.sagemaker_deploy.package import package
from marport.server import TS_MAIN_CLASS
from tests.conftest import REPO_ROOT, built_archive

pytestmark = pytest.mark.integration


def _wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float) -> re.Match:
    deadline, seen = time.monotonic() + timeout, []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        found = re.search(pattern, line)
        if found:
            return found
    raise AssertionError(f"no line matching {pattern!r}; saw {''.join(seen)[-2000:]}")


# A process manager's grace period is 10 s (docker stop) to 30 s (Kubernetes); the server's own grace is 5 s.
STOP_BUDGET_S = 15


def _post_quietly(url: str, i: int) -> int:
    try:
        return requests.post(url, data=f"Review {i}: the room was fine".encode(), timeout=30,
                             headers={"Content-Type": "text/plain"}).status_code
    except requests.RequestException:  # cut off by the stop: what the test is about
        return 0


def _torchserve_of(workdir: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if TS_MAIN_CLASS in cmdline and any(workdir in part for part in cmdline):
            found.append(proc)
    return found


def test_serve_local_stops_everything_on_sigterm_and_keeps_management_private(tmp_path):
    tarball = package(built_archive("sentiment"), tmp_path / "model.tar.gz")
    port = free_port()
    cli = subprocess.Popen([sys.executable, "-m", "marport", "sagemaker", "serve-local", str(tarball), "--port",
                            str(port)], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    workdir = None
    try:
        _wait_for_line(cli, r"SageMaker toolkit serving", 300)
        workdir = _wait_for_line(cli, r"logs: (.*)/logs", 10).group(1)
        ping = requests.get(f"http://127.0.0.1:{port}/ping", timeout=10)
        assert ping.status_code == 200
        java = _torchserve_of(workdir)
        assert len(java) == 1
        family = [psutil.Process(cli.pid), *psutil.Process(cli.pid).children(recursive=True), java[0],
                  *java[0].children(recursive=True)]
        assert len(family) >= 4  # the CLI, the toolkit, Java and a worker at least

        # The management API is a Unix socket in a folder only this user may enter ...
        assert stat.S_IMODE(Path(workdir).stat().st_mode) == 0o700
        status, body = unix_get(Path(workdir) / "management.sock", "/models/model")
        assert status == 200 and b"READY" in body
        # ... and no TCP listener of the server answers a keyless management call.
        ports = {c.laddr.port for p in family if alive(p) for c in p.net_connections("tcp")
                 if c.status == psutil.CONN_LISTEN}
        assert port in ports
        for listener in ports:
            for method, path in (("GET", "/models"), ("PUT", "/models/model?min_worker=2")):
                try:
                    got = requests.request(method, f"http://127.0.0.1:{listener}{path}", timeout=5)
                except requests.RequestException:
                    continue  # not HTTP (gRPC): nothing answered
                assert got.status_code >= 400, (listener, method, path, got.status_code, got.text[:200])

        # Stopped while busy: both cores burnt by other programs and requests in flight on this server.
        burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        pool = ThreadPoolExecutor(8)
        sent = [pool.submit(_post_quietly, f"http://127.0.0.1:{port}/invocations", i) for i in range(16)]
        time.sleep(2)
        asked = time.monotonic()
        cli.send_signal(signal.SIGTERM)
        said = _wait_for_line(cli, r"stopped", 90)
        assert said
        assert cli.wait(timeout=90) == 0
        took = time.monotonic() - asked
        assert took < STOP_BUDGET_S, f"stopping took {took:.1f} s under load"
        survivors = [p for p in family if alive(p)]
        assert not survivors, [p.cmdline() for p in survivors]
        wait(sent, timeout=30)
    finally:
        for burner in locals().get("burners", []):
            burner.kill()
        if cli.poll() is None:
            cli.kill()
        for proc in _torchserve_of(workdir) if workdir else []:
            proc.kill()


def test_serve_local_multi_model_stops_everything_on_sigterm():
    """The multi-model container's serve-local behaves like the single-model one: SIGTERM ends it all."""
    port = free_port()
    cli = subprocess.Popen([sys.executable, "-m", "marport", "sagemaker", "serve-local", "--multi-model", "sentiment",
                            "respiratory", "--port", str(port)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for_line(cli, r"Ctrl-C or SIGTERM stops it", 300)
        assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=10).status_code == 200
        family = [psutil.Process(cli.pid), *psutil.Process(cli.pid).children(recursive=True)]
        workdirs = set()
        for proc in family:
            try:  # the toolkit's `torchserve --start` launcher stays a zombie: it is never waited for
                workdirs |= {part for part in proc.cmdline() if "sagemaker-mme-" in part}
            except psutil.Error:
                continue
        java = [p for p in psutil.process_iter(["cmdline"])
                if TS_MAIN_CLASS in (p.info["cmdline"] or []) and any(w in " ".join(p.info["cmdline"]) for w in workdirs)]
        assert java, "TorchServe's Java front end was not found"
        everything = [*family, *java, *(c for j in java for c in j.children(recursive=True))]
        asked = time.monotonic()
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=90) == 0
        assert time.monotonic() - asked < STOP_BUDGET_S
        survivors = [p for p in everything if alive(p)]
        assert not survivors, [p.cmdline() for p in survivors]
    finally:
        if cli.poll() is None:
            cli.kill()
