"""Shared fixtures: built archives, tiny checkpoints, and a real TorchServe on free ports."""

from __future__ import annotations

import contextlib
import socket
import zipfile
from pathlib import Path

import pytest

from marport import MODEL_STORE
from marport.server import LocalTorchServe


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_overrides() -> dict[str, str]:
    return {
        "inference_address": f"http://127.0.0.1:{free_port()}",
        "management_address": f"http://127.0.0.1:{free_port()}",
        "metrics_address": f"http://127.0.0.1:{free_port()}",
        "grpc_inference_port": str(free_port()),
        "grpc_management_port": str(free_port()),
    }


@contextlib.contextmanager
def running_torchserve(run_dir: Path, model_store: Path, models: list[str]):
    """A real TorchServe (Java) with config.properties, on free loopback ports.

    Tests use it one module at a time, so two instances never run together.
    """
    server = LocalTorchServe(run_dir=run_dir, overrides=port_overrides(), model_store=model_store)
    server.start(models)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def built_archive(name: str) -> Path:
    mar = MODEL_STORE / f"{name}.mar"
    if not mar.exists():
        pytest.fail(f"{mar} is missing: run the tests with `make test`, which builds it")
    return mar


def extract(mar: Path, dest: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(dest)
    return dest


def worker_pids(server: LocalTorchServe, model: str) -> list[int]:
    import requests

    got = requests.get(f"{server.management_url}/models/{model}", headers=server.headers("management"), timeout=10)
    return sorted(w["pid"] for w in got.json()[0]["workers"] if w["status"] == "READY")


def logged_batches(server: LocalTorchServe) -> list[tuple[int, int]]:
    """(requests, rejected) of every batch the handlers logged."""
    import re

    log = (server.run_dir / "logs" / "model_log.log").read_text()
    return [(int(n), int(r)) for n, r in re.findall(r"batch of (\d+) requests, (\d+) rejected", log)]
