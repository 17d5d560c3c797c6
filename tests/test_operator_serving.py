"""Explanations, the human-review band and the operator metrics under a real TorchServe.

Archives are built from the demo checkpoints with a review band, served with the shipped
config.properties (Prometheus metrics on) on free loopback ports; the metrics port is
scraped before and after good and bad requests.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

from marport.build import build
from marport.workspace import Workspace
from tests.audio_helpers import cough_like, encode
from tests.conftest import REPO_ROOT, running_torchserve, send_together
from tests.hostile import strict_json

pytestmark = pytest.mark.integration

SENTIMENT_BAND = (0.5, 0.95)
RESPIRATORY_BAND = (0.0, 0.5)
METRIC_LINE = re.compile(r"^(\w+)\{(.*)\}\s+(\S+)$")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("operator")
    store = work / "store"
    repo = Workspace.at(REPO_ROOT)
    for model, band in (("sentiment", SENTIMENT_BAND), ("respiratory", RESPIRATORY_BAND)):
        checkpoint = repo.checkpoint(model)
        if not (checkpoint / "config.json").exists():
            pytest.fail(f"{checkpoint} is missing: run the tests with `make test`, which trains it")
        build(model, checkpoint, export_dir=store, workspace=Workspace.at(work),
              review_band=",".join(map(str, band)))
    with running_torchserve(work / "run", store, ["sentiment.mar", "respiratory.mar"]) as running:
        yield running


def post(server, route: str, model: str, body, content_type: str = "application/json") -> requests.Response:
    data = json.dumps(body) if isinstance(body, (dict, list)) else body
    return requests.post(f"{server.inference_url}/{route}/{model}", data=data, timeout=120,
                         headers={**server.headers(), "Content-Type": content_type})


def scrape(server) -> dict[tuple[str, str], float]:
    """(metric name, sorted labels without Hostname) -> value, from the Prometheus endpoint."""
    got = requests.get(f"{server.props['metrics_address']}/metrics", timeout=10)
    assert got.status_code == 200, got.text
    values = {}
    for line in got.text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            labels = ",".join(sorted(p for p in re.findall(r'(\w+="[^"]*")', match.group(2))
                                     if not p.startswith("Hostname")))
            values[match.group(1), labels] = float(match.group(3))
    return values


def moved(before: dict, after: dict, name: str, **labels: str) -> float:
    want = ",".join(sorted(f'{k}="{v}"' for k, v in labels.items()))
    return after.get((name, want), 0.0) - before.get((name, want), 0.0)


def test_the_explanations_route_answers_with_word_attributions(server):
    text = "The staff were wonderful but the shower was broken"
    explained = post(server, "explanations", "sentiment", text, "text/plain")
    assert explained.status_code == 200, explained.text
    answer = strict_json(explained.text)
    assert [w["text"] for w in answer["attributions"]] == text.split()
    assert answer["explanation"]["method"] == "integrated_gradients" and answer["explanation"]["target"] == answer["label"]
    predicted = post(server, "predictions", "sentiment", text, "text/plain").json()
    assert "attributions" not in predicted and predicted["label"] == answer["label"]
    # The same explanation through a prediction body (SageMaker has no /explanations route).
    by_body = post(server, "predictions", "sentiment", {"text": text, "explain": True}).json()
    assert [w["score"] for w in by_body["attributions"]] == pytest.approx([w["score"] for w in answer["attributions"]],
                                                                          abs=1e-4)
    several = post(server, "explanations", "sentiment", {"inputs": ["Lovely view", "Cold food, slow service"]}).json()
    assert [[w["text"] for w in a["attributions"]] for a in several] == [["Lovely", "view"],
                                                                         ["Cold", "food,", "slow", "service"]]


def test_explanations_and_predictions_batched_together_each_get_their_own_answer(server):
    jobs = [("explanations" if i % 3 == 0 else "predictions", f"Review number {i}: the room was great") for i in range(9)]
    jobs.append(("explanations", {"text": "x", "explain": "yes"}))
    jobs.append(("explanations", {"text": "word " * 400}))
    answers = send_together(jobs, lambda job: post(server, job[0], "sentiment", job[1],
                                                   "text/plain" if isinstance(job[1], str) else "application/json"))
    for (route, _), got in zip(jobs[:9], answers[:9]):
        assert got.status_code == 200, got.text
        assert ("attributions" in got.json()) == (route == "explanations")
    assert (answers[9].status_code, answers[9].json()["type"]) == (400, "invalid_type")
    assert (answers[10].status_code, answers[10].json()["type"]) == (413, "too_many_tokens_to_explain")


def test_respiratory_explanations_map_the_recording_over_time(server):
    wav = encode(cough_like(14, 16000, 11), 16000)
    got = post(server, "explanations", "respiratory", wav, "audio/wav")
    assert got.status_code == 200, got.text
    answer = strict_json(got.text)
    segments = answer["attributions"]
    assert answer["explanation"]["method"] == "occlusion" and answer["explanation"]["resolution_s"] == 1.0
    assert len(segments) == 14 and segments[-1]["end_s"] == pytest.approx(14, abs=0.01)
    too_long = post(server, "explanations", "respiratory", encode(cough_like(310, 8000, 2), 8000), "audio/wav")
    assert (too_long.status_code, too_long.json()["type"]) == (413, "too_long_to_explain")


def test_review_band_marks_uncertain_answers(server):
    texts = ["Great stay", "It was okay", "Terrible", "The hotel is near the station", "Not bad at all"]
    for answer in post(server, "predictions", "sentiment", {"inputs": texts}).json():
        assert answer["review"] == (SENTIMENT_BAND[0] <= answer["score"] <= SENTIMENT_BAND[1])
    for seed in (1, 2, 3):
        answer = post(server, "predictions", "respiratory", encode(cough_like(6, 16000, seed), 16000), "audio/wav").json()
        assert answer["review"] == (RESPIRATORY_BAND[0] <= answer["probability"] <= RESPIRATORY_BAND[1])


def test_operator_metrics_move_on_the_metrics_port(server):
    before = scrape(server)
    texts = ["Friendly staff", "Awful breakfast and a noisy room", "Fine"]
    answers = post(server, "predictions", "sentiment", {"inputs": texts}).json()
    post(server, "explanations", "sentiment", "Clean and quiet", "text/plain")
    for bad in ('{"text": ', '{"text": 1}'):
        assert post(server, "predictions", "sentiment", bad).status_code == 400
    post(server, "predictions", "respiratory", encode(cough_like(5, 16000, 4), 16000), "audio/wav")
    assert post(server, "predictions", "respiratory", b"not audio", "audio/wav").status_code == 400
    after = scrape(server)

    assert moved(before, after, "Texts", ModelName="sentiment") == 4  # 3 + the explained one; refused bodies hold none
    tokens = sum(len(t.split()) for t in texts)
    assert moved(before, after, "Tokens", ModelName="sentiment") > tokens
    assert moved(before, after, "ExplanationsServed", ModelName="sentiment") == 1
    assert moved(before, after, "RequestsRejected", ModelName="sentiment", ErrorType="invalid_json") == 1
    assert moved(before, after, "RequestsRejected", ModelName="sentiment", ErrorType="invalid_type") == 1
    assert moved(before, after, "ReviewFlagged", ModelName="sentiment") >= sum(a["review"] for a in answers)
    assert moved(before, after, "Recordings", ModelName="respiratory") == 1
    assert moved(before, after, "AudioSeconds", ModelName="respiratory") == pytest.approx(5, abs=0.01)
    assert moved(before, after, "RequestsRejected", ModelName="respiratory", ErrorType="unreadable_audio") == 1
    for gauge in ("PaddingEfficiency", "ModelMs"):
        assert ((gauge, 'ModelName="sentiment"') in after), gauge
    for gauge in ("DecodeMs", "ResampleMs"):
        assert ((gauge, 'ModelName="respiratory"') in after), gauge
