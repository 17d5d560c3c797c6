"""Deploy, invoke and delete a SageMaker endpoint for a marport archive: the SageMaker SDK (v2) for model and
endpoint, boto3 for invocation, autoscaling and clean-up; region, role and bucket from flags or the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# The SDK warns on every import that v2 is on its way out; v3 has no PyTorchModel.
os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")

from .async_inference import WAKE_ALARM, AsyncOptions, inference_config, scale_to_zero  # noqa: E402
from .package import package, read_model_config  # noqa: E402
from .settings import DEFAULT_INSTANCE_TYPE, FRAMEWORK_VERSION, PY_VERSION, serving_env  # noqa: E402

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
POLL_ENV = "MARPORT_SAGEMAKER_POLL_S"
DEFAULT_POLL_S = 10.0  # between endpoint status checks while deploy waits (endpoint_poll_s)


class DeployError(SystemExit):
    """A problem the user can fix; the CLI prints it without a traceback."""


def boto_session(region: str | None = None):
    import boto3

    session = boto3.Session(region_name=region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))
    if session.get_credentials() is None:
        raise DeployError(
            "no AWS credentials found: set AWS_PROFILE (see `aws configure`) or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        )
    if not session.region_name:
        raise DeployError("no AWS region: pass --region or set AWS_REGION")
    return session


def aws_ready(region: str | None = None) -> str | None:
    """None when `deploy` can run here; otherwise one line saying what to set."""
    try:
        boto_session(region)
    except DeployError as err:
        return f"AWS steps skipped: {err}"
    if not os.environ.get("SAGEMAKER_ROLE"):
        return "AWS steps skipped: set SAGEMAKER_ROLE to a SageMaker execution role ARN"
    return None


def sagemaker_session(region: str | None = None, bucket: str | None = None):
    import sagemaker

    return sagemaker.Session(boto_session=boto_session(region),
                             default_bucket=bucket or os.environ.get("SAGEMAKER_BUCKET") or None)


@dataclass
class DeployOptions:
    endpoint: str
    role: str | None = None
    instance_type: str = DEFAULT_INSTANCE_TYPE
    instance_count: int = 1
    bucket: str | None = None
    prefix: str = "marport"
    region: str | None = None
    batching: dict = field(default_factory=dict)  # model-config keys: batchSize, maxBatchDelay, ...
    autoscale: tuple[int, int, float] | None = None  # (min instances, max instances, invocations/instance/minute)
    tags: dict[str, str] = field(default_factory=dict)
    wait: bool = True
    review_band: str | None = None  # "LOW,HIGH" or "off": handler.review_band packed for this endpoint
    asynchronous: AsyncOptions | None = None  # an async endpoint (async_inference.py) instead of a real-time one
    s3_allow: list[str] = field(default_factory=list)  # buckets[/prefixes] the endpoint may read references from
    device: str | None = None  # cpu or gpu batching and workers (build.for_device); None: from the instance type
    gpus: int = 1  # GPUs per instance, for a GPU archive's worker count
    runtime: str = "torchserve"  # or "ray": SageMaker's Ray Serve DLC (ray_runtime.py)
    image: str | None = None  # the container image; default: the runtime's (PyTorch 2.6 TorchServe, or Ray Serve)


GPU_FAMILIES = ("ml.g", "ml.p")  # SageMaker's GPU instance families (ml.g5.xlarge, ml.p4d.24xlarge, ...)


def instance_device(instance_type: str) -> str:
    """`gpu` for SageMaker's GPU instance families, `cpu` for the rest."""
    return "gpu" if instance_type.startswith(GPU_FAMILIES) else "cpu"


def endpoint_exists(client, name: str) -> bool:
    try:
        client.describe_endpoint(EndpointName=name)
        return True
    except client.exceptions.ClientError as err:
        if "Could not find" in str(err) or err.response["Error"]["Code"] == "ValidationException":
            return False
        raise


