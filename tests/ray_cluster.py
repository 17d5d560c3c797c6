"""A multi-node Ray cluster on this machine for the scale-out tests: a head and worker nodes, each its own raylet
(Ray's own `ray.cluster_utils.Cluster`), locked as marport's local Ray is (loopback, Ray's token on every node),
with archives deployed from the same Serve config `marport sagemaker package --runtime ray` writes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

from marport.build import extract_archive
from marport.processes import free_port
from marport.ray_server import locked_ray_env
from marport.sagemaker_deploy.ray_runtime import serve_config

REPLICA_HEADER = "x-marport-replica"
REPLY = "marport-driver: "  # marks the driver's replies
STRANGER_ENV = "MARPORT_TEST_STRANGER"  # marks the processes of a node started to be refused


class Driver:
    """Runs in its own Python (Ray reads its token settings when it is imported): the cluster, Serve on it, and the
    commands the tests send, one JSON line each way."""

    def __init__(self, workers: int, cpus: float, port: int):
        import ray
        from ray import serve
        from ray.cluster_utils import Cluster

        self.cpus = cpus
        self.cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus})
        self.workers = [self.cluster.add_node(num_cpus=cpus) for _ in range(workers)]
        ray.init(address=self.cluster.address, logging_level="WARNING", log_to_driver=False)  # stdout: replies only
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 30})

    def deploy(self, mar: str, name: str, folder: str, overrides: dict, changes: dict) -> dict:
        """The archive's deployment as its model-config.yaml (with `changes` written into it) asks, `overrides` on
        top."""
        from ray import serve

        from marport.handlers.ray_adapter import MarportModel

        extract_archive(Path(mar), Path(folder))
        path = Path(folder) / "model-config.yaml"
        model_config = yaml.safe_load(path.read_text())
        handler = {**model_config.get("handler", {}), **changes.pop("handler", {})}
        model_config = {**model_config, **changes, "handler": handler}
        path.write_text(yaml.safe_dump(model_config))  # the replica reads it too
        config = serve_config(model_config, name)
        deployment = {**config["applications"][0]["deployments"][0], **overrides}
        deployment.pop("name")
        app = MarportModel.options(**deployment).bind(folder, name)  # type: ignore[attr-defined]
        serve._run(app, _blocking=False, name=name, route_prefix=f"/predictions/{name}")  # readiness: the tests wait
        return deployment

    def replicas(self, name: str) -> dict:
        from ray.util.state import list_actors

        actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
        return {(a.name or "").rsplit("#", 1)[-1]: {"node": a.node_id, "pid": a.pid} for a in actors
                if (a.class_name or "").startswith("ServeReplica") and f":{name}#" in (a.name or "")}

    def nodes(self) -> list:
        import ray

        return [{"id": n["NodeID"], "alive": n["Alive"], "metrics_port": n.get("MetricsExportPort"),
                 "worker": any(w.node_id == n["NodeID"] for w in self.workers)} for n in ray.nodes()]

    def stranger_joins(self, token_path: str, wait_s: float) -> bool:
        """Whether a node whose raylet has `token_path` (or, with "", no token) registers within `wait_s`; every
        process it started (marked in its environment, which the head's processes never have) is killed after."""
        import psutil
        import ray

        saved = dict(os.environ)
        os.environ.update({"RAY_AUTH_TOKEN_PATH": token_path} if token_path else {"RAY_AUTH_MODE": "disabled"})
        os.environ[STRANGER_ENV] = "1"
        try:
            node = self.cluster.add_node(num_cpus=self.cpus, wait=False)
        except Exception:  # noqa: BLE001 - Ray gives up on a raylet the GCS will not register
            node = None
        finally:
            os.environ.clear()
            os.environ.update(saved)
        deadline, joined = time.monotonic() + wait_s, False
        while node and time.monotonic() < deadline and not joined:
            joined = any(n["NodeID"] == node.node_id and n["Alive"] for n in ray.nodes())
            time.sleep(0.5)
        if node:
            self.cluster.remove_node(node, allow_graceful=True)  # the GCS marks it dead at once
        for proc in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if proc.environ().get(STRANGER_ENV):
                    proc.kill()
        return joined

    def remove_worker(self) -> str:
        node = self.workers.pop(0)
        self.cluster.remove_node(node, allow_graceful=False)
        return node.node_id

    def add_worker(self) -> str:
        node = self.cluster.add_node(num_cpus=self.cpus)
        self.workers.append(node)
        return node.node_id

    def serve_forever(self, replies) -> None:
        print(REPLY + json.dumps({"ready": True}), file=replies)
        for line in sys.stdin:
            command = json.loads(line)
            if command["op"] == "stop":
                break
            try:
                result = getattr(self, command["op"])(*command.get("args", []))
                print(REPLY + json.dumps({"ok": result}), file=replies)
            except Exception as exc:  # noqa: BLE001 - the test sees the failure
                print(REPLY + json.dumps({"error": repr(exc)}), file=replies)
        from ray import serve

        serve.shutdown()
        self.cluster.shutdown()


class LocalCluster:
    """`workers` worker nodes beside the head, `cpus` CPUs each, driven from a child process of its own session;
    Serve's proxy on the head, on a free loopback port."""

    def __init__(self, tmp: Path, workers: int = 2, cpus: float = 1):
        self.tmp, self.token_path = tmp, tmp / "ray_auth_token"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One proxy on one machine: its preference for replicas on its own node would send everything to the head's
        # (on a real cluster each node's proxy prefers its own, and the load balancer spreads over the proxies).
        env = {**os.environ, **locked_ray_env(self.token_path), "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0"}
        self.log = open(tmp / "driver.log", "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.ray_cluster", str(workers), str(cpus), str(self.port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     cwd=Path(__file__).resolve().parent.parent, start_new_session=True, text=True)
        self._reply()

    def _reply(self):
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(REPLY):
                reply = json.loads(line[len(REPLY):])
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply.get("ok", reply)
        raise RuntimeError(f"the cluster's driver exited; see {self.tmp / 'driver.log'}")

    def call(self, op: str, *args):
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def __enter__(self) -> "LocalCluster":
        return self

    def deploy(self, mar: Path, name: str, changes: dict | None = None, **overrides) -> dict:
        return self.call("deploy", str(mar), name, str(self.tmp / "models" / name), overrides, changes or {})

    def replicas(self, name: str) -> dict:
        return self.call("replicas", name)

    def wait_for_replicas(self, name: str, count: int, timeout_s: float = 300) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = self.replicas(name)
            if len(found) == count and len({r["node"] for r in found.values()}) == count and self.answers(name):
                return found
            time.sleep(2)
        raise TimeoutError(f"{name}: {self.replicas(name)} after {timeout_s} s, not {count} replicas")

    def answers(self, name: str) -> bool:
        try:
            return requests.post(f"{self.url}/predictions/{name}", data=b"ok", timeout=30,
                                 headers={"Content-Type": "text/plain"}).status_code < 500
        except requests.RequestException:
            return False

    def processes(self) -> list:
        import psutil

        return [p for p in psutil.process_iter() if self._ours(p)]

    def _ours(self, proc) -> bool:
        try:
            return os.getsid(proc.pid) == self.proc.pid
        except OSError:
            return False

    def __exit__(self, *exc) -> None:
        from marport.ray_server import stop_session

        try:
            self.call("stop")
        except (RuntimeError, OSError, ValueError):
            pass
        stop_session(self.proc.pid)
        self.proc.wait(timeout=60)
        self.log.close()


@dataclass
class Reply:
    sent: float
    seconds: float
    status: int  # 0: no HTTP answer at all
    replica: str | None
    body: str


@dataclass
class SteadyLoad:
    """`clients` threads posting `body` one after another until stopped; every reply kept with when it was sent."""

    url: str
    body: bytes
    content_type: str
    clients: int = 4
    timeout_s: float = 60
    replies: list[Reply] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(self.clients)]
        self._lock = threading.Lock()

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    got = session.post(self.url, data=self.body, headers={"Content-Type": self.content_type},
                                       timeout=self.timeout_s)
                    reply = Reply(sent, time.monotonic() - sent, got.status_code, got.headers.get(REPLICA_HEADER),
                                  got.text[:500])
                except requests.RequestException as exc:
                    reply = Reply(sent, time.monotonic() - sent, 0, None, repr(exc)[:500])
                with self._lock:
                    self.replies.append(reply)

    def __enter__(self) -> "SteadyLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 5)


if __name__ == "__main__":  # python -m tests.ray_cluster WORKERS CPUS PORT: the driver LocalCluster starts
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # stdout is the replies' own; Ray's processes write to stderr
    os.dup2(2, 1)
    Driver(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])).serve_forever(replies)
