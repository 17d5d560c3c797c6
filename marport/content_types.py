"""The Content-Type a client sends for a body read from a file, by its extension.

Shared by `marport predict` (local TorchServe) and `marport sagemaker invoke`.
"""

from __future__ import annotations

from pathlib import Path

BY_SUFFIX = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".ogg": "audio/ogg",
    ".mp3": "audio/mpeg",
    ".npy": "application/x-npy",
    ".json": "application/json",
    ".txt": "text/plain",
}
OCTET_STREAM = "application/octet-stream"
# Never sent: TorchServe's front end parses such a body as a form before any handler sees it (docs/serving.md).
FORM_TYPE = "application/x-www-form-urlencoded"


def content_type_for(path: Path) -> str:
    return BY_SUFFIX.get(path.suffix.lower(), OCTET_STREAM)
