"""Several archives behind one SageMaker multi-model endpoint: each single-model tarball, unchanged, under one S3
prefix as NAME.tar.gz (the TargetModel), the SDK's MultiDataModel over the same PyTorchModel, and
`TS_ENABLE_MODEL_API=true` for toolkit 2.0.25 (docs/runtimes.md)."""

from __future__ import annotations

import os
from pathlib import Path

from .aws import DeployError, DeployOptions, autoscale, endpoint_poll_s, instance_device, sagemaker_session
from .package import package
from .settings import FRAMEWORK_VERSION, PY_VERSION

MME_ENV = {"SAGEMAKER_MULTI_MODEL": "true", "TS_ENABLE_MODEL_API": "true"}


def target_name(mar: Path) -> str:
    """The TargetModel of an archive on an MME: its tarball's name under the prefix."""
    return f"{mar.stem}.tar.gz"


def deploy_multi_model(mars: list[Path], options: DeployOptions, workdir: Path = Path("build/sagemaker")) -> dict:
    """Package each archive, upload them under one prefix, and create the endpoint serving them all."""
    from sagemaker.multidatamodel import MultiDataModel
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.utils import name_from_base

    role = options.role or os.environ.get("SAGEMAKER_ROLE")
    if not role:
        raise DeployError("no execution role: pass --role arn:aws:iam::<account>:role/<name> or set SAGEMAKER_ROLE")
    if options.runtime != "torchserve" or options.asynchronous:
        raise DeployError("--multi-model deploys a real-time endpoint on SageMaker's PyTorch TorchServe image")
    session = sagemaker_session(options.region, options.bucket)
    prefix = f"s3://{session.default_bucket()}/{options.prefix}/{options.endpoint}/models/"
    for mar in mars:
        upload(session, mar, prefix, options, workdir)
    image_model = PyTorchModel(model_data=prefix, role=role, framework_version=FRAMEWORK_VERSION, py_version=PY_VERSION,
                               image_uri=options.image, env=dict(MME_ENV), sagemaker_session=session)
    model = MultiDataModel(name=name_from_base(options.endpoint), model_data_prefix=prefix, model=image_model,
                           sagemaker_session=session)
    tags = [{"Key": k, "Value": v} for k, v in options.tags.items()]
    model.deploy(initial_instance_count=options.instance_count, instance_type=options.instance_type,
                 endpoint_name=options.endpoint, tags=tags or None, wait=False)
    if options.wait:
        session.wait_for_endpoint(options.endpoint, poll=endpoint_poll_s())
    if options.autoscale:
        autoscale(session.boto_session, options.endpoint, *options.autoscale)
    return {"endpoint": options.endpoint, "model": model.name, "model_data_prefix": prefix,
            "models": [target_name(m) for m in mars]}


def upload(session, mar: Path, prefix: str, options: DeployOptions, workdir: Path) -> str:
    """One archive's tarball to `prefix`NAME.tar.gz, packed with the deployment's settings."""
    device = options.device or instance_device(options.instance_type)
    tarball = package(mar, workdir / options.endpoint / "multi-model" / target_name(mar),
                      review_band=options.review_band, s3_allow=options.s3_allow, device=device, gpus=options.gpus)
    bucket, _, key_prefix = prefix[len("s3://"):].partition("/")
    return session.upload_data(str(tarball), bucket=bucket, key_prefix=key_prefix.rstrip("/"))


def add_model(endpoint: str, mar: Path, options: DeployOptions, workdir: Path = Path("build/sagemaker")) -> str:
    """Put one more archive under a live MME's prefix: it is served from its first call on."""
    session = sagemaker_session(options.region, options.bucket)
    return upload(session, mar, model_data_prefix(session.sagemaker_client, endpoint), options, workdir)


def model_data_prefix(client, endpoint: str) -> str:
    """The S3 prefix a multi-model endpoint serves its tarballs from; refuses a single-model endpoint."""
    config = client.describe_endpoint_config(
        EndpointConfigName=client.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"])
    container = client.describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])["PrimaryContainer"]
    if container.get("Mode") != "MultiModel":
        raise DeployError(f"{endpoint} is a single-model endpoint: deploy it with --multi-model to add models")
    return container["ModelDataUrl"]
