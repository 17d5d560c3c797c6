"""Explanations, the human-review band and the operator figures, in-process (no server)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from marport.build import extract_archive, review_band_yaml, with_handler_setting
from marport.handlers import (
    respiratory,  # noqa: E402
    sentiment,  # noqa: E402
)
from marport.handlers.contract import Request, RequestError  # noqa: E402
from marport.handlers.endpoint import load_model  # noqa: E402
from marport.handlers.review import ReviewBand  # noqa: E402
from marport.handlers.text_attributions import words  # noqa: E402
from tests.audio_helpers import cough_like, encode
from tests.conftest import built_archive


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = extract_archive(built_archive("sentiment"), tmp_path_factory.mktemp("sentiment_mar"))
    settings = {"precision": "fp32", "explain_steps": 48, "explain_max_tokens": 64, "review_band": [0.4, 0.8]}
    return load_model(sentiment.Sentiment, str(root), {"handler": settings})


def ask(model, body, content_type="application/json", **headers):
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    parsed = model.parse(Request(body=body, content_type=content_type, headers=headers))
    return model.predict([parsed])[0]


def test_every_way_of_asking_gives_word_attributions(demo):
    text = "The breakfast was wonderful, but the room smelled awful!"
    by_json = ask(demo, {"text": text, "explain": True})
    by_route = ask(demo, text, "text/plain", explain="True")  # what TorchServe's /explanations sends
    by_option = ask(demo, text, "text/plain", **{"x-amzn-sagemaker-custom-attributes": "explain=true"})
    plain = ask(demo, {"text": text})
    assert "attributions" not in plain
    for answer in (by_json, by_route, by_option):
        assert [w["text"] for w in answer["attributions"]] == text.split()  # the words as written, in order
        assert answer["explanation"]["target"] == answer["label"] == plain["label"]
        assert answer["score"] == pytest.approx(plain["score"], abs=1e-6)
    assert [w["score"] for w in by_json["attributions"]] == pytest.approx([w["score"] for w in by_route["attributions"]])


def test_attributions_add_up_to_the_score_change(demo):
    """Completeness: the words' attributions sum to p(text) - p(baseline) for the predicted label."""
    text = "Absolutely loved the friendly staff"
    answer = ask(demo, {"inputs": [text], "explain": True})[0]
    assert answer["explanation"]["convergence_delta"] < 0.01
    ids = demo.tokenizer(text)["input_ids"]
    from marport.handlers.text_attributions import reference_token

    special = set(demo.tokenizer.all_special_ids)
    baseline = [i if i in special else reference_token(demo.tokenizer) for i in ids]
    with torch.inference_mode():
        logits = demo.net(input_ids=torch.tensor([baseline])).logits
    p_base = torch.softmax(logits.float(), -1)[0, demo.labels.index(answer["label"])].item()
    total = sum(w["score"] for w in answer["attributions"])
    assert total == pytest.approx(answer["score"] - p_base, abs=0.01)
    # the word that carries the sentiment carries most of it
    assert max(answer["attributions"], key=lambda w: w["score"])["text"] in ("loved", "friendly", "Absolutely")


def test_a_list_is_explained_text_by_text(demo):
    answers = ask(demo, {"inputs": ["Great room", "Dirty towels and rude staff"], "explain": True})
    assert [len(a["attributions"]) for a in answers] == [2, 5]


@pytest.mark.parametrize("body, kind, code", [
    ({"text": "fine", "explain": "yes"}, "invalid_type", 400),
    ({"text": "fine", "explain": 1}, "invalid_type", 400),
    ({"text": "word " * 200, "explain": True}, "too_many_tokens_to_explain", 413),
    ({"inputs": ["word " * 30, "word " * 30, "word " * 30], "explain": True}, "too_many_tokens_to_explain", 413),
])
def test_bad_explanation_requests_get_their_own_errors(demo, body, kind, code):
    with pytest.raises(RequestError) as raised:
        ask(demo, body)
    assert (raised.value.kind, raised.value.code) == (kind, code)
    assert "explain" in raised.value.message


def test_any_hf_classifier_with_a_bpe_tokenizer_is_explained(tmp_path):
    """A RoBERTa-style byte-level BPE checkpoint (as users bring): words come back as written."""
    from tests.checkpoints import save_tiny_checkpoint

    save_tiny_checkpoint(tmp_path)
    model = load_model(sentiment.Sentiment, str(tmp_path), {"handler": {"precision": "fp32", "explain_steps": 8}})
    answer = ask(model, {"text": "Café  was\tgreat, merci!", "explain": True})
    assert [w["text"] for w in answer["attributions"]] == ["Café", "was", "great,", "merci!"]
    assert all(np.isfinite(w["score"]) for w in answer["attributions"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
                min_size=1, max_size=8),
       st.sampled_from([" ", "  ", "\n", "\t "]))
def test_words_are_the_whitespace_words_and_keep_the_total(demo, pieces, sep):
    """Whatever the text, attributions merge into its whitespace words, in order, losing no score
    (a word the tokenizer made nothing of, such as a control character, is there with 0)."""
    text = sep.join(pieces)
    enc = demo.tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=demo.max_length)
    scores = [float(i % 7) - 3.0 for i in range(len(enc["input_ids"]))]
    merged = words(text, enc["offset_mapping"], scores)
    expected = [m.group() for m in re.finditer(r"\S+", text)]
    assert [w["text"] for w in merged] == expected
    kept = sum(s for (a, b), s in zip(enc["offset_mapping"], scores) if b > a and text[a:b].strip())
    assert sum(w["score"] for w in merged) == pytest.approx(kept)


