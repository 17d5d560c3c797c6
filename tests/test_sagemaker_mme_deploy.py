"""Both models on one multi-model endpoint, the AWS side, against moto: what is created, uploaded and sent."""

from __future__ import annotations

import shutil

import boto3
import pytest

from marport import cli
from marport.sagemaker_deploy import aws as aws_module
from marport.sagemaker_deploy.aws import DeployError, DeployOptions, delete, deploy
from marport.sagemaker_deploy.multi_model import add_model, deploy_multi_model
from tests.conftest import REGION, built_archive, invocations_sent


def test_one_endpoint_for_both_models_then_one_more_added_then_all_deleted(aws, tmp_path):
    options = DeployOptions(endpoint="both", role=aws, instance_type="ml.c5.xlarge", tags={"team": "ml"})
    made = deploy_multi_model([built_archive("sentiment"), built_archive("respiratory")], options, tmp_path)
    assert made["models"] == ["sentiment.tar.gz", "respiratory.tar.gz"]
    sm = boto3.client("sagemaker", region_name=REGION)
    assert sm.describe_endpoint(EndpointName="both")["EndpointStatus"] == "InService"
    container = sm.describe_model(ModelName=made["model"])["PrimaryContainer"]
    assert container["Mode"] == "MultiModel" and container["ModelDataUrl"] == made["model_data_prefix"]
    assert container["Image"] == f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-inference:2.6-cpu-py312"
    assert container["Environment"]["TS_ENABLE_MODEL_API"] == "true"  # toolkit 2.0.25's joined properties
    bucket, _, prefix = made["model_data_prefix"][len("s3://"):].partition("/")
    s3 = boto3.client("s3", region_name=REGION)

    def stored():
        return sorted(o["Key"][len(prefix):] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))

    assert stored() == ["respiratory.tar.gz", "sentiment.tar.gz"]
    assert s3.head_object(Bucket=bucket, Key=prefix + "sentiment.tar.gz")["ContentLength"] == \
        (tmp_path / "both" / "multi-model" / "sentiment.tar.gz").stat().st_size

    reviews = tmp_path / "reviews.mar"
    shutil.copy2(built_archive("sentiment"), reviews)
    add_model("both", reviews, options, tmp_path)
    assert stored() == ["respiratory.tar.gz", "reviews.tar.gz", "sentiment.tar.gz"]

    removed = delete("both", delete_model_data=True)
    assert made["model_data_prefix"] in removed
    assert stored() == [] and sm.list_endpoints()["Endpoints"] == [] and sm.list_models()["Models"] == []


def test_invoke_names_the_target_model_on_the_wire(aws, tmp_path, monkeypatch):
    sent = invocations_sent(monkeypatch)
    deploy_multi_model([built_archive("sentiment")], DeployOptions(endpoint="mme", role=aws, wait=False), tmp_path)
    status, _ = aws_module.invoke("mme", b"Great staff", "text/plain", target_model="sentiment.tar.gz")
    assert status == 200 and len(sent) == 1
    recording = tmp_path / "cough.wav"
    recording.write_bytes(b"RIFF....")
    cli.main(["predict", "respiratory", "--file", str(recording), "--endpoint", "mme"])  # predict NAME --endpoint E
    assert len(sent) == 2
    for request, (target, content_type, body) in zip(sent, [("sentiment.tar.gz", "text/plain", b"Great staff"),
                                                           ("respiratory.tar.gz", "audio/wav", b"RIFF....")]):
        headers = {k: bytes(v).decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        assert headers["X-Amzn-SageMaker-Target-Model"] == target
        assert headers["Content-Type"] == content_type and request.body == body


def test_models_are_added_only_to_a_multi_model_endpoint(aws, tmp_path):
    deploy(built_archive("sentiment"), DeployOptions(endpoint="single", role=aws, wait=False), tmp_path)
    with pytest.raises(DeployError, match="single-model endpoint"):
        add_model("single", built_archive("respiratory"), DeployOptions(endpoint="single", role=aws), tmp_path)


def test_the_cli_deploys_then_adds(aws, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "model_store"
    store.mkdir()
    for model in ("sentiment", "respiratory"):
        shutil.copy2(built_archive(model), store / f"{model}.mar")
    cli.main(["sagemaker", "deploy", "--multi-model", "sentiment", "--endpoint", "viacli", "--role", aws])
    assert '"sentiment.tar.gz"' in capsys.readouterr().out
    cli.main(["sagemaker", "deploy", "--multi-model", "respiratory", "--endpoint", "viacli", "--role", aws])
    assert "respiratory.tar.gz" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="add --multi-model"):
        cli.main(["sagemaker", "deploy", "sentiment", "respiratory", "--endpoint", "x", "--role", aws])
