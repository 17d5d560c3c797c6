"""The user's working folder (the current one, or --workdir): model_store/ (built archives, or --model-store), build/
(checkpoints, staging, tarballs, benchmark scratch), var/ (the running server's config, logs, pid, keys) and an
optional config.properties."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from marport import resources

CONFIG_NAME = "config.properties"


@dataclass(frozen=True)
class Workspace:
    root: Path
    model_store_override: Path | None = None

    @classmethod
    def at(cls, root: Path | str | None = None, model_store: Path | str | None = None) -> "Workspace":
        return cls(Path(root or os.getcwd()).resolve(), Path(model_store).resolve() if model_store else None)

    @property
    def model_store(self) -> Path:
        return self.model_store_override or self.root / "model_store"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def run_dir(self) -> Path:
        return self.root / "var"

    @property
    def config(self) -> Path:
        """The folder's own config.properties when it has one, else the shipped template."""
        own = self.root / CONFIG_NAME
        return own if own.exists() else resources.server_config_template()

    def checkpoint(self, model: str) -> Path:
        """Where `marport train MODEL` writes and `marport build MODEL` looks by default."""
        return self.build / model / "demo-checkpoint"

    def archives(self) -> list[Path]:
        return sorted(self.model_store.glob("*.mar")) if self.model_store.is_dir() else []


_current: Workspace | None = None


def current() -> Workspace:
    """The workspace the `marport` command was started for (the current folder otherwise), for code several calls deep."""
    return _current or Workspace.at()


def activate(workspace: Workspace) -> Workspace:
    global _current
    _current = workspace
    return workspace
