"""The local Ray runtime's plan, before any Ray starts: every model fits this one machine."""

from __future__ import annotations

import pytest

from marport.ray_server import share_cpus
from marport.sagemaker_deploy.ray_runtime import serve_config


def app(threads, replicas=1, high=None):
    config = {"batchSize": 8, "minWorkers": replicas, "maxWorkers": high or replicas, "handler": {"threads": threads}}
    return serve_config(config, "m", route_prefix="/predictions/m")["applications"][0]


@pytest.mark.parametrize("cpus, apps", [(2, [app("auto")] * 3), (2, [app(2), app(1, replicas=2)]),
                                        (4, [app("auto", 2, 4)] * 3), (1, [app(1)] * 2)])
def test_three_models_on_two_cores_reserve_no_more_than_two(cpus, apps):
    import copy

    apps = copy.deepcopy(apps)
    share_cpus(apps, cpus)
    reserved = 0.0
    for deployment in (d for a in apps for d in a["deployments"]):
        replicas = deployment.get("num_replicas") or deployment["autoscaling_config"]["min_replicas"]
        assert deployment["ray_actor_options"]["num_cpus"] > 0
        reserved += deployment["ray_actor_options"]["num_cpus"] * replicas
    assert reserved <= cpus


def test_what_fits_is_left_as_asked():
    apps = [app(1), app(1)]
    share_cpus(apps, 2)
    assert [a["deployments"][0]["ray_actor_options"]["num_cpus"] for a in apps] == [1, 1]


def test_ray_settings_come_from_model_config():
    config = {"batchSize": 16, "minWorkers": 2, "maxWorkers": 6, "responseTimeout": 60,
              "handler": {"threads": "auto", "ray": {"num_cpus": 4, "max_replicas_per_node": 1,
                                                     "target_ongoing_requests": 24, "max_ongoing_requests": "auto",
                                                     "upscale_delay_s": 5, "downscale_delay_s": "auto"}}}
    whole = serve_config(config, "m")
    (deployment,) = whole["applications"][0]["deployments"]
    assert deployment["ray_actor_options"] == {"num_cpus": 4.0} and deployment["max_replicas_per_node"] == 1
    assert deployment["autoscaling_config"] == {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 24.0,
                                                    "upscale_delay_s": 5.0}
    assert deployment["max_ongoing_requests"] == 32  # auto: two batches
    assert whole["http_options"]["request_timeout_s"] == 60.0  # nothing outlives the model's budget
    plain = serve_config({"batchSize": 8, "handler": {"threads": 2}}, "m")["applications"][0]["deployments"][0]
    assert plain["num_replicas"] == 1 and plain["ray_actor_options"] == {"num_cpus": 2.0}
    assert "max_replicas_per_node" not in plain
