"""Start, wait for, and stop a local TorchServe built from config.properties.

`marport serve` / `stop` / `status` and the integration tests use the same launcher:
the tests only override the ports (free loopback ports) and the run folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import subprocess
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from marport.processes import alive, end_processes, free_port, process_family
from marport.resources import server_config_template
from marport.workspace import Workspace

STOP_TIMEOUT_S = 60
TS_MAIN_CLASS = "org.pytorch.serve.ModelServer"  # how TorchServe's Java front end shows in a process list
READY_TIMEOUT_S = 300
BUILD_HINT = """\
  marport build sentiment                                 # the demo sentiment model (trained first: ~5 min on 2 cores)
  marport build sentiment --checkpoint DIR --name NAME    # your own checkpoint, saved with save_pretrained
  marport build respiratory                               # the demo respiratory-sound CNN"""


class NothingToServe(FileNotFoundError):
    """The archives TorchServe would load are not in the model store."""


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
                               "listens there (`marport stop` for an earlier TorchServe) or change the port") from None


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
    found = str(local) if local.exists() else shutil.which("torchserve")
    if not found:
        raise RuntimeError("TorchServe is not installed: pip install 'marport[serve]' (it needs Java 17 too)")
    return found


@dataclass
class LocalTorchServe:
    """One TorchServe daemon whose state (pid file, logs, key file) lives in run_dir."""

    run_dir: Path
    model_store: Path
    overrides: dict[str, str] = field(default_factory=dict)
    config: Path = field(default_factory=server_config_template)

    @classmethod
    def for_workspace(cls, workspace: Workspace, overrides: dict[str, str] | None = None) -> "LocalTorchServe":
        return cls(run_dir=workspace.run_dir, model_store=workspace.model_store, overrides=overrides or {},
                   config=workspace.config)

    @functools.cached_property
    def props(self) -> dict[str, str]:
        """config.properties with this run's overrides; read once."""
        props = read_properties(self.config)
        props.update(self.overrides)
        props["model_store"] = str(self.model_store.resolve())
        if props.get("metrics_config"):  # TorchServe would read it relative to var/
            props["metrics_config"] = str(self._beside_config(props["metrics_config"]))
        return props

    def _beside_config(self, name: str) -> Path:
        """A file config.properties names: absolute, beside the config, or the shipped one."""
        path = Path(name)
        if path.is_absolute():
            return path
        own = self.config.parent / path
        return own if own.exists() else server_config_template().parent / path

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
        return {kind: data[kind]["key"] for kind in ("inference", "management", "API") if kind in data}

    def headers(self, kind: str = "inference") -> dict[str, str]:
        key = self.keys().get(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def start(self, models: list[str] | None = None) -> None:
        # TorchServe writes key_file.json under the process umask before it restricts the file: the run
        # folder is this user's alone (0700) and the daemon starts with umask 077, so no moment exists
        # when another user could read the keys.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "key_file.json").unlink(missing_ok=True)
        props = dict(self.props)
        if models is not None:
            props["load_models"] = ",".join(models)
        self._check_archives(props.get("load_models", ""))
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
                                     stdout=subprocess.DEVNULL, stderr=err, check=False, umask=0o077)
        if started.returncode != 0:
            raise RuntimeError(f"torchserve --start failed ({started.returncode}); see {errors} and "
                               f"{self.run_dir / 'logs' / 'ts_log.log'}: {errors.read_text(errors='replace')[-2000:]}")

    def _check_archives(self, load_models: str) -> None:
        """Say what to build, instead of letting TorchServe start with nothing (or fail) to serve."""
        wanted = [m.split("=")[-1] for m in load_models.split(",") if m.strip()]
        if any(m.lower() == "all" for m in wanted):
            if not any(self.model_store.glob("*.mar")):
                raise NothingToServe(f"no model archives in {self.model_store}. Build one first:\n{BUILD_HINT}")
            return
        missing = [m for m in wanted if not (self.model_store / m).exists()]
        if missing:
            raise NothingToServe(f"{', '.join(str(self.model_store / m) for m in missing)} missing: "
                                 f"build it first, or serve what is there with --models. To build:\n{BUILD_HINT}")

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
        """TorchServe's pid file names a live process (a crashed server leaves its file behind)."""
        return self.pid is not None and alive(self.pid)
