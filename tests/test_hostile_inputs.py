"""Hostile and arbitrary inputs through the real handlers, in-process under TorchServe's own Context.

Every outcome must be an answer or a 4xx JSON error naming the problem, never a
500 or an exception, and a good request batched with hostile ones must be answered
exactly as when it is alone. The same corpus runs against a real TorchServe in
test_hostile_serving.py.
"""

from __future__ import annotations

import json
import struct

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marport.build import extract_archive
from marport.handlers import respiratory, sentiment
from marport.handlers.contract import Request, RequestError
from marport.handlers.respiratory_handler import RespiratoryHandler
from marport.handlers.sentiment_handler import SentimentHandler
from tests.audio_helpers import cough_like, npy_bytes
from tests.conftest import answers_close, built_archive
from tests.hostile import HandlerRig, respiratory_cases, sentiment_cases, strict_json
from tests.inputs import GOOD

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


@pytest.fixture(scope="module")
def rigs(tmp_path_factory):
    out = {}
    for name, cls in (("sentiment", SentimentHandler), ("respiratory", RespiratoryHandler)):
        out[name] = HandlerRig.load(cls, extract_archive(built_archive(name), tmp_path_factory.mktemp(name)), name)
    return out




def cases(model, tmp_path):
    return sentiment_cases() if model == "sentiment" else respiratory_cases(str(tmp_path / "canary"))


def assert_outcome(case, status, answer, rig):
    if case.expect == "ok":
        assert status == 200, (case.name, answer)
        if case.twin:
            (_, want), = rig.run([case.twin])
            assert answers_close(answer, want), (case.name, answer, want)
        return
    assert 400 <= status < 500, (case.name, status, answer)
    assert answer["code"] == status and answer["message"] and answer["request_id"], (case.name, answer)
    if case.expect != "4xx":
        assert answer["type"] == case.expect, (case.name, answer)
    if case.code:
        assert status == case.code, (case.name, answer)


@pytest.mark.parametrize("model", ["sentiment", "respiratory"])
def test_hostile_corpus_mixed_with_good_requests(model, rigs, tmp_path):
    rig = rigs[model]
    (_, alone), = rig.run([GOOD[model]])
    corpus = cases(model, tmp_path)
    for start in range(0, len(corpus), 3):  # batches of 3 hostile + 2 good requests
        chunk = corpus[start : start + 3]
        rows = [GOOD[model], *[(c.body, c.headers) for c in chunk], GOOD[model]]
        results = rig.run(rows)
        for status, answer in (results[0], results[-1]):
            assert status == 200 and answers_close(answer, alone)
        for case, (status, answer) in zip(chunk, results[1:-1]):
            assert_outcome(case, status, answer, rig)
    if model == "respiratory":
        assert not (tmp_path / "canary").exists(), "a .npy payload was unpickled"


def assert_only_the_culprit_fails(rig, monkeypatch, stage: str, error: Exception, texts: list[str], marker: str):
    """With Sentiment.<stage> raising `error` for any call that holds a text with `marker`, that text's request
    gets a 500 with its id and every other request the answer it gets alone."""
    real = getattr(sentiment.Sentiment, stage)

    def failing(model, items):
        if any(marker in t for item in items for t in item.texts):
            raise error
        return real(model, items)

    monkeypatch.setattr(sentiment.Sentiment, stage, failing)
    results = rig.run([(t.encode(), {"Content-Type": "text/plain"}) for t in texts])
    monkeypatch.setattr(sentiment.Sentiment, stage, real)
    for idx, (text, (status, answer)) in enumerate(zip(texts, results)):
        if marker in text:
            assert status == 500 and answer["type"] == "internal_error" and answer["request_id"] == f"req-{idx}"
            assert f"req-{idx}" in answer["message"]
        else:
            (_, alone), = rig.run([(text.encode(), {"Content-Type": "text/plain"})])
            assert status == 200 and answers_close(answer, alone)


def test_a_failing_forward_pass_fails_only_its_culprit(rigs, monkeypatch):
    """If the batched forward raises, the batch is re-run in halves and only the culprit fails (500 with its id)."""
    assert_only_the_culprit_fails(rigs["sentiment"], monkeypatch, "predict", RuntimeError("simulated kernel failure"),
                                  ["Lovely staff", "POISON pill", "Awful food", "The bus left at noon", "Great value"],
                                  "POISON")


