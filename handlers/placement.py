"""Where a model runs and in which number format, decided once at load and logged: the runtime's `gpu_id` for this
worker and `handler.precision` (nothing newer than PyTorch 2.6, the SageMaker container's)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from .names import PRECISIONS
from .settings import AUTO, device_kind

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs that do bf16 arithmetic natively


@dataclass(frozen=True)
class Placement:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16 | int8: what `auto` resolved to
    reason: str  # why, for the load log line

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES.get(self.precision, torch.float32)

    def describe(self) -> str:
        return f"{self.device} {self.precision} ({self.reason})"


def select_device(gpu_id: Any, settings: Mapping[str, Any] | None = None) -> torch.device:
    """cuda:<gpu_id> when the runtime gave this worker a GPU and CUDA is usable; the CPU otherwise.

    `handler.device: cpu` pins a model to the CPU on a GPU host (TorchServe's own
    `deviceType: cpu` does the same by not assigning a GPU).
    """
    wanted = str((settings or {}).get("device", "auto")).lower()
    if wanted == "cpu" or gpu_id is None or str(gpu_id) == "" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = int(gpu_id)
    if index >= torch.cuda.device_count():
        log.warning("gpu_id %s but only %d GPU(s) visible: using the CPU", gpu_id, torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device("cuda", index)


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """AVX512-BF16 or AMX: bf16 matrix products at twice fp32's rate or more."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as fh:
                cpuinfo = fh.read()
        except OSError:  # not Linux: no evidence, so no bf16
            return False
    flags = set(cpuinfo.split())
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def gpu_has_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8  # Ampere and later; older GPUs emulate bf16 slowly


def resolve(requested: Any, device: torch.device, cpuinfo: str | None = None) -> Placement:
    """`auto` becomes bf16 where the hardware does it natively, fp16 on older GPUs, fp32 elsewhere."""
    precision = str(requested or "auto").lower()
    if precision not in PRECISIONS:
        raise ValueError(f"handler.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision int8 runs on the CPU (ONNX Runtime); on a GPU use bf16 or fp16")
    if precision != "auto":
        return Placement(device, precision, "set in model-config.yaml")
    if device.type == "cuda":
        if gpu_has_bf16(device):
            return Placement(device, "bf16", f"auto: {torch.cuda.get_device_name(device)} does bf16")
        return Placement(device, "fp16", f"auto: {torch.cuda.get_device_name(device)} has no bf16")
    if cpu_has_native_bf16(cpuinfo):
        return Placement(device, "bf16", "auto: the CPU has AVX512-BF16/AMX")
    return Placement(device, "fp32", "auto: the CPU has no native bf16")


def place(gpu_id: Any, settings: Mapping[str, Any] | None) -> Placement:
    """Device and precision for a worker: `handler.precision` (auto when not set)."""
    settings = settings or {}
    placement = resolve(settings.get("precision", AUTO), select_device(gpu_id, settings))
    log.info("running on %s", placement.describe())
    return placement


def check_batching(config: Mapping[str, Any], device: torch.device) -> None:
    """Say so in the worker log when the archive's batchSize is below this device's default (handler.devices):
    TorchServe fixed it before the worker started (`marport build --device gpu` packs the GPU's)."""
    if str(config.get("deviceType", "")).lower() == "gpu" and device.type == "cpu":
        log.warning("a GPU archive (deviceType gpu, batchSize %s) is running on the CPU: its largest handler call "
                    "is sized for a GPU and may outlast responseTimeout here; serve a CPU archive "
                    "(marport build --device cpu)", config.get("batchSize"))
        return
    table = (config.get("handler") or {}).get("devices") or {}
    wanted = (table.get(device_kind(device)) or {}).get("batchSize")
    if wanted and int(config.get("batchSize") or 1) < int(wanted):
        log.warning("batchSize %s on %s, where %s is the default: build the archive for this device "
                    "(marport build --device %s)", config.get("batchSize"), device, wanted, device_kind(device))
