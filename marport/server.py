"""Start, wait for, and stop a local TorchServe built from config.properties.

`marport serve` / `stop` / `status` and the integration tests use the same launcher:
the tests only override the ports (free loopback ports) and the run folder.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from marport.processes import STOP_GRACE_S, alive, error_of, free_port, process_family, terminate
from marport.resources import server_config_template, torchserve_metrics
from marport.workspace import Workspace

TS_MAIN_CLASS = "org.pytorch.serve.ModelServer"  # how TorchServe's Java front end shows in a process list
READY_TIMEOUT_S = 300


def build_hint() -> str:
    """How to build what could be served: each model kind of the registry, and a checkpoint of one's own."""
    from marport.registry import MODELS

    lines = [f"  {'marport build ' + name:<56}# the demo model: {kind.summary}" for name, kind in MODELS.items()]
    lines.append(f"  {'marport build MODEL --checkpoint DIR --name NAME':<56}# your own checkpoint (save_pretrained)")
    return "\n".join(lines)


class NothingToServe(FileNotFoundError):
    """The archives TorchServe would load are not in the model store."""


class LoadFailed(RuntimeError):
    """A model's worker died while loading it (TorchServe would retry it forever)."""


# A worker's stdout in model_log.log: "W-9000-NAME_0.1.0-stdout MODEL_LOG - <line>" (TorchServe), "MODEL_LOG - <line>" (toolkit).
WORKER_LINE = re.compile(r"(?:\bW-\d+-(?P<model>.+)_[^_\s]+-stdout )?MODEL_LOG - (?P<text>.*)$")
WORKER_DIED = "Backend worker process died."


def load_failures(model_log: list[str]) -> dict[str, str]:
    """Models whose worker process died, each with the error its traceback ended with."""
    died: dict[str, list[str]] = {}
    for line in model_log:
        found = WORKER_LINE.search(line)
        if found is None:
            continue
        model, text = found["model"] or "the model", found["text"]
        if text.strip() == WORKER_DIED:
            died[model] = []
        elif model in died:
            died[model].append(text)
    return {model: error_of(lines) for model, lines in died.items()}


def raise_load_failures(model_log: Path, start: int = 0) -> None:
    """Raise LoadFailed, with the model's own error, once a worker has died loading it (TorchServe would retry
    it forever); `start`: the log's size when this run began."""
    try:
        with open(model_log, "rb") as log:
            log.seek(start)
            lines = log.read().decode("utf-8", "replace").splitlines()
    except FileNotFoundError:
        return
    failed = load_failures(lines)
    if failed:
        said = "\n".join(f"TorchServe could not load {model}:\n  {error}" for model, error in failed.items())
        raise LoadFailed(f"{said}\n(the whole traceback: {model_log})")


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


def metrics_declaration() -> str:
    """TorchServe's metrics declaration: its own (templates/torchserve_metrics.yaml) and every metric the
    handlers emit (operator_metrics.METRICS, the one list of them), each with the ModelName dimension."""
    import yaml

    from marport.handlers.operator_metrics import METRICS

    declaration = yaml.safe_load(torchserve_metrics().read_text())
    for name, (kind, unit, dimensions) in METRICS.items():
        declaration["model_metrics"].setdefault(kind, []).append(
            {"name": name, "unit": unit, "dimensions": ["ModelName", *dimensions]})
    header = "# Generated by marport serve (marport/server.py, metrics_declaration); do not edit.\n"
    return header + yaml.safe_dump(declaration, sort_keys=False)


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
    _log_start: int = field(default=0, init=False, repr=False)  # model_log.log's size when this run started

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
        props["metrics_config"] = str(self._metrics_config(props.get("metrics_config")))
        return props

    def _metrics_config(self, name: str | None) -> Path:
        """The metrics declaration the server starts with: the one config.properties names (absolute, or
        relative to that file's folder, where TorchServe itself would not look), else the generated one of
        TorchServe's own and every handler metric, which start() writes into the run folder."""
        if not name:
            return self.run_dir / "metrics.yaml"
        path = Path(name) if Path(name).is_absolute() else self.config.parent / name
        if not path.is_file():  # TorchServe's workers would die at start, one after another, without saying why
            raise RuntimeError(f"metrics_config={name} in {self.config}: {path} does not exist; remove the line "
                               "(marport serve then declares every metric itself) or point it at a file")
        return path

    @property
    def inference_url(self) -> str:
        return self.props["inference_address"]

    @property
    def management_url(self) -> str:
        return self.props["management_address"]

    @property
    def env(self) -> dict[str, str]:
        # TorchServe keeps its pid file in the temp dir, its key file and logs in the cwd: all in run_dir.
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
        # key_file.json is written under the umask before TorchServe restricts it: 0700 folder, umask 077.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.chmod(0o700)
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "key_file.json").unlink(missing_ok=True)
        metrics = Path(self.props.get("metrics_config") or "")
        if metrics.parent == self.run_dir:
            metrics.write_text(metrics_declaration())
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
        # Not the caller's streams (Java would hold `make serve | tee` open); stdout repeats logs/, so only stderr.
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self._log_start = self.model_log.stat().st_size if self.model_log.exists() else 0
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
                raise NothingToServe(f"no model archives in {self.model_store}. Build one first:\n{build_hint()}")
            return
        missing = [m for m in wanted if not (self.model_store / m).exists()]
        if missing:
            raise NothingToServe(f"{', '.join(str(self.model_store / m) for m in missing)} missing: "
                                 f"build it first, or serve what is there with --models. To build:\n{build_hint()}")

    @property
    def model_log(self) -> Path:
        return self.run_dir / "logs" / "model_log.log"

    def _check_loads(self) -> None:
        raise_load_failures(self.model_log, self._log_start)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> list[str]:
        """Block until every registered model has a READY worker; return their names. A model whose worker
        dies while loading is reported at once (LoadFailed), not after the timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            self._check_loads()
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

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop TorchServe and its workers, as `torchserve --stop` does but without starting a Python for it: SIGTERM,
        `grace_s`, then SIGKILL; return once none of them runs."""
        terminate(process_family(self.pid), grace_s)
        self.pid_file.unlink(missing_ok=True)

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
