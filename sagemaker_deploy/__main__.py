"""sagemaker_deploy command line.

    python -m sagemaker_deploy package model_store/sentiment.mar
    python -m sagemaker_deploy serve-local build/sagemaker/sentiment/model.tar.gz --port 8090
    python -m sagemaker_deploy deploy model_store/sentiment.mar --endpoint sentiment-demo --role ARN
    python -m sagemaker_deploy invoke sentiment-demo --text "Great staff, clean room"
    python -m sagemaker_deploy delete sentiment-demo --delete-model-data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sagemaker_deploy.settings import DEFAULT_INSTANCE_TYPE


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def _package(args) -> None:
    from sagemaker_deploy.package import package

    out = args.out or Path("build/sagemaker") / args.mar.stem / "model.tar.gz"
    print(package(args.mar, out, manifest=not args.toolkit_only))


def _serve_local(args) -> None:
    import signal
    import tempfile

    from sagemaker_deploy.local import LocalEndpoint

    workdir = Path(tempfile.mkdtemp(prefix="sagemaker-local-"))
    endpoint = LocalEndpoint(args.tarball, workdir, port=args.port)
    with endpoint:
        print(f"SageMaker toolkit serving {args.tarball} at {endpoint.url} (/ping, /invocations); Ctrl-C stops it")
        print(f"logs: {workdir / 'logs'}")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


def _deploy(args) -> None:
    from sagemaker_deploy.aws import DeployOptions, deploy

    autoscale = None
    if args.autoscale_max:
        autoscale = (args.autoscale_min or args.instance_count, args.autoscale_max, args.target_invocations)
    batching = {k: int(v) for k, v in _pairs(args.ts, "--ts").items()}
    options = DeployOptions(
        endpoint=args.endpoint, role=args.role, instance_type=args.instance_type,
        instance_count=args.instance_count, bucket=args.bucket, prefix=args.prefix, region=args.region,
        batching=batching, autoscale=autoscale, tags=_pairs(args.tag, "--tag"), wait=not args.no_wait,
    )
    print(json.dumps(deploy(args.mar, options), indent=2))


def _invoke(args) -> None:
    from sagemaker_deploy.aws import content_type_for, invoke

    if args.text is not None:
        body, content_type = args.text.encode(), "text/plain"
    elif args.json is not None:
        body, content_type = args.json.encode(), "application/json"
    else:
        body, content_type = args.file.read_bytes(), content_type_for(args.file)
    status, answer = invoke(args.endpoint, body, args.content_type or content_type, args.region,
                            sample_rate=args.sample_rate)
    print(answer.decode("utf-8", errors="replace"))
    if status != 200:
        sys.exit(f"HTTP {status}")


def _delete(args) -> None:
    from sagemaker_deploy.aws import delete

    for item in delete(args.endpoint, args.region, args.delete_model_data):
        print(f"deleted {item}")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m sagemaker_deploy", description=__doc__.splitlines()[0])
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("package", help="turn a .mar into model.tar.gz")
    p.add_argument("mar", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--toolkit-only", action="store_true", help="leave out the manifest: serve via code/inference.py")
    p.set_defaults(run=_package)

    p = sub.add_parser("serve-local", help="run model.tar.gz through the SageMaker toolkit on 127.0.0.1")
    p.add_argument("tarball", type=Path)
    p.add_argument("--port", type=int, default=8090)
    p.set_defaults(run=_serve_local)

    p = sub.add_parser("deploy", help="upload and create or update an endpoint")
    p.add_argument("mar", type=Path)
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
    p.add_argument("--no-wait", action="store_true")
    p.set_defaults(run=_deploy)

    p = sub.add_parser("invoke", help="send one request to an endpoint")
    p.add_argument("endpoint")
    body = p.add_mutually_exclusive_group(required=True)
    body.add_argument("--text")
    body.add_argument("--json")
    body.add_argument("--file", type=Path, help="a recording (.wav .flac .ogg .mp3 .npy) or a body file")
    p.add_argument("--content-type")
    p.add_argument("--sample-rate", type=int, help="for .npy bodies")
    p.add_argument("--region")
    p.set_defaults(run=_invoke)

    p = sub.add_parser("delete", help="delete the endpoint, its config and models")
    p.add_argument("endpoint")
    p.add_argument("--region")
    p.add_argument("--delete-model-data", action="store_true", help="also delete model.tar.gz from S3")
    p.set_defaults(run=_delete)
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
