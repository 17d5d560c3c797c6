"""A `.mar` -> SageMaker `model.tar.gz`, with nothing rebuilt or re-exported.

The tarball's root is the extracted archive itself (MAR-INF/MANIFEST.json, the
handler modules, model-config.yaml, checkpoint/), so SageMaker's PyTorch container
runs our TorchServe handler exactly as local TorchServe does. `code/inference.py`
and `code/requirements.txt` serve the toolkit's own route through the same core.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

from marport import HANDLERS_DIR

MANIFEST = "MAR-INF/MANIFEST.json"
TOOLKIT_ENTRY = "inference.py"

# What SageMaker's PyTorch 2.6 / Python 3.12 image lacks. Ranges, not pins to this
# project's versions: the container's torch 2.6 and numpy stay as they are.
CONTAINER_REQUIREMENTS = """\
transformers>=4.46,<6
tokenizers>=0.20
safetensors>=0.4
soundfile>=0.12
soxr>=0.3
onnxruntime>=1.20
onnx>=1.16
"""


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def package(mar: Path, out: Path, manifest: bool = True) -> Path:
    """Write model.tar.gz for `mar`; manifest=False leaves only the toolkit route."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(mar) as archive, tarfile.open(out, "w:gz") as tar:
        names = archive.namelist()
        if MANIFEST not in names:
            raise ValueError(f"{mar} has no {MANIFEST}: not a model archive")
        for name in names:
            if name.endswith("/") or (name == MANIFEST and not manifest):
                continue
            _add(tar, name, archive.read(name))
        _add(tar, f"code/{TOOLKIT_ENTRY}", (HANDLERS_DIR / "sagemaker_adapter.py").read_bytes())
        _add(tar, "code/requirements.txt", CONTAINER_REQUIREMENTS.encode())
    return out


def read_model_config(mar: Path) -> dict:
    """The model-config.yaml packed in the archive (worker and batch settings)."""
    import yaml

    with zipfile.ZipFile(mar) as archive:
        return yaml.safe_load(archive.read("model-config.yaml")) or {}
