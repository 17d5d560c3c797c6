"""The sentiment core called in-process: parsing, batching, inference, answers."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import RobertaConfig

from marport.build import build, extract_archive
from marport.handlers import sentiment
from marport.handlers.contract import Request, RequestError
from marport.handlers.endpoint import load_model
from marport.handlers.isolation import Outcome, together
from marport.sentiment_data import LABELS, load_splits
from tests.checkpoints import save_tiny_checkpoint
from tests.conftest import built_archive


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model exactly as packed in model_store/sentiment.mar."""
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    return load_model(sentiment.Sentiment, str(root), {"handler": {"max_chars": 200, "max_items": 4}})


def parsed(model, request):
    """One request read and prepared, or its RequestError raised."""
    (found,) = model.prepare([model.read(request)])
    if isinstance(found, RequestError):
        raise found
    return found


def parse(model, body, content_type="application/json"):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    return parsed(model, Request(body=body, content_type=content_type))


def tuned(model, **attrs):
    """A copy of the loaded model with some of its settings changed."""
    copied = copy.copy(model)
    for key, value in attrs.items():
        setattr(copied, key, value)
    return copied


def text_requests(model, *groups):
    return model.prepare([sentiment.TextRequest(list(g), single=len(g) == 1) for g in groups])


def test_text_plain_and_json_shapes(demo):
    assert parse(demo, b"great food", "text/plain").texts == ["great food"]
    assert parse(demo, b"great food", "text/plain; charset=utf-8").single
    assert parse(demo, {"text": "ok"}).texts == ["ok"]
    many = parse(demo, {"inputs": ["a b", "c d"]})
    assert many.texts == ["a b", "c d"] and not many.single
    one = parse(demo, {"inputs": "a single text"})  # Hugging Face's inference API shape: one text, one answer
    assert one.texts == ["a single text"] and one.single
    # TorchServe may hand over JSON already decoded.
    assert parse(demo, {"text": "x y"}).texts == ["x y"]
    assert parsed(demo, Request(body={"inputs": ["q"]})).texts == ["q"]


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


def test_length_sorted_micro_batches_and_truncation(demo):
    texts = ["tiny", "a somewhat longer sentence about a hotel room", "ok", "word " * 1000]
    requests = [parse(demo, {"inputs": texts[:3]}), parse(demo, {"text": texts[3][:200]})]
    assert requests[1].truncated == [False]
    # The token budget alone (no padding floor) decides here.
    model = tuned(demo, batch_tokens=64, min_efficiency=0)
    batches = model.preprocess(requests)
    assert sorted(r for b in batches for r in b.rows) == [0, 1, 2, 3]
    for batch in batches:
        ids = batch.inputs["input_ids"]
        real = batch.inputs["attention_mask"].sum(dim=1).tolist()
        # Padded to the longest text of its own micro-batch, within the token budget.
        assert ids.shape == (len(batch.rows), max(real))
        assert ids.numel() <= model.batch_tokens or len(batch.rows) == 1
    # The short texts share a micro-batch; the long one is not padded with them.
    assert sorted(next(b.rows for b in batches if 0 in b.rows)) == [0, 1, 2]
    assert next(b.rows for b in batches if 3 in b.rows) == [3]
    assert sum(b.real_tokens for b in batches) / sum(b.padded_tokens for b in batches) > 0.8
    long_one = demo.predict_texts(["word " * 1000])[0]
    assert long_one["truncated"] is True
    assert "truncated" not in demo.predict_texts(["short"])[0]


def test_token_cap_is_counted_after_tokenisation(demo):
    model = tuned(demo, max_tokens=30)
    ok = parse(model, {"inputs": ["good food"] * 4})
    assert ok.tokens == sum(len(i) for i in ok.ids) <= 30
    with pytest.raises(RequestError) as caught:
        parse(model, {"inputs": ["a rather long sentence about the hotel and its staff"] * 4})
    assert caught.value.code == 413 and caught.value.kind == "too_many_tokens"
    assert "max_tokens" in caught.value.message and "30" in caught.value.message


