"""`marport ui`: one local page to try the served models in a browser.

A standard-library server on loopback serving the page (marport/ui/) and relaying each request to what serves
the models (the workspace's TorchServe or Ray Serve, or a SageMaker endpoint); the inference key stays here. It
answers only its own `Host`, POSTs only from its own origin, and only with the secret of its launch link (then a
cookie); anything else is a 403 and nothing is forwarded (docs/serving.md, "The browser page")."""

from __future__ import annotations

import argparse
import hmac
import http.cookies
import http.server
import json
import mimetypes
import secrets
import threading
from dataclasses import dataclass
from importlib.resources import files
from typing import Callable
from urllib.parse import parse_qs, unquote, urlsplit

from marport.content_types import FORM_TYPE
from marport.workspace import Workspace

MAX_BODY_BYTES = 64 * 1024 * 1024  # the largest body either model accepts (respiratory's max_body_bytes)
STATIC = ("index.html", "app.js", "style.css")


@dataclass(frozen=True)
class Target:
    """Where the page's requests go: the models it offers and how one request is answered."""

    models: Callable[[], list[dict]]
    predict: Callable[[str, bytes, str], tuple[int, bytes]]  # (model, body, content type) -> (status, body)
    describe: str


def local_target(workspace: Workspace) -> Target:
    """The workspace's TorchServe, or its Ray Serve: whichever `marport serve` started."""
    from marport.client import NotServing, predict

    def models() -> list[dict]:
        from marport.registry import for_archive

        found = []
        for mar in workspace.archives():
            try:
                found.append({"name": mar.stem, "kind": for_archive(mar).name})
            except ValueError:
                continue
        return found

    def answer(model: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        try:
            reply = predict(workspace, model, body, content_type)
        except NotServing as exc:
            return 503, json.dumps({"code": 503, "type": "not_serving", "message": str(exc)}).encode()
        return reply.status, reply.body.encode()

    return Target(models, answer, f"the models served from {workspace.root}")


def endpoint_target(endpoint: str, kind: str, region: str | None = None) -> Target:
    """A SageMaker endpoint, through the SDK's credentials (never the browser's)."""
    from marport.sagemaker_deploy.aws import invoke

    def answer(_: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        return invoke(endpoint, body, content_type, region)

    return Target(lambda: [{"name": endpoint, "kind": kind}], answer, f"SageMaker endpoint {endpoint}")


@dataclass(frozen=True)
class Access:
    """Who the page answers: requests naming one of `hosts` (host:port) that carry `secret`."""

    hosts: frozenset[str]
    secret: str

    @property
    def cookie(self) -> str:
        return "marport_ui_" + min(self.hosts).rsplit(":", 1)[-1]  # cookies ignore ports: one name per port

    def refusal(self, method: str, headers, query: str) -> str | None:
        """Why this request is refused, or None."""
        host = (headers.get("Host") or "").lower()
        if host not in self.hosts:
            return f"Host {host or '(none)'!r} is not this page's address"
        origin = headers.get("Origin")
        if origin is not None or method == "POST":  # a browser names the origin on every POST it sends
            if not origin or urlsplit(origin.lower()).netloc not in self.hosts or not origin.startswith("http://"):
                return f"Origin {origin or '(none)'!r} is not this page's"
        if self.secret_in(headers, query):
            return None
        return "no valid token: open the link `marport ui` printed (it carries ?token=...)"

    def secret_in(self, headers, query: str) -> bool:
        given = parse_qs(query).get("token", [""])[0] or self.cookie_value(headers)
        return bool(given) and hmac.compare_digest(given.encode(), self.secret.encode())

    def cookie_value(self, headers) -> str:
        jar = http.cookies.SimpleCookie()
        try:
            jar.load(headers.get("Cookie") or "")
        except http.cookies.CookieError:
            return ""
        return jar[self.cookie].value if self.cookie in jar else ""


def not_relayed(size: int, content_type: str) -> dict | None:
    """Why a body is not passed on, as the JSON answer: too large, or a form (TorchServe would split it)."""
    if size > MAX_BODY_BYTES:
        return {"code": 413, "type": "body_too_large",
                "message": f"{size} bytes is more than the page sends ({MAX_BODY_BYTES})"}
    if content_type.split(";")[0].strip().lower() == FORM_TYPE:
        return {"code": 415, "type": "form_encoded_body",
                "message": f"the page does not relay {FORM_TYPE} bodies; send the text or recording with its own "
                           "content type"}
    return None


def static_asset(path: str) -> tuple[bytes, str] | None:
    """The page's script or style at /static/NAME, with its content type; None for any other path."""
    name = path.removeprefix("/static/")
    if not path.startswith("/static/") or name not in STATIC:
        return None
    kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return ui_file(name), f"{kind}; charset=utf-8"


def ui_file(name: str) -> bytes:
    """A file of the page, shipped in the wheel (marport/ui/)."""
    return files("marport").joinpath("ui").joinpath(name).read_bytes()


def handler_for(target: Target, access: Access) -> type:
    class Page(http.server.BaseHTTPRequestHandler):
        server_version = "marport-ui"

        def _send(self, status: int, body: bytes, content_type: str, cookie: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if cookie:  # the launch link's token, kept for the page's own requests; never readable by scripts
                self.send_header("Set-Cookie", f"{access.cookie}={access.secret}; HttpOnly; SameSite=Strict; Path=/")
            # Everything the page loads comes from here; nothing else may run or be fetched.
            self.send_header("Content-Security-Policy", "default-src 'self'; media-src 'self' blob:; img-src 'self' data:")
            self.send_header("X-Frame-Options", "DENY")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _refused(self) -> bool:
            why = access.refusal(self.command, self.headers, self.path.partition("?")[2])
            if why is not None:
                self._json(403, {"code": 403, "type": "forbidden", "message": why})
            return why is not None

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self._refused():
                return None
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                return self._send(200, ui_file("index.html"), "text/html; charset=utf-8", cookie=True)
            asset = static_asset(path)
            if asset is not None:
                return self._send(200, *asset)
            if path == "/api/models":
                return self._json(200, {"models": target.models(), "serving": target.describe})
            self._json(404, {"code": 404, "type": "not_found", "message": f"no page at {path}"})

        def do_POST(self) -> None:  # noqa: N802
            if self._refused():
                return None
            path = self.path.split("?", 1)[0]
            if not path.startswith("/api/predict/"):
                return self._json(404, {"code": 404, "type": "not_found", "message": f"no API at {path}"})
            size = int(self.headers.get("Content-Length") or 0)
            content_type = self.headers.get("Content-Type") or ""
            if (refused := not_relayed(size, content_type)) is not None:
                return self._json(refused["code"], refused)
            body = self.rfile.read(size)
            model = unquote(path[len("/api/predict/"):])
            status, answer = target.predict(model, body, content_type)
            self._send(status, answer, "application/json")

        def log_message(self, *args) -> None:  # the terminal shows the URL, not every request
            pass

    return Page


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


class UiServer:
    """The page on `host:port` (0: a free port), in a thread; a context manager that stops it.
    It answers requests for its own address that carry `secret` (a fresh one unless given)."""

    def __init__(self, target: Target, host: str = "127.0.0.1", port: int = 0, secret: str | None = None):
        self.secret = secret or secrets.token_urlsafe(32)
        self.httpd = http.server.ThreadingHTTPServer((host, port), http.server.BaseHTTPRequestHandler)
        bound = self.httpd.server_address[1]
        names = {*LOOPBACK_NAMES, host.lower()} - {"0.0.0.0", "::", ""}
        self.httpd.RequestHandlerClass = handler_for(target, Access(frozenset(f"{n}:{bound}" for n in names),
                                                                    self.secret))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        if host in ("0.0.0.0", "::"):  # every interface: this machine's own browser reaches it on loopback
            host = "127.0.0.1"
        return f"http://{host!s}:{port}/"

    @property
    def launch_url(self) -> str:
        """The link to open: the page's address with its secret."""
        return f"{self.url}?token={self.secret}"

    def __enter__(self) -> "UiServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="where the page listens (default: loopback only)")
    parser.add_argument("--port", type=int, default=8300)
    parser.add_argument("--endpoint", help="a SageMaker endpoint instead of the workspace's server")
    parser.add_argument("--kind", choices=("sentiment", "respiratory"), help="the endpoint's model (with --endpoint)")
    parser.add_argument("--region")


def run(args: argparse.Namespace, workspace: Workspace) -> None:
    if args.endpoint:
        if not args.kind:
            raise SystemExit("--endpoint needs --kind sentiment|respiratory: the page asks for text or a recording")
        target = endpoint_target(args.endpoint, args.kind, args.region)
    else:
        target = local_target(workspace)
    with UiServer(target, args.host, args.port) as server:
        print(f"the page for {target.describe}: open {server.launch_url} (Ctrl-C stops it)", flush=True)
        try:
            server.thread.join()
        except KeyboardInterrupt:
            pass
