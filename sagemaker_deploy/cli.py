"""`marport sagemaker ...`: package, run locally through the real toolkit, deploy, invoke, delete (docs/runtimes.md).
ARCHIVE is a .mar path or the name of one in the model store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from marport.workspace import Workspace

from .settings import DEFAULT_INSTANCE_TYPE

S3_ALLOW_HELP = ('accept {"s3_uri": "s3://bucket/key"} requests for objects in this bucket (and key prefix); '
                 'repeatable; the serving role needs s3:GetObject there (handler.s3_allowed_buckets)')
REVIEW_BAND_HELP = ('set handler.review_band in the packed model-config.yaml: answers whose deciding score lies '
                    'in [LOW, HIGH] get "review": true ("off" turns it off)')


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def archive_path(workspace: Workspace, archive: str) -> Path:
    """A .mar named by path, or by model name in the workspace's model store."""
    path = Path(archive)
    if path.suffix == ".mar" or path.exists():
        if not path.exists():
            raise SystemExit(f"{path} does not exist")
        return path.resolve()
    stored = workspace.model_store / f"{archive}.mar"
    if not stored.exists():
        raise SystemExit(f"no {stored}: build it with `marport build` or give a .mar path")
    return stored


def tarball_path(workspace: Workspace, mar: Path) -> Path:
    return workspace.build / "sagemaker" / mar.stem / "model.tar.gz"


def multi_model_path(workspace: Workspace, mar: Path) -> Path:
    """One S3 prefix's worth of tarballs: each model's is NAME.tar.gz, the TargetModel a call names."""
    return workspace.build / "sagemaker" / "multi-model" / f"{mar.stem}.tar.gz"


def _archives(args, workspace: Workspace) -> list[Path]:
    if len(args.archive) > 1 and not args.multi_model:
        raise SystemExit("several archives are served together only on a multi-model endpoint: add --multi-model")
    return [archive_path(workspace, name) for name in args.archive]


def _package(args, workspace: Workspace) -> None:
    from .package import package

    if args.multi_model:
        if args.out or args.runtime != "torchserve":
            raise SystemExit("--multi-model writes build/sagemaker/multi-model/NAME.tar.gz for TorchServe's container")
        for mar in _archives(args, workspace):
            print(package(mar, multi_model_path(workspace, mar), review_band=args.review_band, s3_allow=args.s3_allow,
                          device=args.device or "cpu", gpus=args.gpus or 1))
        return
    (mar,) = _archives(args, workspace)
    print(package(mar, args.out or tarball_path(workspace, mar), manifest=not args.toolkit_only,
                  review_band=args.review_band, s3_allow=args.s3_allow, device=args.device or "cpu",
                  gpus=args.gpus or 1, runtime=args.runtime))


def _serve_local(args, workspace: Workspace) -> None:
    import contextlib
    import tempfile

    from .local import LocalEndpoint
    from .package import package

    if args.multi_model:
        return _serve_local_mme(args, workspace)
    if len(args.archive) > 1:
        raise SystemExit("several archives are served together only on a multi-model endpoint: add --multi-model")
    tarball = Path(args.archive[0])
    if not tarball.name.endswith(".tar.gz"):  # an archive: package it first, as deploy would
        mar = archive_path(workspace, args.archive[0])
        tarball = package(mar, tarball_path(workspace, mar))
    workdir = Path(tempfile.mkdtemp(prefix="sagemaker-local-"))
    endpoint = LocalEndpoint(tarball, workdir, port=args.port)
    with contextlib.ExitStack() as running:  # marport's main turns SIGTERM into the same unwinding as Ctrl-C
        try:
            running.enter_context(endpoint)  # a failed start stops what it started
        except (RuntimeError, TimeoutError) as exc:  # a model that cannot load, say: its own error
            raise SystemExit(str(exc)) from None
        print(f"SageMaker toolkit serving {tarball} at {endpoint.url} (/ping, /invocations); "
              "Ctrl-C or SIGTERM stops it and everything it started", flush=True)
        print(f"logs: {workdir / 'logs'}", flush=True)
        _until_stopped()
    print("stopped", flush=True)


