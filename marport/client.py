"""A client for the local TorchServe or Ray Serve, `marport predict` and `marport token`: addresses and keys from the
running server's own files in var/, so a user never copies a token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import requests

from marport.content_types import FORM_TYPE, content_type_for
from marport.server import LocalTorchServe
from marport.workspace import Workspace

REQUEST_TIMEOUT_S = 120  # above the handlers' responseTimeout (60 s), so the server's own answer arrives


class NotServing(RuntimeError):
    """No TorchServe started from this workspace is running."""


def running_server(workspace: Workspace) -> LocalTorchServe:
    """The TorchServe `marport serve` started from this workspace, with its actual addresses."""
    server = LocalTorchServe.for_workspace(workspace)
    started_with = workspace.run_dir / "config.properties"
    if not server.is_running() or not started_with.exists():
        raise NotServing(f"no TorchServe is running from {workspace.root}: start one with `marport serve`")
    server.config = started_with  # its ports may differ from the template's
    return server


@dataclass(frozen=True)
class Answer:
    status: int
    body: str

    @property
    def ok(self) -> bool:
        return self.status == 200


def predict(workspace: Workspace, model: str, body: bytes, content_type: str) -> Answer:
    """One request to the model served from this workspace: by TorchServe, else by Ray Serve."""
    try:
        server = running_server(workspace)
    except NotServing:
        from marport.ray_server import LocalRay

        ray = LocalRay(workspace).state()
        if ray is None:
            raise NotServing(f"nothing is serving from {workspace.root}: start it with `marport serve`") from None
        reply = requests.post(f"{ray['url']}/predictions/{model}", data=body, headers={"Content-Type": content_type},
                              timeout=REQUEST_TIMEOUT_S)
        return Answer(reply.status_code, reply.text)
    reply = requests.post(f"{server.inference_url}/predictions/{model}", data=body,
                          headers={**server.headers("inference"), "Content-Type": content_type},
                          timeout=REQUEST_TIMEOUT_S)
    return Answer(reply.status_code, reply.text)


def request_body(text: str | None, file: Path | None, content_type: str | None) -> tuple[bytes, str]:
    """What `marport predict` sends: the text as text/plain, or a file typed by its extension. Never a form:
    TorchServe's front end splits such a body into fields (a recording fails there with its own 500)."""
    if content_type and content_type.split(";")[0].strip().lower() == FORM_TYPE:
        raise SystemExit(f"--content-type {FORM_TYPE} is not sent: TorchServe's front end parses such a body as a "
                         "form before any handler sees it (docs/serving.md); use text/plain, application/json or "
                         "the recording's own type")
    if file is not None:
        try:
            return file.read_bytes(), content_type or content_type_for(file)
        except OSError as err:
            raise SystemExit(f"cannot read {file}: {err.strerror or err}") from None
    return (text or "").encode("utf-8"), content_type or "text/plain; charset=utf-8"


def fresh_inference_key(workspace: Workspace) -> str:
    """Ask the server for a new inference key (the old one stops working): TorchServe's token API, with the "API" key
    from key_file.json, which it rewrites."""
    server = running_server(workspace)
    reply = requests.post(f"{server.management_url}/token", params={"type": "inference"},
                          headers=server.headers("API"), timeout=30)
    if not reply.ok:
        raise NotServing(f"the server refused a new key (HTTP {reply.status_code}): {reply.text.strip()}")
    return server.keys()["inference"]


def addresses(server: LocalTorchServe) -> dict[str, str]:
    """Where a running server listens, from the config it was started with."""
    return {k: server.props[k] for k in ("inference_address", "management_address", "metrics_address")
            if k in server.props}
