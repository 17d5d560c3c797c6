"""Device-aware defaults: what `auto` resolves to on a CPU and on a GPU, chosen without a GPU.

The selection is plain logic over model-config.yaml's handler.devices table (handlers/placement.py)
and the archive builder's --device (marport/build.py), so all of it is checked here on the CPU;
a `cuda` torch.device can be named without CUDA being present.
"""

from __future__ import annotations

import logging

import pytest
import torch
import yaml

from marport.build import for_device
from marport.handlers import settings as placement
from marport.handlers.placement import check_batching
from marport.handlers.settings import configure_threads, usable_cores
from marport.resources import model_config
from sagemaker_deploy.aws import instance_device

CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)
TABLE = {"cpu": {"threads": "all", "batch_tokens": 2048, "min_padding_efficiency": 0.9},
         "gpu": {"threads": 1, "batch_tokens": 16384, "min_padding_efficiency": 0.0, "batchSize": 256,
                 "workers_per_gpu": 2}}


def shipped(name: str) -> dict:
    return yaml.safe_load(model_config(name).read_text())


def test_device_kind_uses_torchserves_words():
    assert placement.device_kind(CPU) == "cpu" and placement.device_kind(GPU) == "gpu"


@pytest.mark.parametrize("device, kind", [(CPU, "cpu"), (GPU, "gpu")])
def test_auto_and_absent_settings_take_the_devices_values(device, kind):
    settings = {"devices": TABLE, "batch_tokens": "auto", "threads": "AUTO"}  # min_padding_efficiency absent
    resolved = placement.device_settings(settings, device)
    for key in ("threads", "batch_tokens", "min_padding_efficiency"):
        assert resolved[key] == TABLE[kind][key]


def test_a_number_set_outside_the_table_wins():
    resolved = placement.device_settings({"devices": TABLE, "batch_tokens": 4096, "threads": 3}, GPU)
    assert resolved["batch_tokens"] == 4096 and resolved["threads"] == 3
    assert resolved["min_padding_efficiency"] == 0.0


def test_torchserves_own_keys_are_never_applied_at_load():
    resolved = placement.device_settings({"devices": TABLE}, GPU)
    assert "batchSize" not in resolved and "workers_per_gpu" not in resolved


def test_a_malformed_table_fails_the_load():
    with pytest.raises(ValueError, match="handler.devices"):
        placement.device_settings({"devices": [1, 2]}, CPU)


def test_auto_with_no_value_for_the_device_is_a_clear_load_error():
    with pytest.raises(ValueError, match="batch_tokens is auto"):
        placement.device_settings({"batch_tokens": "auto", "devices": {"gpu": {"batch_tokens": 1}}}, CPU)


@pytest.mark.parametrize("name", ["sentiment", "respiratory"])
@pytest.mark.parametrize("device", [CPU, GPU])
def test_the_shipped_configs_leave_nothing_auto_but_the_precision(name, device):
    """Every `auto` a shipped handler section holds has a value for both kinds of device."""
    resolved = placement.device_settings(shipped(name)["handler"], device)
    left = {k for k, v in resolved.items() if str(v).lower() == "auto"}
    assert left <= {"precision"}, left


def test_the_shipped_sentiment_defaults_per_device():
    handler = shipped("sentiment")["handler"]
    cpu, gpu = placement.device_settings(handler, CPU), placement.device_settings(handler, GPU)
    assert (cpu["batch_tokens"], cpu["min_padding_efficiency"]) == (2048, 0.9)  # the measured CPU values
    assert gpu["batch_tokens"] >= 8 * cpu["batch_tokens"] and gpu["min_padding_efficiency"] == 0.0
    assert placement.device_settings(handler, GPU)["threads"] == 1


def test_threads_all_is_every_usable_core():
    before = torch.get_num_threads()
    try:
        assert configure_threads({"threads": "all"}) == usable_cores()
        assert configure_threads({"threads": 1}) == 1
    finally:
        torch.set_num_threads(before)


def test_a_gpu_archive_packs_the_gpu_batching_and_workers_per_gpu():
    text = model_config("sentiment").read_text()
    config = yaml.safe_load(for_device(text, "gpu", gpus=4))
    gpu = config["handler"]["devices"]["gpu"]
    assert config["deviceType"] == "gpu"
    assert config["batchSize"] == gpu["batchSize"] and config["maxBatchDelay"] == gpu["maxBatchDelay"]
    assert config["minWorkers"] == config["maxWorkers"] == 4 * gpu["workers_per_gpu"]
    assert config["handler"] == yaml.safe_load(text)["handler"]  # the handler section is untouched
    assert "# TorchServe model configuration" in for_device(text, "gpu")  # comments kept
    assert yaml.safe_load(for_device(for_device(text, "gpu", 2), "gpu", 2)) == yaml.safe_load(for_device(text, "gpu", 2))


def test_a_cpu_archive_is_the_config_as_written():
    text = model_config("respiratory").read_text()
    assert for_device(text, "cpu") == text
    assert "deviceType" not in yaml.safe_load(text)


def test_a_respiratory_gpu_archive_keeps_its_batch_size():
    config = yaml.safe_load(for_device(model_config("respiratory").read_text(), "gpu", 1))
    assert config["batchSize"] == shipped("respiratory")["batchSize"] and config["minWorkers"] == 2


@pytest.mark.parametrize("instance, device", [("ml.g5.xlarge", "gpu"), ("ml.p4d.24xlarge", "gpu"),
                                              ("ml.m5.xlarge", "cpu"), ("ml.c7i.2xlarge", "cpu")])
def test_sagemaker_instance_types_say_which_device(instance, device):
    assert instance_device(instance) == device


def test_a_worker_on_a_gpu_with_a_cpu_archives_batch_size_says_so(caplog):
    config = shipped("sentiment")
    with caplog.at_level(logging.WARNING, logger="placement"):
        check_batching(config, GPU)
    assert "marport build --device gpu" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="placement"):
        check_batching(config, CPU)
        check_batching(yaml.safe_load(for_device(model_config("sentiment").read_text(), "gpu")), GPU)
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING, logger="placement"):
        check_batching(yaml.safe_load(for_device(model_config("sentiment").read_text(), "gpu")), CPU)
    assert "GPU archive" in caplog.text and "running on the CPU" in caplog.text


def test_marport_build_device_gpu_packs_a_gpu_archive(tmp_path):
    from marport.build import build
    from marport.workspace import Workspace
    from sagemaker_deploy.package import read_model_config

    checkpoint = Workspace.at().checkpoint("respiratory")
    mar = build("respiratory", checkpoint, export_dir=tmp_path, workspace=Workspace.at(tmp_path), device="gpu", gpus=2)
    config = read_model_config(mar)
    assert config["deviceType"] == "gpu" and config["minWorkers"] == config["maxWorkers"] == 4
