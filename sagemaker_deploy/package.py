"""A `.mar` -> SageMaker `model.tar.gz`, nothing rebuilt: the extracted archive at the root (so the container runs
our TorchServe handler as local TorchServe does), with `code/inference.py` and `code/requirements.txt` for the
toolkit's own route; `runtime="ray"` adds `ray_adapter.py` and Ray Serve's config.yaml instead."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

from marport.registry import MANIFEST, ModelKind, for_archive
from marport.resources import handler_file

TOOLKIT_ENTRY = "inference.py"
TOOLKIT_ADAPTER = "sagemaker_adapter.py"  # handlers/ module that becomes code/inference.py
MODEL_CONFIG = "model-config.yaml"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def container_requirements(kind: ModelKind) -> str:
    """code/requirements.txt: what SageMaker's PyTorch 2.6 / Python 3.12 image lacks for this model."""
    return "".join(f"{line}\n" for line in kind.container_requirements)


RUNTIMES = ("torchserve", "ray")
RAY_ADAPTER = "ray_adapter.py"  # handlers/ module the Ray Serve DLC's config.yaml names


def package(mar: Path, out: Path, manifest: bool = True, review_band: str | None = None,
            s3_allow: list[str] | None = None, device: str = "cpu", gpus: int = 1, runtime: str = "torchserve") -> Path:
    """Write model.tar.gz for `mar`; manifest=False leaves only the toolkit route. `review_band`, `s3_allow` and
    `device`/`gpus` are the deployment's settings, written into the packed model-config.yaml (marport.build)."""
    import yaml

    from marport.build import deployment_settings

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    kind = for_archive(mar)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as archive, tarfile.open(out, "w:gz") as tar:
        names = archive.namelist()
        for name in names:
            if name.endswith("/") or (name == MANIFEST and not manifest):
                continue
            data = archive.read(name)
            if name == MODEL_CONFIG:
                data = deployment_settings(data.decode(), review_band, s3_allow, device, gpus).encode()
                config = yaml.safe_load(data)
            _add(tar, name, data)
        if runtime == "ray":
            from .ray_runtime import CONFIG_FILE, serve_config

            _add(tar, RAY_ADAPTER, handler_file(RAY_ADAPTER).read_bytes())
            ray_config = serve_config(config, mar.stem, args={"model_name": mar.stem})
            _add(tar, CONFIG_FILE, yaml.safe_dump(ray_config, sort_keys=False).encode())
        else:
            _add(tar, f"code/{TOOLKIT_ENTRY}", handler_file(TOOLKIT_ADAPTER).read_bytes())
        _add(tar, "code/requirements.txt", container_requirements(kind).encode())
    return out


def read_model_config(mar: Path) -> dict:
    """The model-config.yaml packed in the archive (worker and batch settings)."""
    import yaml

    with zipfile.ZipFile(mar) as archive:
        return yaml.safe_load(archive.read(MODEL_CONFIG)) or {}
