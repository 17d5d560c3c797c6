"""Files marport ships inside its package, found through importlib.resources, never relative to a checkout."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _on_disk(package: str, *parts: str) -> Path:
    """A shipped file or folder as a real path (torch-model-archiver and TorchServe read paths)."""
    path = Path(str(files(package).joinpath(*parts)))
    if not path.exists():
        raise FileNotFoundError(f"{'/'.join(parts) or package} is missing from the installed {package}; "
                                "reinstall marport")
    return path


def handlers_dir() -> Path:
    """The handler modules that are packed into archives (the repo's handlers/, installed as marport.handlers)."""
    return _on_disk("marport.handlers")


def handler_file(name: str) -> Path:
    return _on_disk("marport.handlers", name)


def model_config(model: str) -> Path:
    """A model kind's shipped model-config.yaml."""
    return _on_disk("marport.handlers", "config", f"{model}.yaml")


def server_config_template() -> Path:
    """The shipped config.properties (the repo's top-level one): loopback only, tokens on."""
    return _on_disk("marport", "templates", "config.properties")


def torchserve_metrics() -> Path:
    """TorchServe's own part of the metrics declaration (server.metrics_declaration adds the handlers')."""
    return _on_disk("marport", "templates", "torchserve_metrics.yaml")


def data_dir(*parts: str) -> Path:
    """Training data shipped with marport (marport/data/, with its attribution README)."""
    return _on_disk("marport", "data", *parts)
