"""Ray Serve past one machine, on a real multi-node Ray cluster on this one (a head and two worker nodes, each its
own raylet): both models with a replica on every node, answers equal to TorchServe's, a worker node killed under
steady load and brought back, a replica process killed alone, every node behind Ray's token, the handler's
metrics labelled by replica, replicas added under load and removed after it as model-config.yaml asks."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.conftest import answers_close, built_archive
from tests.inputs import INPUTS
from tests.ray_cluster import REPLICA_HEADER, LocalCluster, SteadyLoad

pytestmark = pytest.mark.integration

MODELS = ("sentiment", "respiratory")
NODES = 3  # the head and two workers
ONE_PER_NODE = {"num_replicas": NODES, "max_replicas_per_node": 1, "ray_actor_options": {"num_cpus": 0.4}}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster"), workers=NODES - 1) as running:
        for model in MODELS:
            running.deploy(built_archive(model), model, **ONE_PER_NODE)
        for model in MODELS:
            running.wait_for_replicas(model, NODES)
        yield running


def post(cluster: LocalCluster, model: str, body: bytes, content_type: str) -> requests.Response:
    return requests.post(f"{cluster.url}/predictions/{model}", data=body, timeout=60,
                         headers={"Content-Type": content_type})


def test_both_models_have_a_replica_on_every_node_and_every_replica_answers(cluster, reference_answers):
    for model in MODELS:
        replicas = cluster.replicas(model)
        assert len(replicas) == NODES and len({r["node"] for r in replicas.values()}) == NODES, replicas
        answered: set[str] = set()
        deadline = time.monotonic() + 60  # the proxy learns of a new replica a moment after Serve reports it
        while answered != set(replicas) and time.monotonic() < deadline:
            jobs = [job for job in INPUTS[model].items() for _ in range(12)]
            with ThreadPoolExecutor(16) as pool:
                replies = list(pool.map(lambda job: (job[0], post(cluster, model, *job[1])), jobs))
            assert all(r.status_code == 200 for _, r in replies), [r.text for _, r in replies if r.status_code != 200]
            for case, reply in replies:
                assert answers_close(reply.json(), reference_answers[model, case]), (model, case, reply.text)
            answered |= {r.headers[REPLICA_HEADER] for _, r in replies}
        assert answered == set(replicas), "a replica answered nothing"


def test_a_worker_node_killed_under_load_costs_only_its_requests(cluster):
    """Steady load; a worker node dies (its raylet and every process on it); the requests it held fail with a 5xx,
    nothing hangs, the other replicas keep answering; the node comes back and so does its replica."""
    body, content_type = INPUTS["sentiment"]["text"]
    before = cluster.replicas("sentiment")
    with SteadyLoad(f"{cluster.url}/predictions/sentiment", body, content_type, clients=6) as load:
        time.sleep(5)
        killed_at = time.monotonic()
        victim = cluster.call("remove_worker")
        time.sleep(20)
    lost = {r for r, where in before.items() if where["node"] == victim}
    replies = load.replies
    failed = [r for r in replies if r.status != 200]
    after = [r for r in replies if r.sent > killed_at + 10]
    report = {"requests": len(replies), "failed": len(failed), "statuses": sorted({r.status for r in failed}),
              "bodies": sorted({r.body[:160] for r in failed}),
              "slowest_s": max(r.seconds for r in replies),
              "errors_until_s": max((r.sent + r.seconds - killed_at for r in failed), default=0.0)}
    print("node killed:", json.dumps(report))
    assert all(500 <= r.status < 600 for r in failed), [(r.status, r.body) for r in failed]
    assert report["slowest_s"] < 30, "a request outlived the proxy's request timeout"
    assert len(failed) <= 6 + 2, report  # at most what the 6 clients had in flight on it, and a retry's worth
    assert after and all(r.status == 200 for r in after), "the surviving replicas stopped answering"
    assert not lost & {r.replica for r in after}
    cluster.call("add_worker")
    back = cluster.wait_for_replicas("sentiment", NODES)
    assert len({r["node"] for r in back.values()}) == NODES


def test_a_replica_process_killed_alone_is_replaced(cluster):
    body, content_type = INPUTS["sentiment"]["text"]
    pid = next(iter(cluster.replicas("sentiment").values()))["pid"]
    with SteadyLoad(f"{cluster.url}/predictions/sentiment", body, content_type, clients=4) as load:
        time.sleep(3)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        time.sleep(10)
    failed = [r for r in load.replies if r.status != 200]
    print("replica killed:", json.dumps({"requests": len(load.replies), "failed": len(failed),
                                         "statuses": sorted({r.status for r in failed})}))
    assert all(500 <= r.status < 600 for r in failed) and len(failed) <= 4 + 2
    assert all(r.status == 200 for r in load.replies if r.sent > killed_at + 5)
    cluster.wait_for_replicas("sentiment", NODES)


def test_every_node_is_locked(cluster):
    """Every listener of the cluster's processes is on loopback, and every node runs with Ray's token."""
    raylets = 0
    for proc in cluster.processes():
        try:
            listeners = [c for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
            environ, cmdline = proc.environ(), " ".join(proc.cmdline())
        except psutil.Error:
            continue
        assert all(c.laddr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1") for c in listeners), (cmdline[:200], listeners)
        if "/raylet" in cmdline.split(" ", 1)[0]:
            raylets += 1
            assert environ.get("RAY_AUTH_MODE") == "token" and environ.get("RAY_AUTH_TOKEN_PATH")
    assert raylets == NODES
    assert oct(os.stat(cluster.token_path).st_mode & 0o777) == "0o600"


def test_a_node_without_the_token_cannot_join(cluster, tmp_path):
    """A raylet with another token is never registered by the head's GCS; one with the cluster's token is (the
    control: the same way of adding a node works)."""
    from marport.ray_server import locked_ray_env

    stranger = locked_ray_env(tmp_path / "another_token")["RAY_AUTH_TOKEN_PATH"]
    assert not cluster.call("stranger_joins", stranger, 10)
    assert cluster.call("stranger_joins", str(cluster.token_path), 60)
    cluster.wait_for_replicas("sentiment", NODES)
    raylets = []
    for proc in cluster.processes():
        with contextlib.suppress(psutil.Error):  # the killed ones linger as zombies until their parent reaps them
            raylets += [proc] if "/raylet" in (proc.cmdline() or [""])[0] else []
    assert len(raylets) == NODES, "a refused or removed node's raylet is still running"


def test_the_handlers_metrics_come_from_every_replica(cluster):
    """Each node's metrics agent exports the handler's metrics in Prometheus format (`ray_marport_texts_total`, ...),
    the replica as a label."""
    deadline, seen = time.monotonic() + 90, set()
    while time.monotonic() < deadline and len(seen) < NODES:
        with ThreadPoolExecutor(8) as pool:  # enough at once that every replica takes some
            list(pool.map(lambda _: post(cluster, "sentiment", *INPUTS["sentiment"]["text"]), range(24)))
        for node in cluster.call("nodes"):
            if not node["alive"]:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{node['metrics_port']}/metrics", timeout=10) as got:
                    text = got.read().decode()
            except OSError:  # a node just removed may be listed alive for a moment
                continue
            seen |= {line.split('replica="', 1)[1].split('"', 1)[0] for line in text.splitlines()
                     if line.startswith("ray_marport_texts_total{") and 'replica="' in line}
        time.sleep(3)
    assert len(seen) >= NODES, seen


def test_autoscaling_from_model_config_follows_the_load(cluster):
    """minWorkers/maxWorkers and handler.ray's target and delays (a model's own model-config.yaml): steady load
    beyond one replica's target adds replicas up to maxWorkers, one per node; quiet takes them back to minWorkers."""
    changes = {"minWorkers": 1, "maxWorkers": NODES, "handler": {"ray": {
        "num_cpus": 0.1, "max_replicas_per_node": 1, "target_ongoing_requests": 2,
        "upscale_delay_s": 2, "downscale_delay_s": 5, "look_back_period_s": 5}}}
    deployed = cluster.deploy(built_archive("sentiment"), "scaling", changes)
    assert deployed["autoscaling_config"]["max_replicas"] == NODES, deployed
    cluster.wait_for_replicas("scaling", 1)
    body, content_type = INPUTS["sentiment"]["text"]
    started = time.monotonic()
    with SteadyLoad(f"{cluster.url}/predictions/scaling", body, content_type, clients=8) as load:
        cluster.wait_for_replicas("scaling", NODES, timeout_s=120)
        scaled_up_s = time.monotonic() - started
        deadline = time.monotonic() + 30  # until the proxy routes to the new replicas too
        while len({r.replica for r in load.replies}) < NODES and time.monotonic() < deadline:
            time.sleep(0.5)
        all_answer_s = time.monotonic() - started
    quiet = time.monotonic()
    cluster.wait_for_replicas("scaling", 1, timeout_s=120)
    report = {"up_to_3_s": round(scaled_up_s, 1), "all_answering_s": round(all_answer_s, 1),
              "back_to_1_s": round(time.monotonic() - quiet, 1),
              "requests": len(load.replies), "failed": sum(r.status != 200 for r in load.replies),
              "replicas_answering": len({r.replica for r in load.replies})}
    print("autoscaling:", json.dumps(report))
    assert report["failed"] == 0 and report["replicas_answering"] == NODES, report
