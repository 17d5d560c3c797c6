"""The AWS side of sagemaker_deploy, against moto (no AWS can be reached from here)."""

from __future__ import annotations

import json
import zipfile

import boto3
import pytest
import yaml

from marport import cli
from marport.sagemaker_deploy.aws import DeployError, DeployOptions, boto_session, delete, deploy
from tests.conftest import REGION, built_archive, invocations_sent


def test_deploy_creates_model_endpoint_and_scaling_then_delete_removes_all(aws, tmp_path):
    options = DeployOptions(endpoint="sentiment-test", role=aws, instance_type="ml.c5.xlarge", instance_count=2,
                            batching={"batchSize": 16}, autoscale=(2, 4, 120.0), tags={"team": "ml"})
    made = deploy(built_archive("sentiment"), options, tmp_path)
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.describe_endpoint(EndpointName="sentiment-test")["EndpointStatus"] == "InService"
    container = sm.describe_model(ModelName=made["model"])["PrimaryContainer"]
    assert container["Image"] == f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-inference:2.6-cpu-py312"
    assert container["ModelDataUrl"] == made["model_data"]
    env = container["Environment"]
    assert env["SAGEMAKER_TS_BATCH_SIZE"] == "16"  # the override
    packed = yaml.safe_load(zipfile.ZipFile(built_archive("sentiment")).read("model-config.yaml"))
    assert env["SAGEMAKER_TS_MAX_BATCH_DELAY"] == str(packed["maxBatchDelay"])  # from the archive's config
    assert env["SAGEMAKER_TS_RESPONSE_TIMEOUT"] == "60"
    bucket, _, key = made["model_data"][len("s3://"):].partition("/")
    s3 = boto3.client("s3", region_name=REGION)
    packed = tmp_path / "sentiment-test" / "model.tar.gz"
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == packed.stat().st_size
    config = sm.describe_endpoint_config(EndpointConfigName="sentiment-test")["ProductionVariants"][0]
    assert (config["InstanceType"], config["InitialInstanceCount"]) == ("ml.c5.xlarge", 2)
    scaling = boto3.client("application-autoscaling", region_name=REGION)
    target = scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 4)
    policy = scaling.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"][0]
    assert policy["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 120.0

    removed = delete("sentiment-test", delete_model_data=True)
    assert len(removed) == 5
    assert sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []
    assert sm.list_endpoint_configs()["EndpointConfigs"] == []
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert scaling.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []


def test_redeploy_updates_the_endpoint_in_place(aws, tmp_path, monkeypatch):
    # moto has no UpdateEndpoint: record the call (the one AWS API faked here) and
    # check it points the endpoint at a new config that serves the new model.
    import sagemaker

    updates = []
    monkeypatch.setattr(sagemaker.Session, "update_endpoint",
                        lambda self, endpoint, config, wait=True: updates.append((endpoint, config)))
    first = deploy(built_archive("respiratory"), DeployOptions(endpoint="resp", role=aws, wait=False), tmp_path)
    second = deploy(built_archive("respiratory"), DeployOptions(endpoint="resp", role=aws, wait=False), tmp_path)
    sm = boto3.client("sagemaker", region_name=REGION)
    [(endpoint, config)] = updates
    variant = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"][0]
    assert endpoint == "resp" and config != "resp"
    assert first["model"] != second["model"] and variant["ModelName"] == second["model"]


def test_cli_deploy_prints_what_it_made(aws, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SAGEMAKER_ROLE", aws)
    monkeypatch.chdir(tmp_path)
    cli.main(["sagemaker", "deploy", str(built_archive("sentiment")), "--endpoint", "cli-test", "--tag", "owner=me",
              "--ts", "maxBatchDelay=50", "--no-wait"])
    made = json.loads(capsys.readouterr().out)
    env = boto3.client("sagemaker", region_name=REGION).describe_model(ModelName=made["model"])["PrimaryContainer"]
    assert env["Environment"]["SAGEMAKER_TS_MAX_BATCH_DELAY"] == "50"


def test_missing_credentials_and_role_are_explained(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DeployError, match="no AWS credentials found: set AWS_PROFILE"):
        boto_session("us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)
    with pytest.raises(DeployError, match="no execution role"):
        deploy(built_archive("sentiment"), DeployOptions(endpoint="x"), tmp_path)


def test_invoke_sends_the_body_with_its_content_type(aws, tmp_path, monkeypatch):
    """What `marport sagemaker invoke` puts on the wire: the body, its Content-Type, Accept, and the sample rate
    in SageMaker's custom attributes (seen at botocore's before-send, not in moto's canned answer)."""
    from pathlib import Path

    from marport.content_types import content_type_for
    from marport.sagemaker_deploy import aws as aws_module

    sent = invocations_sent(monkeypatch)
    deploy(built_archive("sentiment"), DeployOptions(endpoint="inv", role=aws, wait=False), tmp_path)
    status, _ = aws_module.invoke("inv", b"Great staff", "text/plain")
    aws_module.invoke("inv", b"RIFF....", "audio/wav", sample_rate=16000)
    assert status == 200 and len(sent) == 2
    text, audio = ({k: bytes(v).decode() if isinstance(v, bytes) else v for k, v in r.headers.items()} | {"body": r.body}
                   for r in sent)
    assert text["body"] == b"Great staff" and text["Content-Type"] == "text/plain"
    assert text["Accept"] == "application/json" and "X-Amzn-SageMaker-Custom-Attributes" not in text
    assert audio["body"] == b"RIFF...." and audio["Content-Type"] == "audio/wav"
    assert audio["X-Amzn-SageMaker-Custom-Attributes"] == "sample_rate=16000"
    assert content_type_for(Path("cough.FLAC")) == "audio/flac"
    assert content_type_for(Path("x.npy")) == "application/x-npy"
    assert content_type_for(Path("odd.bin")) == "application/octet-stream"


def test_deploy_runtime_ray_uses_the_ray_serve_image_and_tarball(aws, tmp_path):
    import tarfile

    made = deploy(built_archive("sentiment"), DeployOptions(endpoint="ray-ep", role=aws, wait=False, runtime="ray"),
                  tmp_path)
    sm = boto3.client("sagemaker", region_name=REGION)
    container = sm.describe_model(ModelName=made["model"])["PrimaryContainer"]
    assert container["Image"] == f"763104351884.dkr.ecr.{REGION}.amazonaws.com/ray:serve-ml-sagemaker-cpu"
    with tarfile.open(tmp_path / "ray-ep" / "model.tar.gz") as tar:
        config = yaml.safe_load(tar.extractfile("config.yaml").read())
        assert "ray_adapter.py" in tar.getnames() and "code/inference.py" not in tar.getnames()
    assert config["applications"][0]["import_path"] == "ray_adapter:build"
    assert config["http_options"]["port"] == 8000
    gpu = deploy(built_archive("sentiment"), DeployOptions(endpoint="ray-gpu", role=aws, wait=False, runtime="ray",
                                                           instance_type="ml.g4dn.xlarge"), tmp_path)
    image = sm.describe_model(ModelName=gpu["model"])["PrimaryContainer"]["Image"]
    assert image.endswith("ray:serve-ml-sagemaker-cuda")
    with tarfile.open(tmp_path / "ray-gpu" / "model.tar.gz") as tar:
        config = yaml.safe_load(tar.extractfile("config.yaml").read())
    (deployment,) = config["applications"][0]["deployments"]
    assert deployment["ray_actor_options"]["num_gpus"] == 0.5 and deployment["num_replicas"] == 2
