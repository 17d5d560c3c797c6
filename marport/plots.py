"""Pictures for the notebooks and training reports: what a recording looks like to the CNN, how predictions spread."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # notebooks render the saved figure; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MEL_BANDS = 40


def recording_figure(path: Path, out: Path) -> Path:
    """Waveform and mel spectrogram of a recording, after the serving code's decoding.

    What is drawn is what the CNN hears: mixed to mono and resampled to the
    model's rate (1600 Hz by default) by handlers/respiratory.py itself.
    """
    import librosa
    import librosa.display

    from marport.handlers import respiratory

    audio = respiratory.AudioConfig()
    recording = respiratory.Respiratory.around(None, audio).decode(Path(path).read_bytes())
    heard = recording.waveform
    fig, (wave_ax, mel_ax) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True, layout="constrained")
    times = np.arange(len(heard)) / audio.model_rate
    wave_ax.plot(times, heard, linewidth=0.5)
    wave_ax.set(title=f"{Path(path).name}: {recording.duration_s:.1f} s at {recording.source_rate} Hz, "
                      f"{recording.channels} channel(s), as the CNN hears it ({audio.model_rate} Hz, peak-normalised)",
                ylabel="amplitude")
    mel = librosa.feature.melspectrogram(y=heard, sr=audio.model_rate, n_fft=256, hop_length=64,
                                         n_mels=MEL_BANDS, fmax=audio.model_rate / 2)
    shown = librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=audio.model_rate, hop_length=64,
                                     x_axis="time", y_axis="mel", fmax=audio.model_rate / 2, ax=mel_ax)
    fig.colorbar(shown, ax=[wave_ax, mel_ax], format="%+2.0f dB", pad=0.01)  # both axes keep one width
    mel_ax.set(title="mel spectrogram")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def label_distribution(answers: list[dict], out: Path) -> Path:
    """Bar chart of predicted labels, and each label's mean score."""
    counts = Counter(a["label"] for a in answers)
    labels = sorted({label for a in answers for label in a["scores"]})
    fig, (count_ax, score_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
    count_ax.bar(labels, [counts.get(label, 0) for label in labels], color="tab:blue")
    count_ax.set(title=f"predicted labels ({len(answers)} texts)", ylabel="texts")
    score_ax.bar(labels, [np.mean([a["scores"][label] for a in answers]) for label in labels], color="tab:orange")
    score_ax.set(title="mean score per label", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def confusion_plot(matrix: list[list[int]], labels, out: Path, title: str) -> Path:
    """Confusion matrix with counts and row-normalised colours (rows: truth, columns: answer)."""
    counts = np.asarray(matrix)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.8, 4.2), layout="constrained")
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, f"{n}\n{share[i, j]:.0%}", ha="center", va="center",
                color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="answer", ylabel="truth", title=f"{title} ({counts.sum()} sentences)")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def attribution_figure(answers: list[dict], out: Path) -> Path:
    """Each explained text's words, coloured by how far they pushed towards its label (or away)."""
    fig, axes = plt.subplots(len(answers), 1, figsize=(10, 1.6 * len(answers) + 0.4), squeeze=False,
                             layout="constrained")
    for ax, answer in zip(axes[:, 0], answers):
        words = answer["attributions"]
        scores = np.array([w["score"] for w in words])
        ax.bar(range(len(words)), scores, color=np.where(scores >= 0, "tab:green", "tab:red"))
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xticks(range(len(words)), [w["text"] for w in words], rotation=30, ha="right")
        ax.set(ylabel="attribution",
               title=f"{answer['label']} ({answer['score']:.2f}): green words pushed towards it, red away")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def evaluation_figure(labels: np.ndarray, probs: np.ndarray, metrics: dict, path: Path,
                      uncalibrated: np.ndarray | None = None) -> None:
    """The trained CNN on the test split: ROC, confusion at the chosen threshold, reliability."""
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    from marport.handlers.respiratory_net import LABELS

    fig, (roc_ax, cm_ax, rel_ax) = plt.subplots(1, 3, figsize=(15, 4.2))
    if len(set(labels)) == 2:
        RocCurveDisplay.from_predictions(labels, probs, ax=roc_ax, name="test split")
    roc_ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    roc_ax.set_title(f"ROC (AUC {metrics['roc_auc'] or float('nan'):.3f})")
    ConfusionMatrixDisplay.from_predictions(
        labels, (probs >= metrics["threshold"]).astype(int), labels=[0, 1],
        display_labels=list(LABELS), ax=cm_ax, colorbar=False,
    )
    cm_ax.set_title(f"threshold {metrics['threshold']:.3f}")
    reliability(labels, probs, rel_ax, "calibrated", uncalibrated)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def reliability(labels: np.ndarray, probs: np.ndarray, ax, name: str, before: np.ndarray | None = None) -> None:
    """Reliability diagram: mean predicted probability against the observed rate, per bin."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfectly calibrated")
    bins = max(2, min(10, len(labels) // 5))
    for values, label, style in ((before, "before scaling", "o:"), (probs, name, "s-")):
        if values is None or len(set(labels)) < 2:
            continue
        observed, predicted = calibration_curve(labels, values, n_bins=bins, strategy="quantile")
        ax.plot(predicted, observed, style, label=f"{label} (Brier {brier_score_loss(labels, values):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted probability", ylabel="observed unhealthy rate",
           title="reliability (test split)")
    ax.legend(loc="upper left", fontsize=8)
