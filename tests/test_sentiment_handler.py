"""The TorchServe adapter driven in-process with TorchServe's own Context class."""

from __future__ import annotations

import json

import pytest
import yaml
from ts.context import Context, RequestProcessor

from marport.build import extract_archive
from marport.handlers.sentiment_handler import SentimentHandler
from tests.conftest import built_archive
from tests.hostile import strict_json


def ts_context(model_dir, rows_headers):
    config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
    context = Context("sentiment", str(model_dir), {}, len(rows_headers), None, "0.12.0",
                      model_yaml_config=config)
    context.request_processor = [RequestProcessor(h) for h in rows_headers]
    return context


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    model_dir = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("mar"))
    handler = SentimentHandler()
    handler.initialize(ts_context(model_dir, [{}]))
    handler.model_dir = model_dir
    return handler


def run_batch(handler, rows):
    """rows: (body, content_type) pairs, delivered as TorchServe delivers raw bodies."""
    headers = [{"body": {"content-type": ct}, "Content-Type": ct} for _, ct in rows]
    context = ts_context(handler.model_dir, headers)
    answers = handler.handle([{"body": body} for body, _ in rows], context)
    statuses = [context.get_response_status(i)[0] or 200 for i in range(len(rows))]
    return [strict_json(a) for a in answers], statuses


def test_initialize_sets_threads_from_model_config(handler):
    import torch

    from marport.handlers.settings import usable_cores

    assert torch.get_num_threads() == usable_cores()  # the shipped `threads: auto` on a CPU: every usable core
    assert handler.model.labels == ["negative", "neutral", "positive"]


def test_bad_requests_do_not_hurt_the_rest_of_the_batch(handler):
    good = "The staff were friendly and the room was clean"
    rows = [
        (good.encode(), "text/plain"),
        (b"", "text/plain"),
        (b"\xc3\x28", "text/plain"),
        (b"{oops", "application/json"),
        (json.dumps({"text": 5}).encode(), "application/json"),
        (json.dumps({"inputs": ["a"] * 500}).encode(), "application/json"),
        (json.dumps({"text": "x" * 10_000}).encode(), "application/json"),
        (json.dumps({"inputs": [good, "Terrible"]}).encode(), "application/json"),
    ]
    answers, statuses = run_batch(handler, rows)
    assert statuses == [200, 400, 400, 400, 400, 413, 413, 200]
    for answer, status in zip(answers, statuses):
        if status != 200:
            assert answer["code"] == status and answer["type"] and answer["message"]
    alone, _ = run_batch(handler, [(good.encode(), "text/plain")])
    assert answers[0] == alone[0]
    assert answers[7][0]["label"] == alone[0]["label"]
    assert answers[7][0]["score"] == pytest.approx(alone[0]["score"], abs=1e-5)


def test_decoded_input_is_accepted_too(handler):
    """With decode_input_request=true TorchServe hands over str / parsed JSON."""
    context = ts_context(handler.model_dir, [{"Content-Type": "text/plain"}, {"Content-Type": "application/json"}])
    answers = handler.handle([{"body": "Lovely place"}, {"body": {"inputs": ["Lovely place"]}}], context)
    answers = [strict_json(a) for a in answers]
    assert answers[0]["label"] == answers[1][0]["label"]