def endpoint_poll_s() -> float:
    """Seconds between status checks while an endpoint is created or updated (the SDK's own wait checks
    every 30 s; an endpoint takes minutes, so 10 s tells sooner at no cost). MARPORT_SAGEMAKER_POLL_S sets it."""
    return float(os.environ.get(POLL_ENV) or DEFAULT_POLL_S)


def deploy(mar: Path, options: DeployOptions, workdir: Path = Path("build/sagemaker")) -> dict:
    """Package, upload, and create (or update) the endpoint. Returns what was made."""
    from sagemaker.pytorch import PyTorchModel
    from sagemaker.utils import name_from_base

    role = options.role or os.environ.get("SAGEMAKER_ROLE")
    if not role:
        raise DeployError("no execution role: pass --role arn:aws:iam::<account>:role/<name> or set SAGEMAKER_ROLE")
    session = sagemaker_session(options.region, options.bucket)
    device = options.device or instance_device(options.instance_type)
    tarball = package(mar, workdir / options.endpoint / "model.tar.gz", review_band=options.review_band,
                      s3_allow=options.s3_allow, device=device, gpus=options.gpus, runtime=options.runtime)
    key_prefix = f"{options.prefix}/{options.endpoint}"
    model_data = session.upload_data(str(tarball), bucket=session.default_bucket(), key_prefix=key_prefix)
    tags = [{"Key": k, "Value": v} for k, v in options.tags.items()]
    if options.runtime == "ray":  # batching and replicas travel in the tarball's config.yaml
        from sagemaker.model import Model

        from .ray_runtime import image_uri

        model = Model(image_uri=options.image or image_uri(session.boto_region_name, device), model_data=model_data,
                      role=role, sagemaker_session=session, name=name_from_base(options.endpoint))
    else:
        model = PyTorchModel(
            model_data=model_data,
            role=role,
            framework_version=FRAMEWORK_VERSION,
            py_version=PY_VERSION,
            image_uri=options.image,
            env=serving_env(read_model_config(mar), options.batching),
            sagemaker_session=session,
            name=name_from_base(options.endpoint),
        )
    client = session.sagemaker_client
    async_config = inference_config(options.asynchronous) if options.asynchronous else None
    if endpoint_exists(client, options.endpoint):
        # A new model and endpoint config, then a rolling update: no downtime.
        model.create(instance_type=options.instance_type, tags=tags or None)
        config = name_from_base(options.endpoint)
        session.create_endpoint_config(config, model.name, options.instance_count, options.instance_type,
                                       tags=tags or None,
                                       async_inference_config_dict=async_config._to_request_dict() if async_config else None)
        session.update_endpoint(options.endpoint, config, wait=False)
    else:
        model.deploy(
            initial_instance_count=options.instance_count, instance_type=options.instance_type,
            endpoint_name=options.endpoint, tags=tags or None, wait=False,
            async_inference_config=async_config,
        )
    if options.wait:
        session.wait_for_endpoint(options.endpoint, poll=endpoint_poll_s())
    if options.asynchronous and options.asynchronous.scale_to_zero:
        scale_to_zero(session.boto_session, options.endpoint, options.asynchronous)
    elif options.autoscale:
        autoscale(session.boto_session, options.endpoint, *options.autoscale)
    image = client.describe_model(ModelName=model.name)["PrimaryContainer"]["Image"]
    return {"endpoint": options.endpoint, "model": model.name, "model_data": model_data, "image": image}


def autoscale(boto, endpoint: str, minimum: int, maximum: int, invocations_per_instance: float) -> None:
    """Target tracking on SageMakerVariantInvocationsPerInstance (per minute)."""
    client = boto.client("application-autoscaling")
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    client.register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=SCALABLE_DIMENSION,
        MinCapacity=minimum, MaxCapacity=maximum,
    )
    client.put_scaling_policy(
        PolicyName=f"{endpoint}-invocations", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": float(invocations_per_instance),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": 300,
            "ScaleOutCooldown": 60,
        },
    )