def _until_stopped() -> None:
    """Block until Ctrl-C or SIGTERM (marport's main turns SIGTERM into the same unwinding as Ctrl-C)."""
    import signal

    try:
        signal.pause()
    except KeyboardInterrupt:
        print("stopping the toolkit, TorchServe and its workers", flush=True)


def _serve_local_mme(args, workspace: Workspace) -> None:
    """The toolkit in multi-model mode: the tarballs laid out as the platform lays them; nothing loaded yet."""
    import tempfile

    from .local_mme import LocalMultiModel
    from .package import package

    tarballs = {}
    for mar in _archives(args, workspace):
        tarball = package(mar, multi_model_path(workspace, mar))
        tarballs[tarball.name] = tarball
    endpoint = LocalMultiModel(tarballs, Path(tempfile.mkdtemp(prefix="sagemaker-mme-")), port=args.port)
    with endpoint:
        print(f"SageMaker's multi-model toolkit at {endpoint.url}; load a model as the platform does:", flush=True)
        for target, folder in endpoint.models.items():
            print(f"  curl -s -X POST {endpoint.url}/models -H 'Content-Type: application/json' "
                  f"-d '{{\"model_name\": \"{folder.parent.name}\", \"url\": \"{folder}\"}}'   # {target}")
        print(f"then POST {endpoint.url}/models/NAME/invoke; Ctrl-C or SIGTERM stops it", flush=True)
        _until_stopped()
    print("stopped", flush=True)


def _deploy(args, workspace: Workspace) -> None:
    from .aws import DeployOptions, deploy

    autoscale = None
    if args.autoscale_max:
        autoscale = (args.autoscale_min or args.instance_count, args.autoscale_max, args.target_invocations)
    batching = {k: int(v) for k, v in _pairs(args.ts, "--ts").items()}
    asynchronous = None
    if args.asynchronous:
        from .async_inference import AsyncOptions

        if not args.output:
            raise SystemExit("--async needs --output s3://bucket/prefix for the answers")
        asynchronous = AsyncOptions(output=args.output, max_concurrency=args.max_concurrency,
                                    scale_to_zero=args.scale_to_zero, max_instances=args.max_instances,
                                    success_topic=args.success_topic, error_topic=args.error_topic)
    options = DeployOptions(
        endpoint=args.endpoint, role=args.role, instance_type=args.instance_type,
        instance_count=args.instance_count, bucket=args.bucket, prefix=args.prefix, region=args.region,
        batching=batching, autoscale=autoscale, tags=_pairs(args.tag, "--tag"), wait=not args.no_wait,
        review_band=args.review_band, asynchronous=asynchronous, s3_allow=args.s3_allow or [],
        device=args.device, gpus=args.gpus or 1, runtime=args.runtime, image=args.image,
    )
    if args.multi_model:  # a new MME with these archives, or these added to a live one
        from .aws import endpoint_exists, sagemaker_session
        from .multi_model import add_model, deploy_multi_model

        mars = _archives(args, workspace)
        if endpoint_exists(sagemaker_session(args.region, args.bucket).sagemaker_client, args.endpoint):
            return print(json.dumps({"added": [add_model(args.endpoint, mar, options) for mar in mars]}, indent=2))
        return print(json.dumps(deploy_multi_model(mars, options), indent=2))
    (mar,) = _archives(args, workspace)
    print(json.dumps(deploy(mar, options), indent=2))


def _invoke(args, workspace: Workspace) -> None:
    from marport.content_types import content_type_for

    from .aws import invoke

    if args.text is not None:
        body, content_type = args.text.encode(), "text/plain"
    elif args.json is not None:
        body, content_type = args.json.encode(), "application/json"
    elif args.file is not None:
        body, content_type = args.file.read_bytes(), content_type_for(args.file)
    else:  # an S3 reference: the endpoint fetches the object itself (handler.s3_allowed_buckets)
        body, content_type = json.dumps({"s3_uri": args.s3_uri}).encode(), "application/json"
    if args.asynchronous:
        return _invoke_async(args, body, args.content_type or content_type)
    status, answer = invoke(args.endpoint, body, args.content_type or content_type, args.region,
                            sample_rate=args.sample_rate, target_model=args.target_model)
    print(answer.decode("utf-8", errors="replace"))
    if status != 200:
        sys.exit(f"HTTP {status}")


