"""Ray Serve on this machine: `marport serve --runtime ray`, and the runner the tests and benchmarks use.

`RayServe` runs `serve run CONFIG` in its own session on a free loopback port, locked as TorchServe is (every Ray
listener on loopback, Ray's token authentication on, only the model routes open), and stops the whole session.
`LocalRay` serves each archive of the model store at `/predictions/NAME`, its state and token in var/ray/."""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import yaml

from marport.processes import alive, end_processes, free_port, process_family
from marport.workspace import Workspace

START_TIMEOUT_S = 240  # `serve run` answers in about 10 s on 2 idle cores; a cold import of torch can take more
INSTALLED_ADAPTER = "marport.handlers.ray_adapter:build"
LOOPBACK_ENV = "MARPORT_RAY_LOOPBACK"  # handlers/ray_adapter.py reads it (the archive imports nothing from marport)


class RayServe:
    """`serve run config.yaml` in a folder, on loopback, its HTTP port moved to a free one; stops all it started."""

    def __init__(self, folder: Path, log_path: Path, config: dict | None = None):
        self.folder, self.log_path = Path(folder), Path(log_path)
        config = config or yaml.safe_load((self.folder / "config.yaml").read_text())
        self.port = free_port()
        config = {**config, "http_options": {**config.get("http_options", {}), "host": "127.0.0.1", "port": self.port}}
        self.config_path = self.log_path.parent / f"ray-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.apps = len(config.get("applications") or [])
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "RayServe":
        return self.start()

    @property
    def token_path(self) -> Path:
        """Ray's authentication token for this server (RAY_AUTH_TOKEN_PATH for `ray status` and friends)."""
        return self.log_path.parent / "ray_auth_token"

    def start(self) -> "RayServe":
        # Ray's own CLI through this Python: SageMaker's toolkit installs a `serve` of its own that starts TorchServe.
        serve = [sys.executable, "-c", "from ray.serve.scripts import cli; cli()"]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # RAY_ADDRESS=local: a Ray of its own, never one an address file in /tmp/ray names (another run's, maybe dead).
        env = {**os.environ, **locked_ray_env(self.token_path), "RAY_ADDRESS": "local"}
        with open(self.log_path, "ab") as log:
            # Its own session: Ray's head processes (GCS, raylet, dashboard) start in it, and all go together.
            self.proc = subprocess.Popen([*serve, "run", str(self.config_path)], cwd=self.folder, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None, "start() first"
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/routes", timeout=2) as resp:
                    routes = json.loads(resp.read() or b"{}")
                if len(routes) >= self.apps and self._healthy():
                    return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"Ray Serve not ready in {START_TIMEOUT_S} s; see {self.log_path}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/healthz", timeout=2) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_session(self.proc.pid)  # serve run shuts Serve and its local Ray down on Ctrl-C
        self.proc.wait()
        self.proc = None

    def __exit__(self, *exc) -> None:
        self.stop()


def locked_ray_env(token_path: Path) -> dict[str, str]:
    """The environment of a local Ray that keeps to this machine and wants a credential: single-machine mode (node IP
    127.0.0.1; LOOPBACK_ENV moves the replicas' gRPC server too) and RAY_AUTH_MODE=token with the 0600 token file."""
    if not token_path.exists():
        token_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path), LOOPBACK_ENV: "1"}


SERVE_STOP_GRACE_S = 10  # Serve's own shutdown on Ctrl-C; a process manager's grace period is 10-30 s


def session_processes(pid: int) -> list[psutil.Process]:
    """`pid`, its descendants and every other process of its session (Ray's head processes start in it)."""
    try:
        sid = os.getsid(pid)
    except ProcessLookupError:
        return []
    found = {p.pid: p for p in process_family(pid)}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
            if proc.pid not in found and os.getsid(proc.pid) == sid:
                found[proc.pid] = proc
    return list(found.values())


def stop_session(pid: int, grace_s: float = SERVE_STOP_GRACE_S) -> None:
    """Ctrl-C to a `serve run` started in its own session; after `grace_s`, SIGKILL to whatever of the session
    and its descendants is left. Returns once none of them runs (a zombie has stopped running)."""
    procs = session_processes(pid)
    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    procs += [p for p in session_processes(pid) if p not in procs]  # started while it was stopping
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    end_processes(procs, timeout=10)


def share_cpus(apps: list[dict], cpus: int) -> None:
    """Scale the replicas' CPU reservations down so that every model fits this one machine together, as
    TorchServe's workers do: Ray would otherwise leave a replica waiting for a CPU that never frees."""
    def replicas(deployment: dict) -> int:
        return int(deployment.get("num_replicas") or (deployment.get("autoscaling_config") or {}).get("min_replicas") or 1)

    deployments = [d for app in apps for d in app["deployments"]]
    asked = sum(float(d["ray_actor_options"].get("num_cpus", 1)) * replicas(d) for d in deployments)
    if asked <= cpus:
        return
    for deployment in deployments:
        options = deployment["ray_actor_options"]
        options["num_cpus"] = math.floor(float(options.get("num_cpus", 1)) * cpus / asked * 1000) / 1000


class LocalRay:
    """The workspace's Ray Serve (`marport serve --runtime ray`)."""

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.dir = workspace.run_dir / "ray"
        self.state_file = self.dir / "state.json"

    def state(self) -> dict | None:
        """{pid, url, models} of the Ray Serve started here, if it is still running."""
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return None
        return state if alive(int(state["pid"])) else None

    def start(self, archives: list[Path]) -> dict:
        from marport.build import extract_archive
        from marport.sagemaker_deploy.ray_runtime import serve_config

        if not archives:
            raise SystemExit(f"nothing to serve: no archives in {self.workspace.model_store} (run `marport build`)")
        self.stop()
        models = self.dir / "models"
        shutil.rmtree(models, ignore_errors=True)
        apps, timeout = [], 0.0
        for mar in archives:
            folder = extract_archive(mar, models / mar.stem)
            config = serve_config(yaml.safe_load((folder / "model-config.yaml").read_text()), mar.stem,
                                  INSTALLED_ADAPTER, {"model_dir": str(folder), "model_name": mar.stem},
                                  route_prefix=f"/predictions/{mar.stem}")
            apps.append(config["applications"][0])
            timeout = max(timeout, config["http_options"]["request_timeout_s"])
        share_cpus(apps, os.cpu_count() or 1)
        server = RayServe(self.dir, self.dir / "serve.log", {"proxy_location": "EveryNode", "applications": apps,
                                                             "http_options": {"request_timeout_s": timeout}})
        server.start()
        state = {"pid": server.pid, "url": server.url, "models": [m.stem for m in archives],
                 "token_path": str(server.token_path)}
        self.state_file.write_text(json.dumps(state))
        server.proc = None  # detached: `marport stop` ends it
        return state

    def stop(self) -> bool:
        state = self.state()
        if state is None:
            return False
        stop_session(int(state["pid"]))
        self.state_file.unlink(missing_ok=True)
        return True
