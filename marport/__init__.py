"""marport: TorchServe archives that run unchanged locally and on SageMaker."""

import sys
from pathlib import Path

__version__ = "0.1.0"

REPO_ROOT = Path(__file__).resolve().parent.parent
HANDLERS_DIR = REPO_ROOT / "handlers"
MODEL_STORE = REPO_ROOT / "model_store"
BUILD_DIR = REPO_ROOT / "build"


def use_handlers() -> None:
    """Make the flat handler modules importable, exactly as TorchServe sees them.

    `handlers/` is not a package: its modules are packed flat into each `.mar`
    and import each other by bare name, so tooling that reuses a model core
    (training, notebooks, benchmarks) puts that folder on the path the same way.
    """
    path = str(HANDLERS_DIR)
    if path not in sys.path:
        sys.path.insert(0, path)