def _invoke_async(args, body: bytes, content_type: str) -> None:
    from .async_inference import describe, invoke_async
    from .aws import async_input_prefix, boto_session

    prefix = args.input or async_input_prefix(args.endpoint, args.region)
    attributes = f"sample_rate={args.sample_rate}" if args.sample_rate else None
    answer = invoke_async(boto_session(args.region), args.endpoint, body, content_type, prefix,
                          name=str(args.file or ""), wait_s=args.wait, custom_attributes=attributes)
    print(describe(answer))
    if answer.status in ("failed", "timed out"):
        sys.exit(answer.status)


def _lambda_package(args, workspace: Workspace) -> None:
    from .lambda_package import lambda_zip

    print(lambda_zip(args.out or workspace.build / "connect-lambda.zip"))


def _delete(args, workspace: Workspace) -> None:
    from .aws import delete

    for item in delete(args.endpoint, args.region, args.delete_model_data):
        print(f"deleted {item}")


def _device_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--device", choices=("cpu", "gpu"),
                        help="gpu: pack handler.devices.gpu's batchSize, maxBatchDelay and workers per GPU "
                             f"(docs/devices.md, \"Device-aware defaults\"); {default}")
    parser.add_argument("--gpus", type=int, metavar="N", help="GPUs per instance, for a GPU archive's workers (default 1)")


def _runtime_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime", choices=("torchserve", "ray"), default="torchserve",
                        help="ray: the tarball for SageMaker's Ray Serve DLC (config.yaml and ray_adapter.py at its "
                             "root; docs/runtimes.md); torchserve (default): the PyTorch TorchServe image's")


ARCHIVE_HELP = "a .mar file, or the name of an archive in the model store"


def add_commands(sub, common: list[argparse.ArgumentParser]) -> None:
    """The `marport sagemaker` subcommands; `common` carries --workdir and --model-store."""
    _package_commands(sub, common)
    _deploy_command(sub, common)
    _endpoint_commands(sub, common)


def _package_commands(sub, common: list[argparse.ArgumentParser]) -> None:
    """package, serve-local, lambda-package: what runs before (or without) AWS."""
    p = sub.add_parser("package", parents=common, help="turn an archive into model.tar.gz, unchanged",
                       description="Write model.tar.gz: the archive's files at its root (SageMaker's TorchServe "
                                   "serves them as they are), plus code/inference.py and code/requirements.txt.")
    p.add_argument("archive", nargs="+", help=ARCHIVE_HELP + " (several with --multi-model)")
    p.add_argument("--multi-model", action="store_true",
                   help="one tarball per archive for a multi-model endpoint's S3 prefix: "
                        "build/sagemaker/multi-model/NAME.tar.gz")
    p.add_argument("--out", type=Path, help="default: build/sagemaker/NAME/model.tar.gz in the workdir")
    p.add_argument("--toolkit-only", action="store_true", help="leave out the manifest: serve via code/inference.py")
    p.add_argument("--review-band", metavar="LOW,HIGH", help=REVIEW_BAND_HELP)
    p.add_argument("--s3-allow", action="append", metavar="BUCKET[/PREFIX]", help=S3_ALLOW_HELP)
    _device_arguments(p, "cpu: batching and workers as archived")
    _runtime_argument(p)
    p.set_defaults(run=_package)

    p = sub.add_parser("serve-local", parents=common,
                       help="serve model.tar.gz through SageMaker's real toolkit on 127.0.0.1 (no Docker)")
    p.add_argument("archive", nargs="+", help="a model.tar.gz, or an archive (packaged first): " + ARCHIVE_HELP)
    p.add_argument("--multi-model", action="store_true",
                   help="serve the archives as a multi-model endpoint's container (SAGEMAKER_MULTI_MODEL=true)")
    p.add_argument("--port", type=int, default=8090)
    p.set_defaults(run=_serve_local)

    p = sub.add_parser("lambda-package", parents=common,
                       help="zip the Amazon Connect contact-flow Lambda (docs/runtimes.md, \"The call-centre hook\")")
    p.add_argument("--out", type=Path, help="default: build/connect-lambda.zip in the workdir")
    p.set_defaults(run=_lambda_package)


