"""The demo sentiment model's training pipeline: data, pretrained weights, training outputs, model card."""

from __future__ import annotations

import json
import re
import zipfile

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertModel, RobertaForSequenceClassification

from marport.model_card import CARD_NAME
from marport.pretrained import pretrained_dir, pretrained_roberta
from marport.sentiment_data import LABELS, _key, corpus_examples, detokenize, everyday_eval, load_splits, splits
from marport.train_sentiment import TrainSettings, train
from tests.conftest import REPO_ROOT, built_archive

CARD_SECTIONS = ["Where every weight came from", "Architecture and size", "Data and licences", "Training recipe",
                 "Metrics", "Intended use", "Known limits"]


@pytest.mark.parametrize("raw, typed", [
    ("it 's a film , honestly .", "it's a film, honestly."),
    ("i do n't think so ...", "i don't think so..."),
    ('a column of words cannot describe " the lord of the rings " trilogy',
     'a column of words cannot describe "the lord of the rings" trilogy'),
    ("( and it works ) !", "(and it works)!"),
    ("we 're here -- and they 've gone", "we're here - and they've gone"),
])
def test_detokenize_makes_corpus_text_look_typed(raw, typed):
    assert detokenize(raw) == typed


def test_splits_are_disjoint_stable_and_label_consistent():
    examples = corpus_examples()
    first, again = splits(examples), splits(list(reversed(examples)))
    keys = {name: {_key(e.text) for e in rows} for name, rows in first.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    assert not keys["validation"] & keys["test"]
    assert keys == {name: {_key(e.text) for e in rows} for name, rows in again.items()}  # order-independent
    labels_by_key = {}
    for e in examples:
        labels_by_key.setdefault(_key(e.text), set()).add(e.label)
    kept = {k for ks in keys.values() for k in ks}
    assert all(len(labels_by_key[k]) == 1 for k in kept)
    for name, rows in first.items():  # every class in every split, the neutral class the smallest
        counts = [sum(e.label == i for e in rows) for i in range(3)]
        assert min(counts) > 0 and counts[1] == min(counts), (name, counts)
    assert {e.source for e in first["train"]} == {"sentence_polarity", "pros_cons", "subjectivity", "marport"}


def test_evaluation_sentences_are_never_trained_on():
    trained = {_key(e.text) for e in load_splits()["train"]}
    held = everyday_eval()
    assert len(held) >= 80 and not trained & {_key(e.text) for e in held}


def test_converted_encoder_computes_what_the_pretrained_one_did():
    model, tokenizer = pretrained_roberta(list(LABELS))
    assert isinstance(model, RobertaForSequenceClassification)
    bert = BertModel.from_pretrained(pretrained_dir(), add_pooling_layer=False).eval()
    enc = tokenizer(["The battery died after a week.", "Lovely staff!"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        ours = model.eval().roberta(**enc).last_hidden_state
        theirs = bert(**enc).last_hidden_state
    mask = enc["attention_mask"].bool()
    torch.testing.assert_close(ours[mask], theirs[mask], atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The real trainer on a few hundred sentences: every output, in seconds."""
    full = load_splits()
    data = {"train": full["train"][:320], "validation": full["validation"][:60], "test": full["test"][:90]}
    runs = []
    for name in ("a", "b"):
        out = tmp_path_factory.mktemp("tiny") / name
        runs.append((out, train(out, TrainSettings(seed=7, batch_size=16), data=data)))
    return runs


def test_training_writes_a_loadable_checkpoint_with_metrics_plot_and_card(tiny_run):
    out, metrics = tiny_run[0]
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert isinstance(model, RobertaForSequenceClassification)
    assert [model.config.id2label[i] for i in range(3)] == list(LABELS)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["size"] == 90 and saved["train_examples"] == 320
    for split in ("validation", "test", "everyday"):
        m = saved[split]
        assert 0 <= m["accuracy"] <= 1 and 0 <= m["macro_f1"] <= 1 and set(m["recall"]) == set(LABELS)
        assert sum(map(sum, m["confusion"])) == m["size"]
    assert (out / "confusion.png").read_bytes().startswith(b"\x89PNG")
    card = (out / CARD_NAME).read_text()
    for section in CARD_SECTIONS:
        assert f"## {section}" in card
    assert f"{saved['test']['accuracy']:.3f}" in card and "seed 7" in card


def test_training_is_reproducible_from_the_seed(tiny_run):
    (a, ma), (b, mb) = tiny_run
    assert ma["test"]["confusion"] == mb["test"]["confusion"]
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_the_archive_carries_its_model_card_metrics_and_plot():
    with zipfile.ZipFile(built_archive("sentiment")) as mar:
        names = set(mar.namelist())
        card = mar.read(f"checkpoint/{CARD_NAME}").decode()
        metrics = json.loads(mar.read("checkpoint/metrics.json"))
    assert "checkpoint/confusion.png" in names
    assert f"{metrics['test']['accuracy']:.3f}" in card
    assert metrics["test"]["polar_accuracy"] >= 0.85 and metrics["everyday"]["polar_accuracy"] >= 0.85


def test_repository_model_card_agrees_with_what_make_trains():
    """MODEL_CARD.md is the reference build's card: its headline figures must match a fresh build's."""
    card = (REPO_ROOT / CARD_NAME).read_text()
    for section in CARD_SECTIONS:
        assert f"## {section}" in card
    with zipfile.ZipFile(built_archive("sentiment")) as mar:
        metrics = json.loads(mar.read("checkpoint/metrics.json"))
    stated = float(re.search(r"accuracy \*\*([0-9.]+)\*\*", card).group(1))
    assert stated == pytest.approx(metrics["test"]["accuracy"], abs=0.02)
