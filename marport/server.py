"""Start, wait for, and stop a local TorchServe built from config.properties.

    python -m marport.server start [--models sentiment.mar,respiratory.mar]
    python -m marport.server stop

`make serve` and the integration tests use the same launcher: the tests only
override the ports (free loopback ports) and the run folder.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from marport import MODEL_STORE, REPO_ROOT

CONFIG = REPO_ROOT / "config.properties"
RUN_DIR = REPO_ROOT / "var"
STOP_TIMEOUT_S = 60
TS_MAIN_CLASS = "org.pytorch.serve.ModelServer"  # how TorchServe's Java front end shows in a process list
READY_TIMEOUT_S = 300


def free_port() -> int:
    """A port nothing listens on right now, on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_port_overrides() -> dict[str, str]:
    """config.properties overrides that put every TorchServe listener on a free loopback port."""
    return {
        "inference_address": f"http://127.0.0.1:{free_port()}",
        "management_address": f"http://127.0.0.1:{free_port()}",
        "metrics_address": f"http://127.0.0.1:{free_port()}",
        "grpc_inference_port": str(free_port()),
        "grpc_management_port": str(free_port()),
    }


def _require_free(address: str, key: str) -> None:
    """Fail fast, and say why, when another program already listens where TorchServe would."""
    from urllib.parse import urlsplit

    parts = urlsplit(address)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((parts.hostname or "127.0.0.1", parts.port or 80))
        except OSError:
            raise RuntimeError(f"{address} ({key} in config.properties) is already in use: stop whatever "
                               "listens there (`make stop` for an earlier TorchServe) or change the port") from None


