"""Train the respiratory-sound CNN on labelled recordings and report honest metrics: participants never straddle
splits, the minority class is oversampled in training only, the threshold is chosen on validation for a target
sensitivity, metrics come from the untouched test split, and recordings go through the serving code's decoding.
`marport train respiratory --help` shows the data sources (a CSV, a Coswara checkout, the synthetic demo set)."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from marport.handlers import respiratory, respiratory_net  # noqa: E402
from marport.handlers.contract import RequestError  # noqa: E402
from marport.reproducible import seed_everything  # noqa: E402

HEALTHY_STATUSES = {"healthy"}


@dataclass(frozen=True)
class Example:
    path: Path
    label: int
    participant: str


@dataclass
class TrainOptions:
    epochs: int = 12
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    target_sensitivity: float = 0.9
    audio: respiratory.AudioConfig = None  # default: the paper's settings

    def __post_init__(self):
        self.audio = self.audio or respiratory.AudioConfig()


# --------------------------------------------------------------------------- data sets


def read_labels_csv(csv_path: Path, audio_dir: Path | None = None) -> list[Example]:
    """`path,label[,participant_id]`; paths relative to audio_dir (default: the CSV's folder)."""
    base = audio_dir or csv_path.parent
    examples = []
    with open(csv_path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            path = base / row["path"]
            participant = row.get("participant_id") or str(path)
            examples.append(Example(path, int(row["label"]), participant))
    return examples


def read_coswara(root: Path, recording: str = "cough-heavy", metadata: Path | None = None) -> list[Example]:
    """Coswara layout: <root>/<date>/<participant>/<recording>.wav and a metadata CSV.

    `covid_status` "healthy" is 0, every other status 1; participants without the
    chosen recording, or without metadata, are skipped.
    """
    metadata = metadata or next(root.rglob("combined_data.csv"), None)
    if metadata is None:
        raise SystemExit(f"no combined_data.csv under {root}; pass --coswara-metadata")
    with open(metadata, newline="", encoding="utf-8") as fh:
        status = {row["id"]: row.get("covid_status", "") for row in csv.DictReader(fh)}
    examples = []
    for wav in sorted(root.rglob(f"{recording}.wav")):
        pid = wav.parent.name
        if pid in status and status[pid]:
            examples.append(Example(wav, 0 if status[pid].strip().lower() in HEALTHY_STATUSES else 1, pid))
    if not examples:
        raise SystemExit(f"no {recording}.wav with metadata found under {root}")
    return examples


# --------------------------------------------------------------------------- splitting


def split_by_participant(examples: list[Example], seed: int) -> dict[str, list[Example]]:
    """Stratified 60/20/20 train/validation/test with no participant in two splits."""
    from sklearn.model_selection import StratifiedGroupKFold

    labels = np.array([e.label for e in examples])
    groups = np.array([e.participant for e in examples])
    outer = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    rest, test = next(outer.split(np.zeros(len(examples)), labels, groups))
    inner = StratifiedGroupKFold(n_splits=4, shuffle=True, random_state=seed)
    train, val = next(inner.split(np.zeros(len(rest)), labels[rest], groups[rest]))
    return {
        "train": [examples[i] for i in rest[train]],
        "validation": [examples[i] for i in rest[val]],
        "test": [examples[i] for i in test],
    }


def load_recordings(examples: list[Example], model: respiratory.Respiratory, desc: str):
    """Decode through the serving code; unreadable files are reported and skipped."""
    kept, recordings, skipped = [], [], []
    for example in tqdm(examples, desc=f"decoding {desc}", unit="file", leave=False):
        try:
            recordings.append(model.decode(example.path.read_bytes()))
            kept.append(example)
        except (RequestError, OSError) as exc:
            skipped.append(f"{example.path}: {getattr(exc, 'message', exc)}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable {desc} recordings, e.g. {skipped[0]}")
    return kept, recordings


# --------------------------------------------------------------------------- training


def oversampled_windows(examples, recordings, audio, seed):
    """Training windows with the minority class randomly oversampled (training split only)."""
    from imblearn.over_sampling import RandomOverSampler

    windows, labels = [], []
    for example, recording in zip(examples, recordings):
        rows, _ = respiratory.windows(recording.waveform, audio)
        windows.extend(rows)
        labels.extend([example.label] * len(rows))
    index = np.arange(len(windows)).reshape(-1, 1)
    resampled, resampled_labels = RandomOverSampler(random_state=seed).fit_resample(index, np.array(labels))
    return np.stack(windows)[resampled.ravel()], resampled_labels


def fit(model: respiratory.Respiratory, windows: np.ndarray, labels: np.ndarray, options: TrainOptions):
    net = model.net
    optimiser = torch.optim.Adam(net.parameters(), lr=options.learning_rate)
    x, y = torch.from_numpy(windows), torch.from_numpy(labels).long()
    generator = torch.Generator().manual_seed(options.seed)
    for epoch in range(options.epochs):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        batches = range(0, len(x), options.batch_size)
        with tqdm(batches, desc=f"epoch {epoch + 1}/{options.epochs}", unit="batch") as bar:
            for start in bar:
                pick = order[start : start + options.batch_size]
                if len(pick) < 2:  # BatchNorm needs two samples
                    continue
                loss = torch.nn.functional.cross_entropy(net(x[pick]), y[pick])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()


def scores(model, recordings) -> np.ndarray:
    """Recording-level probabilities, through the serving pipeline in small batches."""
    out: list[float] = []
    for i in range(0, len(recordings), 8):
        out.extend(a["probability"] for a in model.predict(recordings[i : i + 8]))
    return np.array(out)


def window_logits(model, recordings) -> list[np.ndarray]:
    """Per recording, the CNN's raw logit margin (unhealthy minus healthy) for each window."""
    out = []
    with torch.inference_mode():
        for recording in recordings:
            batch, _ = model.preprocess([recording])
            logits = model.net(batch).float()
            out.append((logits[:, 1] - logits[:, 0]).numpy().astype(np.float64))
    return out


def aggregate_probs(margins: list[np.ndarray], temperature: float, aggregate: str) -> np.ndarray:
    """What the served model answers at this temperature: softmax(logits / T), combined over windows."""
    reduce = np.max if aggregate == "max" else np.mean
    return np.array([reduce(1.0 / (1.0 + np.exp(-m / temperature))) for m in margins])


def fit_temperature(margins: list[np.ndarray], labels: np.ndarray, aggregate: str) -> float:
    """Temperature scaling (Guo et al. 2017): the one T that minimises validation log loss.

    Oversampled, confidently-fitted CNNs squeeze probabilities towards 0 and 1; one
    scalar fixes that without changing which windows score higher.
    """
    from scipy.optimize import minimize_scalar
    from sklearn.metrics import log_loss

    if len(set(labels)) < 2:
        return 1.0

    def loss(log_t: float) -> float:
        probs = np.clip(aggregate_probs(margins, float(np.exp(log_t)), aggregate), 1e-7, 1 - 1e-7)
        return log_loss(labels, probs, labels=[0, 1])

    best = minimize_scalar(loss, bounds=(np.log(0.05), np.log(100.0)), method="bounded")
    return float(np.exp(best.x))


def threshold_for_sensitivity(labels: np.ndarray, probs: np.ndarray, target: float) -> float:
    """The highest threshold whose validation sensitivity reaches the target."""
    from sklearn.metrics import roc_curve

    if len(set(labels)) < 2:
        return 0.5
    _, tpr, thresholds = roc_curve(labels, probs)
    reaching = thresholds[tpr >= target]
    return float(min(1.0, reaching.max())) if len(reaching) else float(thresholds[-1])


def evaluate(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import (
        brier_score_loss,
        confusion_matrix,
        f1_score,
        fbeta_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (probs >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    both = len(set(labels)) == 2
    return {
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "sensitivity": float(recall_score(labels, predicted, zero_division=0)),
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "precision": float(precision_score(labels, predicted, zero_division=0)),
        "f1": float(f1_score(labels, predicted, zero_division=0)),
        "f2": float(fbeta_score(labels, predicted, beta=2, zero_division=0)),
        "threshold": threshold,
        # Mean squared error of the probability: 0 is perfect, 0.25 is a constant 0.5.
        "brier": float(brier_score_loss(labels, probs, pos_label=1)) if both else None,
        "confusion_matrix": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
        "n": int(len(labels)),
        "positives": int(labels.sum()),
    }


def train(examples: list[Example], out: Path, options: TrainOptions | None = None) -> dict:
    options = options or TrainOptions()
    seed_everything(options.seed)
    model = respiratory.Respiratory.around(respiratory.RespiratoryCNN(), options.audio)
    splits = split_by_participant(examples, options.seed)
    loaded = {name: load_recordings(rows, model, name) for name, rows in splits.items()}
    train_examples, train_recordings = loaded["train"]
    windows, labels = oversampled_windows(train_examples, train_recordings, options.audio, options.seed)
    print(f"training on {len(windows)} windows ({int(labels.sum())} unhealthy after oversampling); "
          f"{len(loaded['validation'][0])} validation, {len(loaded['test'][0])} test recordings")
    fit(model, windows, labels, options)

    def labels_of(split):
        return np.array([e.label for e in loaded[split][0]])

    # Calibrate first, then pick the threshold on the calibrated validation probabilities.
    val_margins = window_logits(model, loaded["validation"][1])
    model.audio.temperature = fit_temperature(val_margins, labels_of("validation"), model.audio.aggregate)
    val_probs = scores(model, loaded["validation"][1])
    model.audio.threshold = threshold_for_sensitivity(labels_of("validation"), val_probs, options.target_sensitivity)
    test_probs = scores(model, loaded["test"][1])
    raw_test = aggregate_probs(window_logits(model, loaded["test"][1]), 1.0, model.audio.aggregate)
    metrics: dict[str, Any] = {
        "test": evaluate(labels_of("test"), test_probs, model.audio.threshold),
        "validation": evaluate(labels_of("validation"), val_probs, model.audio.threshold),
        "calibration": {
            "temperature": model.audio.temperature,
            "fitted_on": "validation split (log loss)",
            "test_brier_before": evaluate(labels_of("test"), raw_test, model.audio.threshold)["brier"],
        },
        "target_sensitivity": options.target_sensitivity,
        "participants": {k: len({e.participant for e in v[0]}) for k, v in loaded.items()},
        "epochs": options.epochs,
        "seed": options.seed,
    }
    respiratory_net.save_checkpoint(str(out), model.net, model.audio)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from marport.plots import evaluation_figure

    evaluation_figure(labels_of("test"), test_probs, metrics["test"], out / "evaluation.png", uncalibrated=raw_test)
    return metrics


def build_default(out: Path, participants: int = 80, epochs: int = TrainOptions.epochs) -> dict:
    """The demo model: synthetic recordings, default settings."""
    from marport.synth_audio import demo_dataset

    metrics = train(read_labels_csv(demo_dataset(participants)), out, TrainOptions(epochs=epochs))
    report(metrics, out)
    return metrics


def report(metrics: dict, out: Path) -> None:
    t = metrics["test"]
    print(f"test split ({t['n']} recordings): AUC {t['roc_auc']:.3f}, sensitivity {t['sensitivity']:.3f}, "
          f"specificity {t['specificity']:.3f}, F2 {t['f2']:.3f} at threshold {t['threshold']:.3f}; "
          f"Brier {t['brier']:.3f} after temperature {metrics['calibration']['temperature']:.2f} "
          f"({metrics['calibration']['test_brier_before']:.3f} before)")
    print(f"checkpoint, metrics.json and evaluation.png in {out}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--csv", type=Path, help="CSV with path,label[,participant_id]")
    source.add_argument("--coswara", type=Path, help="root of a Coswara data checkout")
    source.add_argument("--synthetic", action="store_true",
                        help="the generated demo data set (the default when no data is named)")
    parser.add_argument("--audio-dir", type=Path, help="folder the CSV paths are relative to")
    parser.add_argument("--coswara-metadata", type=Path, help="Coswara metadata CSV (default: combined_data.csv)")
    parser.add_argument("--recording", default="cough-heavy",
                        help="Coswara recording type: cough-heavy, cough-shallow, breathing-deep, counting-normal, ...")
    parser.add_argument("--epochs", type=int, default=TrainOptions.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-sensitivity", type=float, default=0.9)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--decimation", type=int, default=5)


def run(args: argparse.Namespace, out: Path) -> None:
    """Train on the named data (the synthetic demo set when none is named) with every option given."""
    from marport.synth_audio import demo_dataset

    if args.csv or args.coswara:
        examples = (read_labels_csv(args.csv, args.audio_dir) if args.csv
                    else read_coswara(args.coswara, args.recording, args.coswara_metadata))
    else:
        examples = read_labels_csv(demo_dataset())
    audio = respiratory.AudioConfig(sample_rate=args.sample_rate, decimation=args.decimation,
                                    window_s=args.window_s, hop_s=args.window_s / 2)
    options = TrainOptions(epochs=args.epochs, seed=args.seed, target_sensitivity=args.target_sensitivity, audio=audio)
    report(train(examples, out, options), out)