def _deploy_command(sub, common: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("deploy", parents=common, help="package, upload, and create or update an endpoint")
    p.add_argument("archive", nargs="+", help=ARCHIVE_HELP + " (several with --multi-model)")
    p.add_argument("--multi-model", action="store_true", help="one multi-model endpoint for the archives; on a "
                   "live one, add them (each answers calls naming TargetModel NAME.tar.gz)")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--role", help="execution role ARN (default: $SAGEMAKER_ROLE)")
    p.add_argument("--region")
    p.add_argument("--bucket", help="S3 bucket (default: $SAGEMAKER_BUCKET or the SDK's default bucket)")
    p.add_argument("--prefix", default="marport")
    p.add_argument("--instance-type", default=DEFAULT_INSTANCE_TYPE)
    p.add_argument("--instance-count", type=int, default=1)
    p.add_argument("--ts", action="append", metavar="KEY=VALUE",
                   help="override batching: batchSize, maxBatchDelay, minWorkers, maxWorkers, responseTimeout")
    p.add_argument("--autoscale-min", type=int)
    p.add_argument("--autoscale-max", type=int, help="enable target-tracking autoscaling up to this many instances")
    p.add_argument("--target-invocations", type=float, default=100.0, help="invocations per instance per minute")
    p.add_argument("--tag", action="append", metavar="KEY=VALUE")
    p.add_argument("--review-band", metavar="LOW,HIGH", help=REVIEW_BAND_HELP)
    p.add_argument("--s3-allow", action="append", metavar="BUCKET[/PREFIX]", help=S3_ALLOW_HELP)
    _device_arguments(p, "default: gpu for the ml.g* and ml.p* instance types, else as archived")
    _runtime_argument(p)
    p.add_argument("--image", help="container image URI (default: the runtime's: SageMaker's PyTorch 2.6 TorchServe "
                                   "image, or its Ray Serve DLC, ray:serve-ml-sagemaker-cpu/-cuda)")
    p.add_argument("--no-wait", action="store_true")
    group = p.add_argument_group("asynchronous inference (input and answers in S3; docs/runtimes.md, \"Real-time or async\")")
    group.add_argument("--async", dest="asynchronous", action="store_true", help="create an async endpoint")
    group.add_argument("--output", metavar="S3_URI", help="s3://bucket/prefix for answers (outputs/, failures/)")
    group.add_argument("--max-concurrency", type=int, help="requests one instance works on at once")
    group.add_argument("--scale-to-zero", action="store_true",
                       help="no instance while the queue is empty; one starts when a request waits")
    group.add_argument("--max-instances", type=int, default=1, help="with --scale-to-zero: the most instances")
    group.add_argument("--success-topic", metavar="SNS_ARN")
    group.add_argument("--error-topic", metavar="SNS_ARN")
    p.set_defaults(run=_deploy)


def _endpoint_commands(sub, common: list[argparse.ArgumentParser]) -> None:
    """invoke, delete: calls to an endpoint that exists."""
    p = sub.add_parser("invoke", parents=common, help="send one request to an endpoint")
    p.add_argument("endpoint")
    body = p.add_mutually_exclusive_group(required=True)
    body.add_argument("--text")
    body.add_argument("--json")
    body.add_argument("--file", type=Path, help="a recording (.wav .flac .ogg .mp3 .npy) or a body file")
    body.add_argument("--s3-uri", help="s3://bucket/key of a recording the endpoint fetches itself")
    p.add_argument("--content-type")
    p.add_argument("--sample-rate", type=int, help="for .npy bodies")
    p.add_argument("--target-model", metavar="NAME.tar.gz", help="the model of a multi-model endpoint to ask")
    p.add_argument("--region")
    group = p.add_argument_group("asynchronous endpoints")
    group.add_argument("--async", dest="asynchronous", action="store_true",
                       help="upload the body to S3 and queue it (invoke_endpoint_async)")
    group.add_argument("--input", metavar="S3_URI", help="where to upload inputs (default: beside the endpoint's output)")
    group.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                       help="wait this long for the answer and print it (default: print where it will be)")
    p.set_defaults(run=_invoke)

    p = sub.add_parser("delete", parents=common, help="delete the endpoint, its config and models")
    p.add_argument("endpoint")
    p.add_argument("--region")
    p.add_argument("--delete-model-data", action="store_true", help="also delete model.tar.gz from S3")
    p.set_defaults(run=_delete)