def read_properties(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            props[key.strip()] = value.strip()
    return props


def write_properties(path: Path, props: dict[str, str]) -> None:
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")


def _torchserve() -> str:
    local = Path(sys.executable).with_name("torchserve")
    return str(local) if local.exists() else "torchserve"


def alive(proc: psutil.Process | int) -> bool:
    """Running, not merely exited: a zombie has exited, and whether anyone reaps it
    (PID 1 in a container may not) is not ours to wait for."""
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process_family(proc: psutil.Process | int | None) -> list[psutil.Process]:
    """A process and all its descendants; empty if it is gone."""
    if proc is None:
        return []
    try:
        proc = proc if isinstance(proc, psutil.Process) else psutil.Process(proc)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def end_processes(procs: list[psutil.Process], timeout: float) -> None:
    """Wait up to `timeout` for processes already told to stop, then kill what is left."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for proc in procs:
        if alive(proc):
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


@dataclass
class LocalTorchServe:
    """One TorchServe daemon whose state (pid file, logs, key file) lives in run_dir."""

    run_dir: Path = RUN_DIR
    overrides: dict[str, str] = field(default_factory=dict)
    model_store: Path = MODEL_STORE
    config: Path = CONFIG

    @functools.cached_property
    def props(self) -> dict[str, str]:
        """config.properties with this run's overrides; read once."""
        props = read_properties(self.config)
        props.update(self.overrides)
        props["model_store"] = str(self.model_store.resolve())
        return props

    @property
    def inference_url(self) -> str:
        return self.props["inference_address"]

    @property
    def management_url(self) -> str:
        return self.props["management_address"]

    @property
    def env(self) -> dict[str, str]:
        # TorchServe keeps its pid file in the temp dir and its key file and logs
        # in the working directory; pointing all at run_dir keeps runs apart.
        env = dict(os.environ)
        env.update(
            TMPDIR=str(self.run_dir / "tmp"),
            LOG_LOCATION=str(self.run_dir / "logs"),
            METRICS_LOCATION=str(self.run_dir / "logs"),
        )
        return env

    def keys(self) -> dict[str, str]:
        """The token-authorization keys TorchServe wrote at start-up."""
        path = self.run_dir / "key_file.json"
        if not path.exists():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:  # TorchServe is still writing it
            return {}
        return {kind: data[kind]["key"] for kind in ("inference", "management") if kind in data}

    def headers(self, kind: str = "inference") -> dict[str, str]:
        key = self.keys().get(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def start(self, models: list[str] | None = None) -> None:
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "key_file.json").unlink(missing_ok=True)
        props = dict(self.props)
        if models is not None:
            props["load_models"] = ",".join(models)
        for mar in props.get("load_models", "").split(","):
            if mar and mar not in ("all", "ALL") and not (self.model_store / mar.split("=")[-1]).exists():
                raise FileNotFoundError(f"{self.model_store / mar} is missing: build it first (make models)")
        for key in ("inference_address", "management_address", "metrics_address"):
            _require_free(props[key], key)
        write_properties(self.run_dir / "config.properties", props)
        cmd = [
            _torchserve(), "--start", "--ncs",
            "--ts-config", str(self.run_dir / "config.properties"),
            "--model-store", props["model_store"],
        ]
        # The Java daemon inherits these streams: pointed at the caller's, it would hold
        # a pipe (`make serve | tee`) open until TorchServe stops. Its stdout repeats
        # the rotated logs in logs/, so only stderr is kept.
        (self.run_dir / "logs").mkdir(exist_ok=True)
        errors = self.run_dir / "logs" / "stderr.log"
        with open(errors, "wb") as err:
            started = subprocess.run(cmd, cwd=self.run_dir, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err, check=False)
        if started.returncode != 0:
            raise RuntimeError(f"torchserve --start failed ({started.returncode}); see {errors} and "
                               f"{self.run_dir / 'logs' / 'ts_log.log'}: {errors.read_text(errors='replace')[-2000:]}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> list[str]:
        """Block until every registered model has a READY worker; return their names."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                listed = requests.get(f"{self.management_url}/models", headers=self.headers("management"), timeout=5)
                if listed.ok:
                    names = [m["modelName"] for m in listed.json().get("models", [])]
                    if names and all(self._model_ready(n) for n in names):
                        return names
                    last = f"models {names} not ready"
                else:
                    last = f"HTTP {listed.status_code}"
            except requests.RequestException as exc:
                last = type(exc).__name__
            time.sleep(1)
        raise TimeoutError(f"TorchServe not ready after {timeout:.0f}s ({last}); see {self.run_dir / 'logs'}")

    def _model_ready(self, name: str) -> bool:
        got = requests.get(f"{self.management_url}/models/{name}", headers=self.headers("management"), timeout=5)
        if not got.ok:
            return False
        workers = got.json()[0].get("workers", [])
        return any(w.get("status") == "READY" for w in workers)

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "tmp" / ".model_server.pid"

    @property
    def pid(self) -> int | None:
        """The Java front end's process id while it runs (TorchServe's own pid file)."""
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop TorchServe and wait until its Java process and workers are gone.

        `torchserve --stop` removes the pid file as soon as it sends SIGTERM, while
        Java is still shutting down; a server started next (the SageMaker toolkit
        looks for any running TorchServe by name) would find the dying one.
        """
        family = process_family(self.pid)
        subprocess.run([_torchserve(), "--stop"], cwd=self.run_dir, env=self.env,
                       stdout=subprocess.DEVNULL, check=False)
        end_processes(family, timeout)

    @contextlib.contextmanager
    def serving(self, models: list[str] | None = None):
        """Start, wait until every model is READY, and always stop."""
        self.start(models)
        try:
            self.wait_ready()
            yield self
        finally:
            self.stop()

    def is_running(self) -> bool:
        return self.pid_file.exists()


def curl_example(server: LocalTorchServe, names: list[str]) -> str:
    key = f"$(python3 -c \"import json;print(json.load(open('{server.run_dir / 'key_file.json'}'))['inference']['key'])\")"
    lines = [f'KEY={key}']
    if "sentiment" in names:
        lines.append(
            "curl -s -H \"Authorization: Bearer $KEY\" -H 'Content-Type: text/plain' "
            f"--data 'The staff were friendly and the room was spotless' {server.inference_url}/predictions/sentiment"
        )
    sample = next(iter(sorted((REPO_ROOT / "build" / "respiratory" / "synthetic").glob("*.wav"))), None)
    if "respiratory" in names and sample:
        lines.append(
            "curl -s -H \"Authorization: Bearer $KEY\" -H 'Content-Type: audio/wav' "
            f"--data-binary @{sample} {server.inference_url}/predictions/respiratory"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run TorchServe locally with config.properties.")
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--models", help="comma-separated .mar files (default: load_models in config.properties)")
    args = parser.parse_args(argv)
    server = LocalTorchServe()
    if args.action == "stop":
        server.stop()
        print("TorchServe stopped")
        return
    if args.action == "status":
        print("running" if server.is_running() else "stopped")
        return
    if server.is_running():
        server.stop()
    try:
        server.start(args.models.split(",") if args.models else None)
    except (RuntimeError, FileNotFoundError) as exc:
        raise SystemExit(str(exc))
    try:
        names = server.wait_ready()
    except TimeoutError as exc:
        server.stop()
        raise SystemExit(str(exc))
    print(f"TorchServe is serving {', '.join(names)} at {server.inference_url} (logs in {server.run_dir / 'logs'})")
    print("Try:\n" + curl_example(server, names))
    print("Stop with: make stop")


if __name__ == "__main__":
    main()
