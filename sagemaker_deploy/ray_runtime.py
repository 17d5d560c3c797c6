"""Ray Serve as the runtime: the tarball for SageMaker's Ray Serve DLC, its config.yaml, and Ray on loopback.

SageMaker's PyTorch TorchServe image left support on 2026-06-30; its successor is the Ray Serve DLC.
Its contract: the tarball is extracted to /opt/ml/model, whose `config.yaml` (Ray Serve's
`applications:` file) names the deployment code there, `code/requirements.txt` is installed at start,
Ray Serve listens on 8000, and a small adapter on 8080 proxies `POST /invocations` to Ray Serve's
route `/` with only Content-Type and Accept, and `GET /ping` to `/-/healthz`.

The same archive's files go in unchanged (the flat handler modules, checkpoint/, model-config.yaml),
with handlers/ray_adapter.py beside them: the same Endpoint as on TorchServe, batched by `@serve.batch`.
`RayServe` runs `serve run` on such a folder on loopback (tests, `marport serve --runtime ray`), and
`DlcAdapter` stands in for the DLC's proxy.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from marport.processes import free_port

RAY_SERVE_PORT = 8000  # where the DLC's Ray Serve listens
ADAPTER_IMPORT = "ray_adapter:build"  # the deployment code at the tarball's root
DEPLOYMENT = "MarportModel"
CONFIG_FILE = "config.yaml"
# SageMaker's Ray Serve DLC images (ECR repository `ray`, tags serve-ml-sagemaker-cpu / -cuda). Override with --image.
RAY_IMAGE = "763104351884.dkr.ecr.{region}.amazonaws.com/ray:serve-ml-sagemaker-{flavour}"
START_TIMEOUT_S = 240  # `serve run` answers in about 10 s on 2 idle cores; a cold import of torch can take more
FORWARDED = ("content-type", "accept")  # all the DLC's adapter passes on


def serve_config(model_config: dict, name: str, import_path: str = ADAPTER_IMPORT, args: dict | None = None,
                 host: str = "0.0.0.0", port: int = RAY_SERVE_PORT, route_prefix: str = "/") -> dict:
    """Ray Serve's config file for one model, from its model-config.yaml: replicas from minWorkers/maxWorkers
    (autoscaled between them when they differ), batching from batchSize (the replica reads batchSize and
    maxBatchDelay itself), a GPU share per replica for a GPU archive (workers per GPU share one)."""
    batch = int(model_config.get("batchSize") or 1)
    low, high = int(model_config.get("minWorkers") or 1), int(model_config.get("maxWorkers") or 1)
    threads = (model_config.get("handler") or {}).get("threads")
    actor: dict[str, Any] = {"num_cpus": int(threads) if str(threads).isdigit() else 1}
    if str(model_config.get("deviceType", "")).lower() == "gpu":
        per_gpu = ((model_config.get("handler") or {}).get("devices") or {}).get("gpu", {}).get("workers_per_gpu", 1)
        actor["num_gpus"] = round(1 / max(1, int(per_gpu)), 4)
    deployment: dict[str, Any] = {"name": DEPLOYMENT, "max_ongoing_requests": 2 * batch, "ray_actor_options": actor}
    if high > low:
        deployment["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": batch}
    else:
        deployment["num_replicas"] = low
    app = {"name": name, "route_prefix": route_prefix, "import_path": import_path, "args": args or {},
           "deployments": [deployment]}
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port}, "applications": [app]}


def image_uri(region: str, device: str) -> str:
    return RAY_IMAGE.format(region=region, flavour="cuda" if device == "gpu" else "cpu")


class RayServe:
    """`serve run config.yaml` in a folder, on loopback, its HTTP port moved to a free one; stops all it started."""

    def __init__(self, folder: Path, log_path: Path, config: dict | None = None):
        self.folder, self.log_path = Path(folder), Path(log_path)
        config = config or yaml.safe_load((self.folder / CONFIG_FILE).read_text())
        self.port = free_port()
        config = {**config, "http_options": {**config.get("http_options", {}), "host": "127.0.0.1", "port": self.port}}
        self.config_path = self.log_path.parent / f"ray-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "RayServe":
        serve = Path(sys.executable).with_name("serve")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            # Its own session: Ray's head processes (GCS, raylet, dashboard) start in it, and all go together.
            self.proc = subprocess.Popen([str(serve), "run", str(self.config_path)], cwd=self.folder, env=env,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve run exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/routes", timeout=2) as resp:
                    if resp.status == 200 and len(yaml.safe_load(resp.read()) or {}) > 0 and self._healthy():
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
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # serve run shuts Serve and its local Ray down on Ctrl-C
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of the session is left
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None

    def __exit__(self, *exc) -> None:
        self.stop()


class DlcAdapter:
    """A loopback stand-in for the Ray Serve DLC's adapter: POST /invocations -> Ray Serve's `/` with only
    Content-Type and Accept; GET /ping -> `/-/healthz`. What SageMaker itself talks to on 8080."""

    def __init__(self, ray_url: str):
        self.ray_url = ray_url
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self):
        ray_url = self.ray_url

        class Proxy(http.server.BaseHTTPRequestHandler):
            def _relay(self, request: urllib.request.Request) -> None:
                try:
                    with urllib.request.urlopen(request, timeout=120) as resp:
                        status, body, kind = resp.status, resp.read(), resp.headers.get("Content-Type", "")
                except urllib.error.HTTPError as err:
                    status, body, kind = err.code, err.read(), err.headers.get("Content-Type", "")
                self.send_response(status)
                self.send_header("Content-Type", kind or "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server's naming
                if self.path != "/ping":
                    return self.send_error(404)
                self._relay(urllib.request.Request(f"{ray_url}/-/healthz"))

            def do_POST(self):  # noqa: N802
                if self.path != "/invocations":
                    return self.send_error(404)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() in FORWARDED}
                self._relay(urllib.request.Request(f"{ray_url}/", data=body, headers=headers, method="POST"))

            def log_message(self, *args) -> None:
                pass

        return Proxy

    def __enter__(self) -> "DlcAdapter":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
