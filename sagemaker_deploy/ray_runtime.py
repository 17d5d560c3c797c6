"""Ray Serve as the runtime: the tarball for SageMaker's Ray Serve DLC (the TorchServe image's successor), its
config.yaml, and a stand-in for the DLC's adapter, which proxies `POST /invocations` to Ray Serve's route `/` with
only Content-Type and Accept, and `GET /ping` to `/-/healthz` (docs/runtimes.md, "Ray Serve")."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from typing import Any

from marport.processes import free_port

RAY_SERVE_PORT = 8000  # where the DLC's Ray Serve listens
ADAPTER_IMPORT = "ray_adapter:build"  # the deployment code at the tarball's root
DEPLOYMENT = "MarportModel"
CONFIG_FILE = "config.yaml"
# SageMaker's Ray Serve DLC images (ECR repository `ray`, tags serve-ml-sagemaker-cpu / -cuda). Override with --image.
RAY_IMAGE = "763104351884.dkr.ecr.{region}.amazonaws.com/ray:serve-ml-sagemaker-{flavour}"
FORWARDED = ("content-type", "accept")  # all the DLC's adapter passes on
SCALING_TIMES = ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")  # Ray's defaults: 30, 600, 30 s


def serve_config(model_config: dict, name: str, import_path: str = ADAPTER_IMPORT, args: dict | None = None,
                 host: str = "0.0.0.0", port: int = RAY_SERVE_PORT, route_prefix: str = "/") -> dict:
    """Ray Serve's config file for one model, from its model-config.yaml (the table in docs/runtimes.md)."""
    batch = int(model_config.get("batchSize") or 1)
    low, high = int(model_config.get("minWorkers") or 1), int(model_config.get("maxWorkers") or 1)
    handler = model_config.get("handler") or {}
    ray = {k: v for k, v in (handler.get("ray") or {}).items() if str(v).lower() != "auto"}
    threads = str(handler.get("threads"))
    actor: dict[str, Any] = {"num_cpus": float(ray.get("num_cpus") or (threads if threads.isdigit() else 1))}
    if str(model_config.get("deviceType", "")).lower() == "gpu":
        per_gpu = (handler.get("devices") or {}).get("gpu", {}).get("workers_per_gpu", 1)
        actor["num_gpus"] = round(1 / max(1, int(per_gpu)), 4)
    deployment: dict[str, Any] = {"name": DEPLOYMENT, "ray_actor_options": actor,
                                  "max_ongoing_requests": int(ray.get("max_ongoing_requests") or 2 * batch)}
    if ray.get("max_replicas_per_node"):
        deployment["max_replicas_per_node"] = int(ray["max_replicas_per_node"])
    scaling = {"min_replicas": low, "max_replicas": high, **{k: float(ray[k]) for k in SCALING_TIMES if k in ray},
               "target_ongoing_requests": float(ray.get("target_ongoing_requests") or batch)}
    deployment.update({"autoscaling_config": scaling} if high > low else {"num_replicas": low})
    app = {"name": name, "route_prefix": route_prefix, "import_path": import_path, "args": args or {},
           "deployments": [deployment]}
    return {"proxy_location": "EveryNode", "applications": [app], "http_options": {
        "host": host, "port": port, "request_timeout_s": float(model_config.get("responseTimeout") or 120)}}


def image_uri(region: str, device: str) -> str:
    return RAY_IMAGE.format(region=region, flavour="cuda" if device == "gpu" else "cpu")


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