@given(st.lists(st.integers(1, 512), max_size=80), st.integers(512, 4096), st.sampled_from([0.0, 0.5, 0.9, 1.0]))
def test_micro_batches_cover_every_text_once_within_budget(lengths, budget, floor):
    groups = sentiment.micro_batches(lengths, budget, floor)
    assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
    for group in groups:
        longest = max(lengths[r] for r in group)
        assert lengths[group[-1]] == longest  # preprocess and figures take a group's width from its last text
        assert len(group) * longest <= budget
        # The padding floor holds for every group of two or more (a lone text has no padding).
        assert len(group) == 1 or sum(lengths[r] for r in group) >= floor * len(group) * longest
    # Length-sorted: every text of a group is at least as long as every text of the group before.
    for before, after in zip(groups, groups[1:]):
        assert max(lengths[r] for r in before) <= min(lengths[r] for r in after)


def test_padding_floor_splits_mixed_lengths_but_keeps_similar_ones_together():
    assert sentiment.micro_batches([10, 11, 12, 40, 41], 2048, 0.9) == [[0, 1, 2], [3, 4]]
    assert sentiment.micro_batches([10, 11, 12, 40, 41], 2048, 0.0) == [[0, 1, 2, 3, 4]]


def test_answers_are_well_formed_and_in_order(demo):
    reqs = text_requests(demo, ["The food was wonderful"], ["Awful, it broke", "The box is blue"])
    answers = demo.predict(reqs)
    assert isinstance(answers[0], dict) and isinstance(answers[1], list) and len(answers[1]) == 2
    for answer in [answers[0], *answers[1]]:
        assert set(answer["scores"]) == {"negative", "neutral", "positive"}
        assert sum(answer["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert answer["score"] == max(answer["scores"].values())
        assert answer["scores"][answer["label"]] == answer["score"]


def test_batch_answers_equal_one_by_one(demo):
    texts = ["Superb service and great coffee", "The parcel arrived on Monday", "Worst hotel ever, dirty rooms"]
    together = demo.predict_texts(texts)
    for text, answer in zip(texts, together):
        alone = demo.predict_texts([text])[0]
        assert alone["label"] == answer["label"]
        for label, score in alone["scores"].items():
            assert answer["scores"][label] == pytest.approx(score, abs=1e-5)


def test_served_demo_model_is_right_on_heldout_reviews(demo):
    """The archive as served, on held-out sentences: the figures docs/serving.md and the model card state."""
    rows = load_splits()["test"][::4]  # every 4th held-out sentence: ~1,400, all three classes
    answers = demo.predict_texts([e.text for e in rows])
    correct = [a["label"] == LABELS[e.label] for a, e in zip(answers, rows)]
    polar = [c for c, e in zip(correct, rows) if LABELS[e.label] != "neutral"]
    neutral = [c for c, e in zip(correct, rows) if LABELS[e.label] == "neutral"]
    assert sum(correct) / len(rows) >= 0.85
    assert sum(polar) / len(polar) >= 0.85  # a `neutral` answer to a review counts as wrong
    assert sum(neutral) / len(neutral) >= 0.6  # plain statements of fact get `neutral`


def test_bring_your_own_checkpoint_is_packed_and_loaded(tmp_path):
    ckpt = save_tiny_checkpoint(tmp_path / "my-checkpoint")
    mar = build("sentiment", checkpoint=ckpt, export_dir=tmp_path / "store", name="mine")
    model = load_model(sentiment.Sentiment, str(extract_archive(mar, tmp_path / "unpacked")))
    assert model.labels == ["bad", "good"] and model.max_length == 64
    answer = model.predict_texts(["anything at all"])[0]
    assert set(answer["scores"]) == {"bad", "good"}


@pytest.mark.parametrize("config, limit", [
    (RobertaConfig(max_position_embeddings=514, pad_token_id=1), 512),  # roberta-base: positions 2..513
    (RobertaConfig(max_position_embeddings=513, pad_token_id=0), 512),  # the demo model: positions 1..512
    (RobertaConfig(max_position_embeddings=66, pad_token_id=1), 64),
])
def test_position_limit_follows_where_positions_start(config, limit):
    assert sentiment.position_limit(config) == limit


def test_position_limit_for_bert_style_models():
    from transformers import BertConfig

    assert sentiment.position_limit(BertConfig(max_position_embeddings=512)) == 512


# --------------------------------------------------------------------------- one tokenizer call per handler call

@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.text(min_size=1, max_size=700), min_size=1, max_size=12))
def test_batched_tokenising_equals_the_tokenizers_own_call(demo, texts):
    """One batch call of the tokenizers library gives what tokenizer(text, truncation=True,
    max_length=...) gives for each text alone: the same ids, truncation and spans."""
    try:
        [t.encode("utf-8") for t in texts]
    except UnicodeEncodeError:  # unpaired surrogates are refused before tokenising
        return
    ids, truncated, spans = demo.tokenize(texts, offsets=True)
    fast_ids, fast_truncated, _ = demo.tokenize(texts)
    assert fast_ids == ids and fast_truncated == truncated
    for text, got, cut, span in zip(texts, ids, truncated, spans):
        one = demo.tokenizer(text, truncation=True, max_length=demo.max_length, return_offsets_mapping=True)
        assert got == one["input_ids"]
        assert cut == bool(one.encodings[0].overflowing)
        assert [tuple(s) for s in span] == [tuple(s) for s in one["offset_mapping"]]


