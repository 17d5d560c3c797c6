"""`marport sagemaker lambda-package`: the contact-flow Lambda (connect_lambda/) as a deployable zip."""

from __future__ import annotations

import zipfile
from importlib.resources import files
from pathlib import Path

HANDLER_FILE = "lambda_function.py"  # Lambda's handler setting: lambda_function.lambda_handler


def lambda_zip(out: Path) -> Path:
    """One file at the zip's root: the function needs only the runtime's own boto3."""
    source = files("marport.connect_lambda").joinpath(HANDLER_FILE).read_bytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo(HANDLER_FILE, date_time=(2026, 1, 1, 0, 0, 0))  # a fixed date: the same bytes every build
        info.external_attr = 0o644 << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, source)
    return out
