"""Ray Serve on this machine: `marport serve --runtime ray`, and the runner the tests and benchmarks use.

`RayServe` runs `serve run CONFIG` (a local Ray head and Ray Serve) in its own session on a free loopback
port, waits until every application answers, and stops the whole session. `LocalRay` is the workspace's
server: each archive in the model store extracted under var/ray/models/, one Ray Serve application per
model at `/predictions/NAME` (the same path as on TorchServe, so `marport predict` works against either),
served by the installed `marport.handlers.ray_adapter`; its state (pid, port) in var/ray/state.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from marport.processes import alive, free_port
from marport.workspace import Workspace

START_TIMEOUT_S = 240  # `serve run` answers in about 10 s on 2 idle cores; a cold import of torch can take more
INSTALLED_ADAPTER = "marport.handlers.ray_adapter:build"


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

    def start(self) -> "RayServe":
        # Ray's own CLI through this Python: a `serve` script on PATH may be another package's
        # (SageMaker's PyTorch serving toolkit installs one that starts TorchServe).
        serve = [sys.executable, "-c", "from ray.serve.scripts import cli; cli()"]
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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




def stop_session(pid: int, timeout_s: float = 60) -> None:
    """Ctrl-C to a `serve run` started in its own session, then SIGKILL to whatever of the session is left."""
    try:
        os.killpg(pid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


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
        apps = []
        for mar in archives:
            folder = extract_archive(mar, models / mar.stem)
            config = yaml.safe_load((folder / "model-config.yaml").read_text())
            app = serve_config(config, mar.stem, INSTALLED_ADAPTER, {"model_dir": str(folder), "model_name": mar.stem},
                               route_prefix=f"/predictions/{mar.stem}")["applications"][0]
            apps.append(app)
        server = RayServe(self.dir, self.dir / "serve.log", {"proxy_location": "EveryNode", "applications": apps})
        server.start()
        state = {"pid": server.pid, "url": server.url, "models": [m.stem for m in archives]}
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
