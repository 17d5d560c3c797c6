"""SageMaker asynchronous inference: input from S3 (up to 1 GB), output to S3 (and SNS), answers within up to an
hour, and with `scale_to_zero` no instance running while the queue is empty (docs/runtimes.md)."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

VARIANT = "AllTraffic"
SCALABLE_DIMENSION = "sagemaker:variant:DesiredInstanceCount"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
WAKE_METRIC = "HasBacklogWithoutCapacity"  # 1 when requests wait and no instance runs
WAKE_ALARM = "has-backlog-without-capacity"  # <endpoint>-<this>: starts the first instance
POLL_S = 2.0


@dataclass(frozen=True)
class AsyncOptions:
    output: str  # s3://bucket/prefix for answers (failures under <prefix>/failures)
    max_concurrency: int | None = None  # requests one instance works on at once
    scale_to_zero: bool = False
    max_instances: int = 1  # the most instances scaling may start
    backlog_per_instance: float = 5.0  # queued requests per instance that scaling aims at
    success_topic: str | None = None  # SNS topic ARNs, optional
    error_topic: str | None = None


def split_s3(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise ValueError(f"not an s3://bucket/prefix URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.rstrip("/")


def inference_config(options: AsyncOptions):
    """The SDK's AsyncInferenceConfig for `model.deploy`."""
    from sagemaker.async_inference import AsyncInferenceConfig

    bucket, prefix = split_s3(options.output)
    notifications = {k: v for k, v in (("SuccessTopic", options.success_topic), ("ErrorTopic", options.error_topic)) if v}
    return AsyncInferenceConfig(
        output_path=f"s3://{bucket}/{prefix}/outputs" if prefix else f"s3://{bucket}/outputs",
        failure_path=f"s3://{bucket}/{prefix}/failures" if prefix else f"s3://{bucket}/failures",
        max_concurrent_invocations_per_instance=options.max_concurrency,
        notification_config=notifications or None,
    )


def scale_to_zero(boto, endpoint: str, options: AsyncOptions) -> None:
    """0..max_instances instances: target tracking on the backlog per instance, and a step policy
    that starts the first instance when requests wait with none running (target tracking alone
    never leaves zero)."""
    scaling, cloudwatch = boto.client("application-autoscaling"), boto.client("cloudwatch")
    resource = f"endpoint/{endpoint}/variant/{VARIANT}"
    scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource,
                                     ScalableDimension=SCALABLE_DIMENSION, MinCapacity=0,
                                     MaxCapacity=options.max_instances)
    scaling.put_scaling_policy(
        PolicyName=f"{endpoint}-backlog", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension=SCALABLE_DIMENSION, PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": options.backlog_per_instance,
            "CustomizedMetricSpecification": {"MetricName": BACKLOG_METRIC, "Namespace": "AWS/SageMaker",
                                              "Dimensions": [{"Name": "EndpointName", "Value": endpoint}],
                                              "Statistic": "Average"},
            "ScaleInCooldown": 600, "ScaleOutCooldown": 300,
        },
    )
    wake = scaling.put_scaling_policy(
        PolicyName=f"{endpoint}-wake", ServiceNamespace="sagemaker", ResourceId=resource,
        ScalableDimension=SCALABLE_DIMENSION, PolicyType="StepScaling",
        StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                                        "Cooldown": 300,
                                        "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]},
    )
    cloudwatch.put_metric_alarm(
        AlarmName=f"{endpoint}-{WAKE_ALARM}", MetricName=WAKE_METRIC, Namespace="AWS/SageMaker",
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}], Statistic="Average", Period=60,
        EvaluationPeriods=2, DatapointsToAlarm=2, Threshold=1, ComparisonOperator="GreaterThanOrEqualToThreshold",
        TreatMissingData="missing", AlarmActions=[wake["PolicyARN"]],
    )


@dataclass(frozen=True)
class AsyncAnswer:
    input_location: str
    output_location: str
    failure_location: str | None
    status: str = "queued"  # queued | done | failed | timed out
    body: str | None = None


def invoke_async(boto, endpoint: str, body: bytes, content_type: str, input_prefix: str, name: str = "",
                 wait_s: float = 0.0, custom_attributes: str | None = None) -> AsyncAnswer:
    """Upload the body under input_prefix, queue it, and (wait_s > 0) wait for its answer in S3."""
    s3, runtime = boto.client("s3"), boto.client("sagemaker-runtime")
    bucket, prefix = split_s3(input_prefix)
    key = "/".join(p for p in (prefix, "inputs", f"{uuid.uuid4().hex}{Path(name).suffix}") if p)
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_type)
    extra = {"CustomAttributes": custom_attributes} if custom_attributes else {}
    queued = runtime.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{bucket}/{key}",
                                           ContentType=content_type, Accept="application/json", **extra)
    answer = AsyncAnswer(f"s3://{bucket}/{key}", queued["OutputLocation"], queued.get("FailureLocation"))
    if wait_s <= 0:
        return answer
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for location, status in ((answer.output_location, "done"), (answer.failure_location, "failed")):
            if location and (found := _read(s3, location)) is not None:
                return AsyncAnswer(**{**answer.__dict__, "status": status, "body": found})
        time.sleep(POLL_S)
    return AsyncAnswer(**{**answer.__dict__, "status": "timed out"})


def _read(s3, location: str) -> str | None:
    bucket, key = split_s3(location)
    try:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8", errors="replace")
    except s3.exceptions.NoSuchKey:
        return None
    except s3.exceptions.ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def describe(answer: AsyncAnswer) -> str:
    return json.dumps({k: v for k, v in answer.__dict__.items() if v is not None}, indent=2)