def spy_on_encoder(model, monkeypatch) -> list:
    """The texts of each call the model's tokenizer backend gets (encode_batch*), recorded as they pass."""
    calls: list = []
    real = model.encoder

    class Spy:
        def __getattr__(self, name):
            found = getattr(real, name)
            return (lambda texts: calls.append(list(texts)) or found(texts)) if name.startswith("encode_batch") else found

    monkeypatch.setattr(model, "encoder", Spy())
    return calls


def test_a_handler_calls_texts_are_tokenised_in_one_call(demo, monkeypatch):
    demo = tuned(demo)
    calls = spy_on_encoder(demo, monkeypatch)
    items = [demo.read(Request(body=t, content_type="text/plain")) for t in ("Great stay", "Awful")]
    items.append(demo.read(Request(body=json.dumps({"inputs": ["Fine", "Bad food"]}), content_type="application/json")))
    found = demo.prepare(items)
    assert [len(c) for c in calls] == [4]
    assert [p.texts for p in found] == [["Great stay"], ["Awful"], ["Fine", "Bad food"]]
    assert all(len(p.ids) == len(p.texts) == len(p.truncated) for p in found)


def test_token_caps_refuse_only_their_own_request_in_a_batch(demo):
    model = tuned(demo, max_tokens=30)
    items = [model.read(Request(body=t, content_type="text/plain")) for t in ("short one", "word " * 35, "another short one")]
    found = model.prepare(items)
    assert isinstance(found[1], RequestError) and found[1].kind == "too_many_tokens"
    assert found[0].texts == ["short one"] and found[2].texts == ["another short one"]


def test_a_text_the_tokenizer_refuses_costs_only_its_request(demo, monkeypatch):
    """Should the tokenizer raise on one text, the call is tokenised again in halves (isolation.together)."""
    demo = tuned(demo)
    real = demo.encoder

    class Picky:
        def __getattr__(self, name):
            found = getattr(real, name)
            if not name.startswith("encode_batch"):
                return found

            def encode(texts):
                if "poison" in " ".join(texts):
                    raise ValueError("cannot take this text")
                return found(texts)
            return encode

    monkeypatch.setattr(demo, "encoder", Picky())
    items = [demo.read(Request(body=t, content_type="text/plain")) for t in ("fine text", "poison text", "good text")]
    found, _ = together(demo.prepare, items, ["a", "b", "c"], None, "reading")
    assert isinstance(found[1], Outcome) and json.loads(found[1].body)["type"] == "untokenizable_text"
    assert [p.texts for p in (found[0], found[2])] == [["fine text"], ["good text"]]


def test_padding_is_on_the_right_with_the_pad_token(demo):
    requests = text_requests(demo, ["a b c d e f g"], ["a"])
    (batch,) = tuned(demo, min_efficiency=0.0).preprocess(requests)
    ids, mask = batch.inputs["input_ids"], batch.inputs["attention_mask"]
    short = batch.rows.index(1)
    n = len(requests[1].ids[0])
    assert mask[short, :n].all() and not mask[short, n:].any()
    assert (ids[short, n:] == demo.tokenizer.pad_token_id).all()
    assert ids[short, :n].tolist() == requests[1].ids[0]
