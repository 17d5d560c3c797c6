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
