"""Endpoint settings shared by a real deployment and the local toolkit run."""

from __future__ import annotations

# SageMaker PyTorch inference image with TorchServe 0.12.0 (toolkit 2.0.25).
FRAMEWORK_VERSION = "2.6"
PY_VERSION = "py312"
DEFAULT_INSTANCE_TYPE = "ml.m5.xlarge"

# model-config.yaml key -> the toolkit's environment variable. The toolkit 2.0.25
# silently drops SAGEMAKER_MODEL_SERVER_TIMEOUT; SAGEMAKER_TS_RESPONSE_TIMEOUT works.
TS_ENV = {
    "batchSize": "SAGEMAKER_TS_BATCH_SIZE",
    "maxBatchDelay": "SAGEMAKER_TS_MAX_BATCH_DELAY",
    "minWorkers": "SAGEMAKER_TS_MIN_WORKERS",
    "maxWorkers": "SAGEMAKER_TS_MAX_WORKERS",
    "responseTimeout": "SAGEMAKER_TS_RESPONSE_TIMEOUT",
}


def serving_env(model_config: dict, overrides: dict | None = None, manifest: bool = True) -> dict[str, str]:
    """The container environment that reproduces the archive's batching (`overrides`, model-config keys, win); the
    toolkit's own route answers one request at a time, so its batches are kept to one."""
    merged = {**{k: model_config[k] for k in TS_ENV if k in model_config}, **(overrides or {})}
    if not manifest:
        merged["batchSize"] = 1
    env = {TS_ENV[k]: str(v) for k, v in merged.items() if k in TS_ENV}
    # The toolkit route (no manifest) imports code/inference.py.
    env["SAGEMAKER_PROGRAM"] = "inference.py"
    env["SAGEMAKER_SUBMIT_DIRECTORY"] = "/opt/ml/model/code"
    return env
