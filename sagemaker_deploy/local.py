"""Run a model.tar.gz through SageMaker's real serving stack (sagemaker-pytorch-inference) on loopback, without
Docker: unpacked into a scratch folder instead of /opt/ml/model, every port on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from marport.processes import STOP_GRACE_S, free_port, process_family, terminate
from marport.server import TS_MAIN_CLASS, raise_load_failures

READY_TIMEOUT_S = 300


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.socket_path)
        self.sock = sock


def unix_get(path: Path, url: str, timeout: float = 5) -> tuple[int, bytes]:
    """An HTTP GET over a Unix socket: (status, body)."""
    conn = UnixHTTPConnection(path, timeout)
    try:
        conn.request("GET", url)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def torchserve_of(ts_config: Path) -> psutil.Process | None:
    """TorchServe's Java front end started with this config file, or None. Not the toolkit's child:
    `torchserve --start` detaches it."""
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if TS_MAIN_CLASS in cmdline and str(ts_config) in cmdline:
            return proc
    return None


def start_toolkit(workdir: Path, base: Path, ts_config: Path, env: dict[str, str]) -> subprocess.Popen:
    """SageMaker's PyTorch toolkit as the container starts it, with `base` as its /opt/ml and `env` (the
    container's variables and TorchServe's addresses) on top; every other listener on a free loopback port."""
    full = dict(os.environ)
    full.update(
        # The toolkit runs `torchserve` from PATH, as the container has it.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        SAGEMAKER_BASE_DIR=str(base),
        # The toolkit binds 0.0.0.0; TorchServe's TS_* variables (enable_envvars_config is on in its config)
        # keep every listener on loopback or on a Unix socket here.
        TS_METRICS_ADDRESS=f"http://127.0.0.1:{free_port()}",
        TS_GRPC_INFERENCE_PORT=str(free_port()),
        TS_GRPC_MANAGEMENT_PORT=str(free_port()),
        TEMP=str(workdir / "tmp"),
        TMPDIR=str(workdir / "tmp"),
        LOG_LOCATION=str(workdir / "logs"),
        METRICS_LOCATION=str(workdir / "logs"),
    )
    full.update(env)
    log = open(workdir / "logs" / "toolkit.log", "wb")
    return subprocess.Popen([sys.executable, "-m", f"{__package__}.toolkit_entry", str(ts_config)],
                            cwd=workdir, env=full, stdout=log, stderr=subprocess.STDOUT, umask=0o077)


@dataclass
class LocalEndpoint:
    """The toolkit serving one model.tar.gz; `url` takes /ping and /invocations."""

    tarball: Path
    workdir: Path
    env: dict[str, str] | None = None  # default: what `deploy` sets, from the archive's model-config.yaml
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def ts_config(self) -> Path:
        """Where the toolkit writes TorchServe's config (the container writes /etc)."""
        return self.workdir / "sagemaker-ts.properties"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def management_socket(self) -> Path:
        """TorchServe's management API, as a Unix socket inside the private workdir: the toolkit turns
        token authorization off, so no TCP port may offer it to other users of the machine."""
        return self.workdir / "management.sock"

    def management(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """GET `path` from the management API (over its socket)."""
        return unix_get(self.management_socket, path, timeout)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # the key file, logs and the management socket are this user's alone
        base = self.workdir / "opt_ml"
        model_dir = base / "model"
        model_dir.mkdir(parents=True, exist_ok=True)
        with tarfile.open(self.tarball) as tar:
            tar.extractall(model_dir, filter="data")
        for sub in ("tmp", "logs"):
            (self.workdir / sub).mkdir(exist_ok=True)
        self.port = self.port or free_port()
        if self.env is None:
            import yaml

            from .settings import serving_env

            config = yaml.safe_load((model_dir / "model-config.yaml").read_text()) or {}
            self.env = serving_env(config, manifest=(model_dir / "MAR-INF" / "MANIFEST.json").exists())
        self.process = start_toolkit(self.workdir, base, self.ts_config, {
            **self.env,
            "SAGEMAKER_MODEL_SERVER_WORKERS": self.env.get("SAGEMAKER_MODEL_SERVER_WORKERS",
                                                           os.environ.get("SAGEMAKER_MODEL_SERVER_WORKERS", "1")),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "TS_INFERENCE_ADDRESS": self.url,
            "TS_MANAGEMENT_ADDRESS": f"unix:{self.management_socket}",
        })

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for a READY worker: the toolkit's /ping says healthy even while a
        model that fails to load is being retried, so ask the management API."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the toolkit exited ({self.process.returncode}); see {self.workdir / 'logs'}")
            raise_load_failures(self.workdir / "logs" / "model_log.log")
            try:
                status, body = self.management("/models/model")
                if status == 200 and any(w["status"] == "READY" for w in json.loads(body)[0]["workers"]):
                    return
            except (OSError, ValueError, KeyError, IndexError):
                pass
            time.sleep(1)
        raise TimeoutError(f"no READY worker after {timeout:.0f}s; see {self.workdir / 'logs'}")

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM, as SageMaker sends it, to the toolkit and to TorchServe together (the toolkit's own way of
        stopping TorchServe starts `torchserve --stop`, which load can slow to a minute); SIGKILL to whatever
        is left after `grace_s`. Returns once none of them runs, so that the next server may start."""
        if not self.process:
            return
        java = self.torchserve_process()  # not the toolkit's child: `torchserve --start` detaches it
        procs = process_family(java) + process_family(self.process.pid)
        terminate(procs, grace_s)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(1)  # reap the toolkit, our child

    def torchserve_process(self) -> psutil.Process | None:
        return torchserve_of(self.ts_config)

    def __enter__(self):
        try:
            self.start()
            self.wait_ready()
        except BaseException:  # a SIGTERM or Ctrl-C while starting stops it too
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
