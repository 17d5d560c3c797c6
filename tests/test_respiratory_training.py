"""Training pipeline: data sets, participant splits, oversampling, threshold, metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from marport import train_respiratory as tr
from marport.handlers import respiratory
from marport.handlers.endpoint import load_model
from marport.synth_audio import generate
from tests.audio_helpers import encode, tone


def test_coswara_layout_is_imported_with_status_mapping(tmp_path):
    root = tmp_path / "Coswara-Data"
    statuses = {"a1": "healthy", "b2": "positive_mild", "c3": "recovered_full", "d4": "healthy"}
    for i, pid in enumerate(statuses):
        folder = root / f"2020040{i}" / pid
        folder.mkdir(parents=True)
        (folder / "cough-heavy.wav").write_bytes(encode(tone(1, 8000), 8000))
        (folder / "breathing-deep.wav").write_bytes(encode(tone(1, 8000), 8000))
    (root / "2020040{0}".format(0) / "zz9").mkdir()  # a folder without metadata is skipped
    (root / "20200400" / "zz9" / "cough-heavy.wav").write_bytes(encode(tone(1, 8000), 8000))
    with open(root / "combined_data.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "covid_status", "a"])
        writer.writerows([[pid, status, "x"] for pid, status in statuses.items()])
    examples = tr.read_coswara(root, "breathing-deep")
    assert {e.participant: e.label for e in examples} == {"a1": 0, "b2": 1, "c3": 1, "d4": 0}
    assert all(e.path.name == "breathing-deep.wav" for e in examples)


def test_split_keeps_each_participant_in_one_split():
    examples = [tr.Example(f"f{i}.wav", int(p % 3 == 0), f"p{p}") for p in range(30) for i in range(3)]
    splits = tr.split_by_participant(examples, seed=1)
    people = {name: {e.participant for e in rows} for name, rows in splits.items()}
    assert not (people["train"] & people["test"]) and not (people["train"] & people["validation"])
    assert not (people["validation"] & people["test"])
    assert sum(len(rows) for rows in splits.values()) == len(examples)
    for rows in splits.values():  # stratified: both classes everywhere
        assert {e.label for e in rows} == {0, 1}


def test_oversampling_balances_training_windows_only():
    audio = respiratory.AudioConfig(window_s=1.0, hop_s=1.0)
    examples = [tr.Example("x", label, f"p{i}") for i, label in enumerate([0, 0, 0, 0, 1])]
    recordings = [respiratory.Recording(np.ones(1600, dtype=np.float32), 1.0) for _ in examples]
    windows, labels = tr.oversampled_windows(examples, recordings, audio, seed=0)
    assert windows.shape == (8, 1600) and labels.tolist().count(1) == 4


def test_threshold_reaches_target_sensitivity_and_metrics_match_definitions():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.35, 0.6, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95])
    threshold = tr.threshold_for_sensitivity(labels, probs, 0.8)
    assert threshold == pytest.approx(0.5)  # the highest threshold keeping 5 of 6 positives
    m = tr.evaluate(labels, probs, threshold)
    assert m["confusion_matrix"] == {"tn": 3, "fp": 1, "fn": 1, "tp": 5}
    assert m["sensitivity"] == pytest.approx(5 / 6) and m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(5 / 6)
    p, r = 5 / 6, 5 / 6
    assert m["f1"] == pytest.approx(2 * p * r / (p + r))
    assert m["f2"] == pytest.approx(5 * p * r / (4 * p + r))
    assert m["roc_auc"] == pytest.approx(21 / 24)  # 21 of 24 positive-negative pairs ranked right


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """Train on a small synthetic set with a 4 s window so it runs in seconds."""
    data = tmp_path_factory.mktemp("synthetic")
    labels = generate(data, participants=48, seconds=(2.0, 6.0), unhealthy_share=0.35, seed=3)
    out = tmp_path_factory.mktemp("trained")
    audio = respiratory.AudioConfig(window_s=4.0, hop_s=2.0)
    options = tr.TrainOptions(epochs=8, seed=0, audio=audio)
    return out, tr.train(tr.read_labels_csv(labels), out, options), labels


def test_training_learns_and_writes_its_report(small_run):
    out, metrics, _ = small_run
    test = metrics["test"]
    assert test["roc_auc"] > 0.75, test
    assert set(test) >= {"sensitivity", "specificity", "precision", "f1", "f2", "confusion_matrix", "threshold"}
    assert json.loads((out / "metrics.json").read_text())["test"] == test
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = load_model(respiratory.Respiratory, str(out))
    assert loaded.audio.threshold == pytest.approx(test["threshold"]) and loaded.audio.window_s == 4.0


def test_training_is_deterministic(small_run, tmp_path):
    _, first, labels = small_run
    audio = respiratory.AudioConfig(window_s=4.0, hop_s=2.0)
    again = tr.train(tr.read_labels_csv(labels), tmp_path, tr.TrainOptions(epochs=8, seed=0, audio=audio))
    assert again["test"]["roc_auc"] == pytest.approx(first["test"]["roc_auc"], abs=1e-6)
    assert again["test"]["threshold"] == pytest.approx(first["test"]["threshold"], abs=1e-6)
