"""Asynchronous endpoints: what deploy creates (async config, scale to zero) and what invoke --async sends,
against moto, checking the API calls and their arguments."""

from __future__ import annotations

import json

import boto3
import requests

from marport import cli
from marport.sagemaker_deploy.async_inference import AsyncOptions, invoke_async
from marport.sagemaker_deploy.aws import DeployOptions, delete, deploy
from tests.audio_helpers import cough_like, encode
from tests.conftest import REGION, built_archive

ANSWERS = "async-answers"
TOPICS = ("arn:aws:sns:eu-west-1:123456789012:scored", "arn:aws:sns:eu-west-1:123456789012:failed")


def _deploy_async(role, tmp_path):
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=ANSWERS, CreateBucketConfiguration={"LocationConstraint": REGION})
    options = DeployOptions(endpoint="resp-async", role=role, asynchronous=AsyncOptions(
        output=f"s3://{ANSWERS}/triage", max_concurrency=4, scale_to_zero=True, max_instances=3,
        success_topic=TOPICS[0], error_topic=TOPICS[1]), s3_allow=["contact-centre/calls/"])
    return deploy(built_archive("respiratory"), options, tmp_path)


def test_async_deploy_queues_to_s3_and_scales_to_zero(aws, tmp_path):
    made = _deploy_async(aws, tmp_path)
    sm = boto3.client("sagemaker", region_name=REGION)
    config_name = sm.describe_endpoint(EndpointName="resp-async")["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)["AsyncInferenceConfig"]
    assert config["OutputConfig"]["S3OutputPath"] == f"s3://{ANSWERS}/triage/outputs"
    assert config["OutputConfig"]["S3FailurePath"] == f"s3://{ANSWERS}/triage/failures"
    assert config["OutputConfig"]["NotificationConfig"] == {"SuccessTopic": TOPICS[0], "ErrorTopic": TOPICS[1]}
    assert config["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 4

    scaling = boto3.client("application-autoscaling", region_name=REGION)
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == (
        "endpoint/resp-async/variant/AllTraffic", 0, 3)
    policies = {p["PolicyName"]: p for p in scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    backlog = policies["resp-async-backlog"]["TargetTrackingScalingPolicyConfiguration"]
    assert backlog["CustomizedMetricSpecification"]["MetricName"] == "ApproximateBacklogSizePerInstance"
    wake = policies["resp-async-wake"]
    assert wake["PolicyType"] == "StepScaling"
    alarm = boto3.client("cloudwatch", region_name=REGION).describe_alarms(
        AlarmNames=["resp-async-has-backlog-without-capacity"])["MetricAlarms"][0]
    assert alarm["MetricName"] == "HasBacklogWithoutCapacity" and alarm["AlarmActions"] == [wake["PolicyARN"]]

    # The packed model-config.yaml lets this endpoint read the contact centre's recordings.
    import tarfile

    import yaml

    with tarfile.open(tmp_path / "resp-async" / "model.tar.gz") as tar:
        packed = yaml.safe_load(tar.extractfile("model-config.yaml"))
    assert packed["handler"]["s3_allowed_buckets"] == ["contact-centre/calls/"]

    removed = delete("resp-async", delete_model_data=True)
    assert "alarm resp-async-has-backlog-without-capacity" in removed and made["model_data"] in removed


def test_invoke_async_uploads_queues_and_waits_for_the_answer(aws, tmp_path):
    _deploy_async(aws, tmp_path)
    answer = {"label": "unhealthy", "probability": 0.71, "threshold": 0.084}
    requests.post("http://motoapi.amazonaws.com/moto-api/static/sagemaker/async-endpoint-results",
                  json={"region": REGION, "results": [{"data": json.dumps(answer)}]}, timeout=10)
    session = boto3.Session(region_name=REGION)
    calls = []
    session.events.register("provide-client-params.sagemaker-runtime.InvokeEndpointAsync",
                            lambda params, **_: calls.append(dict(params)))
    wav = encode(cough_like(2, 16000, 1), 16000)
    got = invoke_async(session, "resp-async", wav, "audio/wav", f"s3://{ANSWERS}/triage", name="cough.wav", wait_s=10,
                       custom_attributes="explain=true")
    assert got.status == "done" and json.loads(got.body) == answer
    (call,) = calls
    assert call["EndpointName"] == "resp-async" and call["ContentType"] == "audio/wav"
    assert call["InputLocation"] == got.input_location and call["CustomAttributes"] == "explain=true"
    bucket, _, key = got.input_location[len("s3://"):].partition("/")
    assert bucket == ANSWERS and key.startswith("triage/inputs/") and key.endswith(".wav")
    uploaded = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)
    assert uploaded["Body"].read() == wav and uploaded["ContentType"] == "audio/wav"


def test_async_from_the_command_line(aws, tmp_path, capsys, monkeypatch):
    """deploy --async with its flags, then invoke --async finding the input prefix from the endpoint."""
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=ANSWERS, CreateBucketConfiguration={"LocationConstraint": REGION})
    monkeypatch.setenv("SAGEMAKER_ROLE", aws)
    monkeypatch.chdir(tmp_path)
    cli.main(["sagemaker", "deploy", str(built_archive("respiratory")), "--endpoint", "resp-cli", "--async",
              "--output", f"s3://{ANSWERS}/cli", "--max-concurrency", "2", "--scale-to-zero", "--max-instances", "2",
              "--no-wait"])
    sm = boto3.client("sagemaker", region_name=REGION)
    config_name = sm.describe_endpoint(EndpointName="resp-cli")["EndpointConfigName"]
    config = sm.describe_endpoint_config(EndpointConfigName=config_name)["AsyncInferenceConfig"]
    assert config["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 2
    target = boto3.client("application-autoscaling", region_name=REGION).describe_scalable_targets(
        ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)

    (tmp_path / "cough.wav").write_bytes(encode(cough_like(2, 16000, 2), 16000))
    capsys.readouterr()  # the deploy's own output
    cli.main(["sagemaker", "invoke", "resp-cli", "--async", "--file", "cough.wav"])
    queued = json.loads(capsys.readouterr().out)
    assert queued["status"] == "queued" and queued["input_location"].startswith(f"s3://{ANSWERS}/cli/inputs/")
    assert queued["output_location"].startswith("s3://")
