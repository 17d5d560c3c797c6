"""Device and precision selection (handlers/placement.py), and that both runtimes hand it the worker's GPU.

The selection logic runs here without a GPU by standing in for torch.cuda's answers;
the real CUDA path was run on a lent H100 (BENCHMARKS.md).
"""

from __future__ import annotations

import logging

import pytest
import torch

from marport.build import extract_archive
from marport.handlers import placement
from tests.conftest import built_archive

ZEN4_FLAGS = "flags : fpu avx2 avx512f avx512_bf16 avx512_vnni"
OLD_FLAGS = "flags : fpu avx2 avx512f avx512_vnni"


@pytest.fixture
def gpus(monkeypatch):
    """Pretend this host has GPUs of a given compute capability."""

    def fake(count=2, capability=(9, 0), name="Fake H100"):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)

    return fake


def test_no_gpu_id_or_no_cuda_means_the_cpu(gpus):
    assert placement.select_device(None) == torch.device("cpu")  # TorchServe gave no GPU (deviceType: cpu)
    if not torch.cuda.is_available():
        assert placement.select_device(0) == torch.device("cpu")  # a GPU id on a host without CUDA
    gpus()
    assert placement.select_device(None) == torch.device("cpu")
    assert placement.select_device("") == torch.device("cpu")


def test_the_worker_gets_the_gpu_torchserve_assigned(gpus):
    gpus(count=4)
    assert placement.select_device(0) == torch.device("cuda", 0)
    assert placement.select_device("3") == torch.device("cuda", 3)  # deviceIds: [.., 3]
    assert placement.select_device(1, {"device": "cpu"}) == torch.device("cpu")  # pinned to the CPU


def test_a_gpu_id_past_the_visible_gpus_falls_back_to_the_cpu(gpus, caplog):
    gpus(count=1)
    with caplog.at_level(logging.WARNING):
        assert placement.select_device(2) == torch.device("cpu")
    assert "only 1 GPU" in caplog.text


@pytest.mark.parametrize("cpuinfo, expected", [(ZEN4_FLAGS, "bf16"), ("flags : amx_bf16 avx2", "bf16"),
                                               (OLD_FLAGS, "fp32"), ("", "fp32")])
def test_auto_on_the_cpu_follows_native_bf16(cpuinfo, expected):
    chosen = placement.resolve("auto", torch.device("cpu"), cpuinfo)
    assert chosen.precision == expected and chosen.dtype == {"bf16": torch.bfloat16, "fp32": torch.float32}[expected]
    assert "auto" in chosen.reason


@pytest.mark.parametrize("capability, expected", [((9, 0), "bf16"), ((8, 0), "bf16"), ((7, 5), "fp16"), ((7, 0), "fp16")])
def test_auto_on_a_gpu_is_bf16_where_it_exists_else_fp16(gpus, capability, expected):
    gpus(capability=capability)
    chosen = placement.resolve("auto", torch.device("cuda", 0))
    assert chosen.precision == expected and "Fake H100" in chosen.reason


def test_explicit_precisions_are_kept_and_bad_ones_refused(gpus):
    for precision in ("fp32", "bf16", "fp16", "int8"):
        assert placement.resolve(precision, torch.device("cpu")).precision == precision
    with pytest.raises(ValueError, match="one of"):
        placement.resolve("fp8", torch.device("cpu"))
    gpus()
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        placement.resolve("int8", torch.device("cuda", 0))


def test_place_logs_what_it_chose(caplog):
    with caplog.at_level(logging.INFO):
        chosen = placement.place(None, {"precision": "fp32"})
    assert chosen.precision == "fp32" and "running on cpu fp32" in caplog.text
    assert placement.place(None, {"precision": "int8"}).precision == "int8"


def test_a_setting_the_archive_leaves_out_keeps_the_shipped_value(tmp_path):
    """The models' defaults are their shipped model-config.yaml (one source): an archive whose
    handler section omits precision and caps gets the shipped ones."""
    import yaml

    from marport.handlers import respiratory, sentiment
    from marport.handlers.endpoint import load_model
    from marport.resources import model_config

    for name, core in (("sentiment", sentiment.Sentiment), ("respiratory", respiratory.Respiratory)):
        assert core.defaults == yaml.safe_load(model_config(name).read_text())["handler"]
    shipped = respiratory.Respiratory.defaults
    loaded = load_model(respiratory.Respiratory, str(_respiratory_checkpoint(tmp_path)), {"handler": {"threads": 1}})
    assert loaded.precision == placement.resolve(shipped["precision"], torch.device("cpu")).precision
    assert loaded.settings["max_duration_s"] == shipped["max_duration_s"]
    assert loaded.batch_windows == shipped["devices"]["cpu"]["batch_windows"]


def _respiratory_checkpoint(path):
    from marport.handlers import respiratory
    from marport.handlers.respiratory_net import save_checkpoint

    save_checkpoint(str(path), respiratory.RespiratoryCNN(), respiratory.AudioConfig())
    return path


class _Context:
    """The parts of TorchServe's Context the adapter reads at initialize."""

    def __init__(self, model_dir, gpu_id):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": gpu_id}
        self.model_yaml_config = {"handler": {"threads": 1, "precision": "fp32"}}


def test_torchserve_adapter_passes_the_workers_gpu_id(monkeypatch, tmp_path):
    """A worker given GPU 1 asks placement for GPU 1; the core loads where placement says."""
    from marport.handlers.sentiment_handler import SentimentHandler

    asked = []

    def spy(gpu_id, settings, default="auto"):
        asked.append((gpu_id, settings.get("precision"), default))
        return placement.Placement(torch.device("cpu"), "fp32", "test")

    from marport.handlers import endpoint

    monkeypatch.setattr(endpoint, "place", spy)
    handler = SentimentHandler()
    handler.initialize(_Context(extract_archive(built_archive("sentiment"), tmp_path), gpu_id=1))
    assert asked == [(1, "fp32", "auto")]
    assert handler.model.device == torch.device("cpu") and handler.model.precision == "fp32"


def test_sagemaker_model_fn_passes_the_toolkit_contexts_gpu_id(monkeypatch, tmp_path):
    from marport.handlers import sagemaker_adapter

    asked = []
    real = placement.place  # the same code as the archive's copy

    def spy(gpu_id, settings):
        asked.append(gpu_id)
        return real(None, settings)

    import importlib

    root = extract_archive(built_archive("respiratory"), tmp_path)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(importlib.import_module("marport_serving.endpoint"), "place", spy)  # the archive's own
    served = sagemaker_adapter.model_fn(str(root), _Context(root, gpu_id=0))
    assert asked == [0] and served.model.device == torch.device("cpu")
    served = sagemaker_adapter.model_fn(str(root))  # a toolkit that passes no context: the CPU
    assert asked == [0, None]
