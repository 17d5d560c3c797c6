"""A model's settings: model-config.yaml read once, laid over the model's defaults, resolved for its device.

Also the worker's torch threads and the call's time budget, which come from the same file.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from .contract import TRUE_WORDS
from .names import CHECKPOINT_SUBDIR, CONFIG_DIR

THREADS_ENV = "MARPORT_TORCH_THREADS"
AUTO = "auto"
# torch's device type -> its entry in handler.devices (TorchServe's deviceType words).
DEVICE_KINDS = {"cpu": "cpu", "cuda": "gpu"}
# Keys of a handler.devices entry that TorchServe's front end reads from the top level of model-config.yaml
# (`marport build --device` packs them there); a worker never applies them.
FRONTEND_KEYS = ("batchSize", "maxBatchDelay", "workers_per_gpu")
RESOLVED_ELSEWHERE = ("precision", "device", "threads")  # `auto` has a meaning of its own for these
DEFAULT_RESPONSE_TIMEOUT_S = 120  # TorchServe's own when model-config.yaml names no responseTimeout
# A handler call stops starting new work after this share of responseTimeout, so that what it has done still
# reaches the front end before the worker is declared stuck (docs/caps.md, "Time budgets").
BUDGET_SHARE = 0.85


def read_config(model_dir: str, yaml_config: Mapping[str, Any] | None = None) -> dict:
    """The whole model-config.yaml: TorchServe passes it parsed; elsewhere the archive's copy is read."""
    config = yaml_config
    path = os.path.join(model_dir, "model-config.yaml")
    if config is None and os.path.exists(path):
        import yaml

        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    return dict(config or {})


def handler_settings(config: Mapping[str, Any]) -> dict:
    """The `handler:` section of a parsed model-config.yaml."""
    return dict(config.get("handler") or {})


def shipped_settings(model: str) -> dict:
    """The `handler:` section of a model's shipped config/<model>.yaml (beside these modules everywhere)."""
    import yaml

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), CONFIG_DIR, f"{model}.yaml")
    with open(path, encoding="utf-8") as fh:
        return handler_settings(yaml.safe_load(fh) or {})


def device_kind(device: torch.device) -> str:
    """`cpu` or `gpu`: which entry of handler.devices applies to a model on `device`."""
    return DEVICE_KINDS.get(device.type, device.type)


def device_settings(settings: Mapping[str, Any], device: torch.device) -> dict:
    """Every setting left `auto` (or absent) that handler.devices.<cpu|gpu> names takes that device's value;
    a number set outside the table wins (docs/devices.md, "Device-aware defaults")."""
    table = settings.get("devices") or {}
    if not isinstance(table, Mapping):
        raise ValueError(f"handler.devices must map cpu/gpu to settings, got {table!r}")
    resolved = dict(settings)
    for key, value in (table.get(device_kind(device)) or {}).items():
        if key not in FRONTEND_KEYS and str(resolved.get(key, AUTO)).strip().lower() == AUTO:
            resolved[key] = value
    left = [k for k, v in resolved.items() if k not in RESOLVED_ELSEWHERE and str(v).strip().lower() == AUTO]
    if left:
        raise ValueError(f"handler.{left[0]} is auto, but handler.devices gives no value for {device_kind(device)}")
    return resolved


def setting_flag(settings: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A yes/no setting, whether YAML parsed it as a bool or an environment gave a string."""
    value = settings.get(key, default)
    return value if isinstance(value, bool) else str(value).strip().lower() in TRUE_WORDS


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def configure_threads(settings: Mapping[str, Any]) -> int:
    """The worker's intra-op threads: `threads` (or MARPORT_TORCH_THREADS); `all`/`auto` is every usable core.
    Several workers on one host divide the cores on purpose rather than fight over them."""
    value = str(os.environ.get(THREADS_ENV) or settings.get("threads") or 1).strip().lower()
    torch.set_num_threads(max(1, usable_cores() if value in ("all", AUTO) else int(value)))
    return torch.get_num_threads()


def call_budget_s(config: Mapping[str, Any]) -> float:
    """Seconds one handler call may spend: BUDGET_SHARE of the model's responseTimeout."""
    return BUDGET_SHARE * float(config.get("responseTimeout") or DEFAULT_RESPONSE_TIMEOUT_S)


def checkpoint_dir(model_dir: str) -> str:
    """Archives keep the checkpoint in a subfolder; a bare checkpoint folder works too."""
    sub = os.path.join(model_dir, CHECKPOINT_SUBDIR)
    return sub if os.path.isdir(sub) else model_dir
