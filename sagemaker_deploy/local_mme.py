"""A SageMaker multi-model endpoint's container on loopback: the real toolkit in MME mode, without Docker. Each
tarball is unpacked where the platform would put it, under an opaque name, and the platform's calls (load, list,
invoke, unload) are answered on one loopback port.

Ours: `TS_ENABLE_MODEL_API=true` (toolkit 2.0.25's MME properties lack a final newline, which turns the model API
off), and TorchServe's model API on a private Unix socket behind a relay that refuses a model from outside the
models folder (docs/runtimes.md, "Both models on one multi-model endpoint")."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from marport.processes import free_port, process_family, terminate

from .local import UnixHTTPConnection, start_toolkit, torchserve_of

READY_TIMEOUT_S = 120
RELAYED_HEADERS = ("content-type", "accept", "x-amzn-sagemaker-target-model", "x-amzn-sagemaker-custom-attributes")
MME_ENV = {"SAGEMAKER_MULTI_MODEL": "true", "TS_ENABLE_MODEL_API": "true"}  # the second: toolkit 2.0.25's bug


def opaque_name(target_model: str) -> str:
    """A name like the platform's: derived from the TargetModel, meaning nothing to the handler."""
    return hashlib.sha256(target_model.encode()).hexdigest()[:32]


@dataclass
class LocalMultiModel:
    """The toolkit in MME mode serving `tarballs` ({TargetModel: model.tar.gz}) on 127.0.0.1:`port`."""

    tarballs: dict[str, Path]
    workdir: Path
    port: int = 0
    models: dict[str, Path] = field(default_factory=dict)  # TargetModel -> where it was unpacked
    process: subprocess.Popen | None = None
    relay: http.server.ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def models_dir(self) -> Path:
        return self.workdir / "opt_ml" / "models"

    @property
    def socket(self) -> Path:
        return self.workdir / "ts.sock"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o700)  # the socket, the logs and the models are this user's alone
        for sub in ("tmp", "logs"):
            (self.workdir / sub).mkdir(exist_ok=True)
        for target, tarball in self.tarballs.items():  # what the platform does before it loads a model
            folder = self.models_dir / opaque_name(target) / "model"
            folder.mkdir(parents=True)
            with tarfile.open(tarball) as tar:
                tar.extractall(folder, filter="data")
            self.models[target] = folder
        self.process = start_toolkit(self.workdir, self.workdir / "opt_ml", self.workdir / "sagemaker-ts.properties",
                                     {**MME_ENV, "TS_INFERENCE_ADDRESS": f"unix:{self.socket}",
                                      "TS_MANAGEMENT_ADDRESS": f"unix:{self.socket}"})
        self.port = self.port or free_port()
        self.relay = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), relay_for(self.socket, self.models_dir))
        threading.Thread(target=self.relay.serve_forever, daemon=True).start()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"the toolkit exited; see {self.workdir / 'logs'}")
            try:
                if forward(self.socket, "GET", "/ping", b"", {})[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(1)
        raise TimeoutError(f"the toolkit did not answer /ping in {timeout:.0f} s; see {self.workdir / 'logs'}")

    def stop(self) -> None:
        if self.relay is not None:
            self.relay.shutdown()
            self.relay.server_close()
        if self.process is not None:
            terminate(process_family(torchserve_of(self.workdir / "sagemaker-ts.properties"))
                      + process_family(self.process.pid))
            self.process.wait(5)

    def __enter__(self) -> "LocalMultiModel":
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def forward(socket_path: Path, method: str, path: str, body: bytes, headers: dict) -> tuple[int, bytes, str]:
    """One call to TorchServe over its Unix socket: (status, body, content type)."""
    conn = UnixHTTPConnection(socket_path, timeout=120)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        reply = conn.getresponse()
        return reply.status, reply.read(), reply.getheader("Content-Type") or "application/json"
    finally:
        conn.close()


def registration_refused(path: str, body: bytes, models_dir: Path) -> str | None:
    """Why a `POST /models` may not go on: a url (in the JSON body or the query) outside the models folder."""
    urls = parse_qs(urlsplit(path).query).get("url", [])
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        return "the body is not JSON"
    if isinstance(doc, dict) and "url" in doc:
        urls.append(str(doc["url"]))
    if not urls:
        return "no url"
    root = models_dir.resolve()
    for url in urls:
        try:
            where = Path(url).resolve() if url.startswith("/") else None
        except (ValueError, OSError):  # a NUL byte, a loop of links
            where = None
        if where is None or root not in where.parents:
            return f"{url!r} is not a folder under {root}"
    return None


def platform_call(method: str, parts: list[str]) -> bool:
    """The calls SageMaker's platform makes to a multi-model container (and /invocations, /ping)."""
    if parts == ["ping"]:
        return method == "GET"
    if parts == ["invocations"]:
        return method == "POST"
    if parts == ["models"]:
        return method in ("GET", "POST")
    if len(parts) == 2 and parts[0] == "models":
        return method in ("GET", "DELETE")
    return len(parts) == 3 and parts[0] == "models" and parts[2] == "invoke" and method == "POST"


def relay_for(socket_path: Path, models_dir: Path) -> type:
    """The platform's calls, passed on to TorchServe; nothing else of its management API."""

    class Relay(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path).path.strip("/").split("/")
            if not platform_call(self.command, parts):
                return self._answer(404, json.dumps({"code": 404, "type": "not_found",
                                                     "message": f"{self.command} {self.path} is not a call of "
                                                                "SageMaker's multi-model platform"}).encode())
            if self.command == "POST" and parts == ["models"]:
                why = registration_refused(self.path, body, models_dir)
                if why:
                    return self._answer(403, json.dumps({"code": 403, "type": "url_outside_models",
                                                         "message": why}).encode())
            headers = {k: v for k, v in self.headers.items() if k.lower() in RELAYED_HEADERS}
            try:
                self._answer(*forward(socket_path, self.command, self.path, body, headers))
            except OSError as err:
                self._answer(503, json.dumps({"code": 503, "type": "not_serving", "message": str(err)}).encode())

        do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _relay  # noqa: N815 - http.server naming; PUT, PATCH: 404

        def log_message(self, *args) -> None:
            pass

    return Relay