def test_a_truncated_text_is_explained_up_to_where_it_was_read(demo):
    text = " ".join(f"word{i}" for i in range(40))
    enc = demo.tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=12)
    merged = words(text, enc["offset_mapping"], [1.0] * len(enc["input_ids"]), truncated=True)
    assert 0 < len(merged) < 40 and [w["text"] for w in merged] == text.split()[: len(merged)]


def test_review_band_marks_answers_inside_it(demo):
    for text in ("Great stay", "It was fine I suppose", "Awful, never again", "The hotel has a car park"):
        answer = ask(demo, {"text": text})
        assert answer["review"] == (0.4 <= answer["score"] <= 0.8)


@pytest.mark.parametrize("value, band", [(None, None), ("off", None), ([0.2, 0.7], ReviewBand(0.2, 0.7)),
                                         ("0.3,0.6", ReviewBand(0.3, 0.6)), ([0.5, 0.5], ReviewBand(0.5, 0.5))])
def test_review_band_settings(value, band):
    assert ReviewBand.from_settings({"review_band": value}) == band


@pytest.mark.parametrize("value", [[0.7, 0.2], [0.1], [-0.1, 0.5], [0.5, 1.5], "low,high", {"a": 1}])
def test_a_malformed_review_band_fails_the_load_not_a_request(value):
    with pytest.raises(ValueError, match="review_band"):
        ReviewBand.from_settings({"review_band": value})


def test_review_band_is_set_in_the_packed_yaml_with_its_comments():
    import yaml

    from marport.registry import MODELS

    text = MODELS["respiratory"].config.read_text()
    banded = with_handler_setting(text, "review_band", review_band_yaml("0.2,0.65"))
    assert yaml.safe_load(banded)["handler"]["review_band"] == [0.2, 0.65]
    assert banded.count("\n") == text.count("\n") and "# Human review" in banded
    assert yaml.safe_load(with_handler_setting(banded, "review_band", review_band_yaml("off")))["handler"][
        "review_band"] is None
    with pytest.raises(SystemExit):
        review_band_yaml("0.9,0.1")


def test_sentiment_figures_for_the_operator_metrics(demo):
    requests = [demo.parse(Request(body=json.dumps(b), content_type="application/json"))
                for b in ({"text": "Nice"}, {"inputs": ["Bad food", "Slow check-in, rude staff"], "explain": True})]
    answers = demo.predict(requests)
    figures = demo.figures(requests, answers)
    assert figures["Texts"] == 3 and figures["Tokens"] == sum(len(i) for r in requests for i in r.ids)
    assert figures["ExplanationsServed"] == 2
    # The padding the forward passes computed, worked out from the token counts alone.
    batches = demo.preprocess(requests)
    computed = sum(b.real_tokens for b in batches) / sum(b.padded_tokens for b in batches)
    assert figures["PaddingEfficiency"] == pytest.approx(100 * computed)
    flat = [answers[0], *answers[1]]
    assert figures["ReviewFlagged"] == sum(a["review"] for a in flat)


# --------------------------------------------------------------------------- respiratory


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    net = respiratory.RespiratoryCNN().eval()
    return respiratory.Respiratory.around(net, respiratory.AudioConfig(), max_duration_s=60,
                                          explain_resolution_s=2.0, explain_max_s=40, review_band=[0.3, 0.7])


def test_occlusion_map_covers_the_recording_and_matches_silencing_by_hand(cnn):
    recording = cnn.parse(Request(body=encode(cough_like(27, 16000, 3), 16000),
                                                  content_type="audio/wav", headers={"explain": "True"}))
    answer = cnn.predict([recording])[0]
    segments = answer["attributions"]
    assert answer["explanation"] == {"method": "occlusion", "target": "unhealthy", "baseline": "silence",
                                     "resolution_s": 2.0}
    assert segments[0]["start_s"] == 0 and segments[-1]["end_s"] == pytest.approx(27, abs=0.01)
    assert all(b["start_s"] == a["end_s"] for a, b in zip(segments, segments[1:]))
    rate = cnn.audio.model_rate
    for k in (0, len(segments) // 2, len(segments) - 1):  # the same change, computed the slow way
        silenced = recording.waveform.copy()
        silenced[int(round(segments[k]["start_s"] * rate)) : int(round(segments[k]["end_s"] * rate))] = 0
        by_hand = cnn.predict([respiratory.Recording(silenced, recording.duration_s)])[0]
        assert segments[k]["score"] == pytest.approx(answer["probability"] - by_hand["probability"], abs=1e-5)
    assert answer["review"] == (0.3 <= answer["probability"] <= 0.7)


def test_a_recording_too_long_to_explain_gets_413_but_is_predicted_plainly(cnn):
    body = encode(cough_like(45, 8000, 4), 8000)
    with pytest.raises(RequestError) as raised:
        cnn.parse(Request(body=body, content_type="audio/wav", headers={"explain": "True"}))
    assert (raised.value.kind, raised.value.code) == ("too_long_to_explain", 413)
    plain = cnn.parse(Request(body=body, content_type="audio/wav"))
    assert "attributions" not in cnn.predict([plain])[0]


def test_respiratory_figures_for_the_operator_metrics(cnn):
    recordings = [cnn.parse(Request(body=encode(cough_like(s, 16000, s), 16000),
                                                    content_type="audio/wav")) for s in (3, 5)]
    answers = cnn.predict(recordings)
    figures = cnn.figures(recordings, answers)
    assert figures["Recordings"] == 2 and figures["AudioSeconds"] == pytest.approx(8, abs=0.01)
    assert figures["DecodeMs"] > 0 and figures["ResampleMs"] > 0 and figures["ExplanationsServed"] == 0
