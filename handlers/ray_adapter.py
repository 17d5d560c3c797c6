"""Ray Serve adapter: the archive's endpoint as a Ray Serve deployment (SageMaker's Ray Serve DLC, any Ray cluster).

A replica loads the model once from the archive's folder; `@serve.batch` gathers concurrent requests into one
Endpoint.answer call (model-config.yaml's batchSize and maxBatchDelay); the operator metrics go to Ray's metrics
API. Served by `serve run config.yaml` in the folder (`ray_adapter:build`) and by `marport serve --runtime ray`."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from typing import Any, Mapping

import torch
from ray import serve
from starlette.requests import Request as HttpRequest
from starlette.responses import Response

HERE = os.path.dirname(os.path.abspath(__file__))

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
REPLICA_HEADER = "x-marport-replica"  # which replica answered: operators and the scale-out tests read it


class RayMetrics:
    """The operator metrics (operator_metrics.METRICS) through Ray's metrics API, same names and dimensions."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self._metrics: dict[str, Any] = {}
        self._warned = False

    def _metric(self, name: str) -> tuple[Any, str]:
        """The metric and its kind: the archive's declaration (operator_metrics.METRICS), else a counter."""
        if name not in self._metrics:
            from marport_serving.operator_metrics import METRICS  # the archive's own list, whichever its version
            from ray.serve import metrics

            kind, unit, dims = METRICS.get(name, ("counter", "Count", ()))
            make = metrics.Counter if kind == "counter" else metrics.Gauge
            self._metrics[name] = make(f"marport_{name}", description=f"{name} ({unit})",
                                       tag_keys=("ModelName", *dims)), kind
        return self._metrics[name]

    def record(self, rejected: Mapping[str, int], figures: Mapping[str, float | None]) -> None:
        try:
            for error, count in rejected.items():
                self._metric("RequestsRejected")[0].inc(count, tags={"ModelName": self.model_name, "ErrorType": error})
            for name, value in figures.items():
                if value is not None:
                    (metric, kind), tags = self._metric(name), {"ModelName": self.model_name}
                    metric.inc(value, tags=tags) if kind == "counter" else metric.set(value, tags=tags)
        except Exception:  # noqa: BLE001 - metrics are for operators; they never fail a request
            if not self._warned:
                log.warning("operator metrics could not be recorded; further failures are not logged", exc_info=True)
                self._warned = True


LOOPBACK_ENV = "MARPORT_RAY_LOOPBACK"  # set by marport's local runtime (marport/ray_server.py), never in the DLC


def _replica_grpc_on_loopback() -> None:
    """Ray Serve 2.55 replicas open an inter-deployment gRPC server on every interface ("[::]:0") that no setting
    moves: where the local runtime keeps Ray on this machine, it is bound to 127.0.0.1 instead."""
    if os.environ.get(LOOPBACK_ENV) != "1":
        return
    from grpc.aio import _server

    original = _server.Server.add_insecure_port
    if getattr(original, "loopback_only", False):
        return

    def add_insecure_port(self: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        return original(self, f"127.0.0.1:{port}" if host in ("[::]", "0.0.0.0", "") else address)

    add_insecure_port.loopback_only = True  # type: ignore[attr-defined]
    _server.Server.add_insecure_port = add_insecure_port


_replica_grpc_on_loopback()  # at import: replicas import this module before Ray starts their gRPC server


def _log_like_serve(package: str) -> None:
    """The package's INFO lines (placement, the per-call batch line) where Ray Serve writes its own."""
    ours = logging.getLogger(package)
    ours.setLevel(logging.INFO)
    ours.handlers = list(logging.getLogger("ray.serve").handlers)
    ours.propagate = False


def _gpu_id() -> int | None:
    """GPU 0 of those Ray gave this replica (it sets CUDA_VISIBLE_DEVICES to them), else none."""
    import ray

    return 0 if ray.get_gpu_ids() and torch.cuda.is_available() else None


@serve.deployment
class MarportModel:
    """One replica: the archive's endpoint, answering batches of HTTP requests."""

    def __init__(self, model_dir: str = "", model_name: str = ""):
        model_dir = os.path.abspath(model_dir or HERE)
        if model_dir not in sys.path:
            sys.path.insert(0, model_dir)  # the archive's own marport_serving package, whichever copy of this runs
        from marport_serving.endpoint import Endpoint, core_of
        from marport_serving.settings import THREADS_ENV, read_config

        cpus = str((read_config(model_dir).get("handler") or {}).get("ray", {}).get("num_cpus"))
        if cpus.replace(".", "", 1).isdigit() and not os.environ.get(THREADS_ENV):
            os.environ[THREADS_ENV] = str(max(1, int(float(cpus))))  # torch's threads: the CPUs Ray reserved
        model_name = model_name or os.path.basename(model_dir)
        self.replica = serve.get_replica_context().replica_id.unique_id
        core = core_of(model_dir)
        _log_like_serve(core.__module__.split(".")[0])  # the archive's package: every module's logger below it
        self.endpoint = Endpoint(core, model_dir, None, _gpu_id(), RayMetrics(model_name))
        config = self.endpoint.config
        self.threads = torch.get_num_threads()  # what the endpoint set, on this thread (OpenMP counts per thread)
        # @serve.batch adds these setters to the method at run time (Ray's type hints do not say so).
        self.answer.set_max_batch_size(int(config.get("batchSize") or 1))  # type: ignore[attr-defined]
        self.answer.set_batch_wait_timeout_s(float(config.get("maxBatchDelay") or 0) / 1000)  # type: ignore[attr-defined]

    @serve.batch(max_batch_size=1, batch_wait_timeout_s=0.0)  # set from model-config.yaml in __init__
    async def answer(self, requests: list) -> list:
        """One Endpoint call for a batch, on the replica's loop: requests arriving meanwhile queue for the next
        (in a thread, Ray closes a batch at its timeout even while the last one runs: batches of two)."""
        if torch.get_num_threads() != self.threads:  # Ray may run user code on another thread than __init__'s
            torch.set_num_threads(self.threads)
        return self.endpoint.answer(requests, [r.headers.get(REQUEST_ID_HEADER) for r in requests])

    async def __call__(self, http: HttpRequest) -> Response:
        from marport_serving.contract import Request
        from marport_serving.endpoint import lower_headers

        headers = lower_headers(http.headers)
        headers.setdefault(REQUEST_ID_HEADER, str(uuid.uuid4()))  # Ray's proxy sets one and returns it as X-Request-Id
        request = Request(body=await http.body(), content_type=headers.get("content-type", ""),
                          params=dict(http.query_params), headers=headers)
        outcome = await self.answer(request)
        return Response(outcome.body, status_code=outcome.status, media_type="application/json",
                        headers={REPLICA_HEADER: self.replica})


def build(args: Mapping[str, Any]) -> Any:
    """Ray Serve's application builder (`import_path: ray_adapter:build`): `args` may name the extracted
    archive (`model_dir`, default: this module's folder) and the model's name for the metrics."""
    # @serve.deployment makes the class a Deployment, which has bind (the decorator's type hints do not say so).
    return MarportModel.bind(str(args.get("model_dir") or ""), str(args.get("model_name") or ""))  # type: ignore[attr-defined]


app = MarportModel.bind()  # type: ignore[attr-defined]  # `import_path: ray_adapter:app` (SM_RAYSERVE_APP), serving this folder
