"""The sentiment core called in-process: parsing, batching, inference, answers."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import RobertaConfig, RobertaForSequenceClassification

import sentiment
from serving_common import Request, RequestError
from marport.train_sentiment import read_corpus, train_tokenizer
from marport.build import build, extract_archive
from tests.conftest import built_archive


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model exactly as packed in model_store/sentiment.mar."""
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    return sentiment.load(str(root), {"max_chars": 200, "max_items": 4})


def save_tiny_checkpoint(path, labels=("bad", "good")):
    """A checkpoint a user might bring: any labels, saved with save_pretrained."""
    torch.manual_seed(0)
    tokenizer = train_tokenizer([t for t, _ in read_corpus()["train"]], vocab_size=400)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=66, pad_token_id=tokenizer.pad_token_id,
        num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    RobertaForSequenceClassification(config).save_pretrained(path)
    tokenizer.model_max_length = 64
    tokenizer.save_pretrained(path)
    return path


def parse(model, body, content_type="application/json"):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    return sentiment.parse_request(Request(body=body, content_type=content_type), model)


def test_text_plain_and_json_shapes(demo):
    assert parse(demo, b"great food", "text/plain").texts == ["great food"]
    assert parse(demo, b"great food", "text/plain; charset=utf-8").single
    assert parse(demo, {"text": "ok"}).texts == ["ok"]
    many = parse(demo, {"inputs": ["a b", "c d"]})
    assert many.texts == ["a b", "c d"] and not many.single
    # TorchServe may hand over JSON already decoded.
    assert parse(demo, {"text": "x y"}).texts == ["x y"]
    assert sentiment.parse_request(Request(body={"inputs": ["q"]}), demo).texts == ["q"]


@pytest.mark.parametrize(
    "body, content_type, kind, code",
    [
        (b"", "text/plain", "empty_body", 400),
        (b"   ", "text/plain", "empty_text", 400),
        (b"\xff\xfeabc", "text/plain", "invalid_encoding", 400),
        (b"{not json", "application/json", "invalid_json", 400),
        ({"text": 42}, "application/json", "invalid_type", 400),
        ({"inputs": 7}, "application/json", "invalid_type", 400),
        ({"inputs": ["ok", 3]}, "application/json", "invalid_type", 400),
        ({"inputs": []}, "application/json", "empty_text", 400),
        ({"inputs": ["a"] * 5}, "application/json", "too_many_inputs", 413),
        ({"something": "else"}, "application/json", "invalid_json_shape", 400),
        ([1, 2], "application/json", "invalid_json_shape", 400),
        ({"text": "y" * 201}, "application/json", "text_too_long", 413),
        (b"hello", "image/png", "unsupported_media_type", 415),
    ],
)
def test_bad_requests_raise_clear_errors(demo, body, content_type, kind, code):
    with pytest.raises(RequestError) as caught:
        parse(demo, body, content_type)
    err = caught.value
    assert (err.kind, err.code) == (kind, code)
    payload = err.payload()
    assert payload["code"] == code and payload["type"] == kind and len(payload["message"]) > 10


def test_dynamic_padding_and_truncation(demo):
    short = sentiment.TextRequest(["tiny"], single=True)
    longer = sentiment.TextRequest(["a somewhat longer sentence about a hotel room"], single=True)
    batch = sentiment.preprocess(demo, [short, longer])
    lengths = batch["attention_mask"].sum(dim=1).tolist()
    # Padded to the longest text of this batch, not to a fixed length.
    assert batch["input_ids"].shape == (2, max(lengths))
    assert lengths[0] < lengths[1]
    huge = sentiment.TextRequest(["word " * 1000], single=True)
    assert sentiment.preprocess(demo, [huge])["input_ids"].shape[1] == demo.max_length


def test_answers_are_well_formed_and_in_order(demo):
    reqs = [
        sentiment.TextRequest(["The food was wonderful"], single=True),
        sentiment.TextRequest(["Awful, it broke", "The box is blue"], single=False),
    ]
    answers = sentiment.predict(demo, reqs)
    assert isinstance(answers[0], dict) and isinstance(answers[1], list) and len(answers[1]) == 2
    for answer in [answers[0], *answers[1]]:
        assert set(answer["scores"]) == {"negative", "neutral", "positive"}
        assert sum(answer["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert answer["score"] == max(answer["scores"].values())
        assert answer["scores"][answer["label"]] == answer["score"]


def test_batch_answers_equal_one_by_one(demo):
    texts = ["Superb service and great coffee", "The parcel arrived on Monday", "Worst hotel ever, dirty rooms"]
    together = sentiment.predict_texts(demo, texts)
    for text, answer in zip(texts, together):
        alone = sentiment.predict_texts(demo, [text])[0]
        assert alone["label"] == answer["label"]
        for label, score in alone["scores"].items():
            assert answer["scores"][label] == pytest.approx(score, abs=1e-5)


def test_demo_model_beats_chance_on_heldout(demo):
    rows = read_corpus()["test"]
    answers = sentiment.predict_texts(demo, [t for t, _ in rows])
    labels = ["negative", "neutral", "positive"]
    correct = sum(a["label"] == labels[y] for a, (_, y) in zip(answers, rows))
    assert correct / len(rows) > 0.5  # three balanced classes: chance is 1/3


def test_bring_your_own_checkpoint_is_packed_and_loaded(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "my-checkpoint")
    mar = build("sentiment", checkpoint=ckpt, export_dir=tmp_path / "store", name="mine")
    model = sentiment.load(str(extract_archive(mar, tmp_path / "unpacked")))
    assert model.labels == ["bad", "good"] and model.max_length == 64
    answer = sentiment.predict_texts(model, ["anything at all"])[0]
    assert set(answer["scores"]) == {"bad", "good"}