def test_a_prepare_bug_fails_only_its_culprit(rigs, monkeypatch):
    """If preparing a handler call's requests together raises (our bug, not a RequestError), they are prepared
    again in halves: the one that raises gets a 500 with its id, the rest are answered as when alone."""
    assert_only_the_culprit_fails(rigs["sentiment"], monkeypatch, "prepare", KeyError("simulated bug"),
                                  ["Lovely staff", "a BUG here", "Awful food", "Great value"], "BUG")


def test_bisection_stops_at_the_deadline_and_says_why(rigs, monkeypatch):
    """A batch whose every forward fails, slowly: halves are tried only while the call's budget lasts; the
    rest get a 503 deadline_exceeded (not the whole batch lost to TorchServe's responseTimeout)."""
    import time

    rig = rigs["sentiment"]
    calls = []

    def slow_failure(model, requests):
        calls.append(len(requests))
        time.sleep(0.2)
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(rig.handler.endpoint, "budget_s", 0.5)
    monkeypatch.setattr(sentiment.Sentiment, "predict", slow_failure)
    texts = [f"text number {i}" for i in range(16)]
    started = time.monotonic()
    results = rig.run([(t.encode(), {"Content-Type": "text/plain"}) for t in texts])
    took = time.monotonic() - started
    statuses = [status for status, _ in results]
    assert len(calls) < 2 * len(texts) - 1 and took < 0.5 + 0.2 + 0.5  # stopped early: not 31 forward passes
    late = [answer for status, answer in results if status == 503]
    assert late and all(a["type"] == "deadline_exceeded" and "responseTimeout" in a["message"] for a in late)
    assert set(statuses) <= {500, 503}


def test_the_call_budget_comes_from_response_timeout(rigs):
    for name, rig in rigs.items():
        config = yaml.safe_load((rig.model_dir / "model-config.yaml").read_text())
        assert rig.handler.endpoint.budget_s == pytest.approx(0.85 * config["responseTimeout"])


@pytest.mark.parametrize("model", ["sentiment", "respiratory"])
def test_curl_data_without_a_content_type_is_named(rigs, model):
    """`curl --data 'I hated it'` sends a form; TorchServe splits it into fields and the body arrives empty."""
    rig = rigs[model]
    context = rig._context(rig.model_dir, rig.name, [{"Content-Type": "application/x-www-form-urlencoded"}])
    (answer,) = rig.handler.handle([{"I hated it": bytearray(b"")}], context)
    status, body = context.get_response_status(0)[0], strict_json(answer)
    assert status == 415 and body["type"] == "form_encoded_body"
    assert "text/plain" in body["message"] or "audio/wav" in body["message"]


def test_non_finite_answers_become_a_500_for_that_request_alone(rigs, monkeypatch):
    rig = rigs["respiratory"]
    real = respiratory.Respiratory.postprocess

    def with_nan(model, output, recordings):
        answers = real(model, output, recordings)
        answers[0]["probability"] = float("nan")
        return answers

    monkeypatch.setattr(respiratory.Respiratory, "postprocess", with_nan)
    (status, answer), = rig.run([GOOD["respiratory"]])
    monkeypatch.setattr(respiratory.Respiratory, "postprocess", real)
    assert status == 500 and answer["type"] == "internal_error"


# --------------------------------------------------------------------------- property-based


def json_values():
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=5)
                        | st.dictionaries(st.sampled_from(["text", "inputs", "x", ""]) | st.text(max_size=8), inner,
                                          max_size=4), max_leaves=20)


CHARSETS = ["", "; charset=utf-8", "; charset=UTF-16", "; charset=latin-1", "; charset=bogus", "; charset=base64",
            "; charset=utf-32", '; charset="utf-8"', "; charset=", "; sample_rate=16000", "; sample_rate=x"]
MEDIA = ["text/plain", "application/json", "", "audio/wav", "audio/flac", "application/x-npy", "image/png",
         "multipart/form-data", "text/html", "application/octet-stream"]


@st.composite
def bodies(draw):
    kind = draw(st.sampled_from(["bytes", "text", "json", "json-bytes-encoding"]))
    if kind == "bytes":
        return draw(st.binary(max_size=600))
    if kind == "text":
        return draw(st.text(max_size=200)).encode("utf-8", "surrogatepass")
    doc = draw(json_values() | st.fixed_dictionaries({"text": json_values()}) | st.fixed_dictionaries(
        {"inputs": st.lists(st.text(max_size=40) | json_values(), max_size=6)}))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if kind == "json":
        return text.encode("utf-8", "surrogatepass")
    return text.encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-8-sig"])), "surrogatepass")