def invoke(endpoint: str, body: bytes, content_type: str, region: str | None = None,
           accept: str = "application/json", sample_rate: int | None = None,
           target_model: str | None = None) -> tuple[int, bytes]:
    """One request to the endpoint (to `target_model` on a multi-model one); (HTTP status, body). Model errors
    come back as their 4xx."""
    runtime = boto_session(region).client("sagemaker-runtime")
    extra: dict = {"CustomAttributes": f"sample_rate={sample_rate}"} if sample_rate else {}
    if target_model:
        extra["TargetModel"] = target_model
    try:
        reply = runtime.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=content_type,
                                        Accept=accept, **extra)
        return 200, reply["Body"].read()
    except runtime.exceptions.ModelError as err:
        return int(err.response.get("OriginalStatusCode", 400)), err.response.get("OriginalMessage", "").encode()


def async_input_prefix(endpoint: str, region: str | None = None) -> str:
    """Where `invoke --async` uploads inputs by default: beside the endpoint's async output path."""
    client = boto_session(region).client("sagemaker")
    config_name = client.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    output = (client.describe_endpoint_config(EndpointConfigName=config_name).get("AsyncInferenceConfig") or {}) \
        .get("OutputConfig", {}).get("S3OutputPath")
    if not output:
        raise DeployError(f"{endpoint} is not an async endpoint (deploy it with --async --output s3://...)")
    return output.rstrip("/").removesuffix("/outputs")


def delete(endpoint: str, region: str | None = None, delete_model_data: bool = False) -> list[str]:
    """Remove the endpoint, its configuration, its models, its scaling target and optionally the S3 artifact."""
    boto = boto_session(region)
    client = boto.client("sagemaker")
    removed = []
    config_name = client.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    config = client.describe_endpoint_config(EndpointConfigName=config_name)
    models = [v["ModelName"] for v in config["ProductionVariants"]]
    scaling = boto.client("application-autoscaling")
    try:
        scaling.deregister_scalable_target(ServiceNamespace="sagemaker", ScalableDimension=SCALABLE_DIMENSION,
                                           ResourceId=f"endpoint/{endpoint}/variant/{VARIANT}")
        removed.append(f"scaling target of {endpoint}")
    except (scaling.exceptions.ObjectNotFoundException, scaling.exceptions.ValidationException):
        pass  # no scaling target: AWS says ObjectNotFound, moto ValidationException
    cloudwatch = boto.client("cloudwatch")
    alarms = [a["AlarmName"] for a in cloudwatch.describe_alarms(AlarmNamePrefix=f"{endpoint}-")["MetricAlarms"]
              if a["AlarmName"] == f"{endpoint}-{WAKE_ALARM}"]
    if alarms:  # scale-to-zero's wake-up alarm (async endpoints)
        cloudwatch.delete_alarms(AlarmNames=alarms)
        removed.append(f"alarm {alarms[0]}")
    client.delete_endpoint(EndpointName=endpoint)
    removed.append(f"endpoint {endpoint}")
    client.delete_endpoint_config(EndpointConfigName=config_name)
    removed.append(f"endpoint config {config_name}")
    for name in models:
        data = client.describe_model(ModelName=name)["PrimaryContainer"].get("ModelDataUrl")
        client.delete_model(ModelName=name)
        removed.append(f"model {name}")
        if delete_model_data and data and data.startswith("s3://"):
            bucket, _, key = data[len("s3://"):].partition("/")
            s3 = boto.client("s3")
            keys = [key] if not key.endswith("/") else [  # a multi-model endpoint's prefix: every tarball under it
                o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
                for o in page.get("Contents", [])]
            for each in keys:
                s3.delete_object(Bucket=bucket, Key=each)
            removed.append(data)
    return removed