@st.composite
def requests_(draw):
    headers = {"Content-Type": draw(st.sampled_from(MEDIA)) + draw(st.sampled_from(CHARSETS))}
    if draw(st.booleans()):
        headers["Accept"] = draw(st.sampled_from(["*/*", "application/json", "text/csv", "application/*", ""]))
    if draw(st.booleans()):
        headers["X-Sample-Rate"] = draw(st.sampled_from(["16000", "0", "-5", "1e9", "abc"]) | st.text(max_size=12))
    return draw(bodies()), headers


@pytest.mark.parametrize("model", ["sentiment", "respiratory"])
def test_parse_request_answers_or_refuses_anything(model, rigs):
    loaded = rigs[model].handler.model

    @FUZZ
    @given(requests_())
    def check(req):
        body, headers = req
        request = Request(body=body, content_type=headers["Content-Type"],
                          headers={k.lower(): v for k, v in headers.items()})
        try:
            loaded.parse(request)
        except RequestError as err:
            assert 400 <= err.code < 500 and err.kind and err.message

    check()


@pytest.mark.parametrize("model", ["sentiment", "respiratory"])
def test_handle_answers_every_batch_mix(model, rigs):
    rig = rigs[model]
    (_, alone), = rig.run([GOOD[model]])

    @FUZZ
    @given(st.lists(requests_(), min_size=1, max_size=4), st.integers(0, 4))
    def check(hostile, where):
        rows = list(hostile)
        where = min(where, len(rows))
        rows.insert(where, GOOD[model])
        results = rig.run(rows)
        for i, (status, answer) in enumerate(results):
            assert status == 200 or 400 <= status < 500, (rows[i], status, answer)
            if status != 200:
                assert answer["code"] == status and answer["type"] and answer["message"]
        assert results[where][0] == 200 and answers_close(results[where][1], alone)

    check()


@FUZZ
@given(st.binary(min_size=0, max_size=64), st.integers(0, 2**32 - 1), st.integers(0, 2**16 - 1),
       st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1))
def test_wav_headers_with_arbitrary_fields(rigs_for_wav, payload, rate, channels, bits, data_size):
    """A RIFF/WAVE header whose every field may lie, followed by arbitrary bytes."""
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * max(channels, 1) * 2 % 2**32, max(channels, 1) * 2 % 2**16,
                      bits)
    body = (b"RIFF" + struct.pack("<I", 36 + len(payload)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
            + b"data" + struct.pack("<I", data_size) + payload)
    try:
        rigs_for_wav.parse(Request(body=body, content_type="audio/wav"))
    except RequestError as err:
        assert 400 <= err.code < 500


@pytest.fixture(scope="module")
def rigs_for_wav(rigs):
    return rigs["respiratory"].handler.model


def test_npy_with_arbitrary_shapes_is_refused_before_allocating(rigs):
    model = rigs["respiratory"].handler.model

    @FUZZ
    @given(st.lists(st.integers(0, 2**40), min_size=0, max_size=3), st.sampled_from(["<f4", "<f8", "<i2", "|u1", ">f4"]),
           st.binary(max_size=256))
    def check(shape, dtype, payload):
        from tests.hostile import _npy_header_claiming

        body = _npy_header_claiming(tuple(shape), dtype, payload)
        request = Request(body=body, content_type="application/x-npy", headers={"x-sample-rate": "8000"})
        try:
            recording = model.parse(request)
        except RequestError as err:
            assert 400 <= err.code < 500
        else:  # only a header whose shape matches its payload is read
            assert recording.waveform.size > 0

    check()


def test_npy_roundtrip_still_works(rigs):
    model = rigs["respiratory"].handler.model
    clip = cough_like(2, 8000, 3)
    for array in (clip, clip.astype(">f4"), np_fortran(clip)):
        request = Request(body=npy_bytes(array), content_type="application/x-npy", headers={"x-sample-rate": "8000"})
        assert model.parse(request).duration_s == pytest.approx(2.0)


def np_fortran(clip):
    import numpy as np

    return np.asfortranarray(np.stack([clip, clip], axis=1))


ANSWERS = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), inner, max_size=4),
    max_leaves=16)


@settings(max_examples=400, deadline=None)
@given(answer=ANSWERS)
def test_to_json_is_the_strict_encoder_with_orjson_or_without(answer):
    """orjson writes answers where it can (bodies.to_json); the documents, and the refusals (NaN, Infinity,
    lone surrogates), are the standard library's strict encoder's."""
    from marport.handlers.bodies import to_json

    strict = json.JSONEncoder(allow_nan=False, ensure_ascii=False)
    try:
        expected = json.loads(strict.encode(answer))
    except ValueError:
        expected = ValueError
    try:
        got = json.loads(to_json(answer))
    except ValueError:
        got = ValueError
    assert got == expected
