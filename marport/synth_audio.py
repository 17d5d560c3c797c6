"""Synthetic labelled cough/breath recordings for the demo model and the tests (no real ones can be downloaded
here), in a real data set's shape: audio files and labels.csv (path,label,participant_id). "Unhealthy" ones carry
a wheeze, crackles and longer coughs; both vary in noise, loudness, length, rate and channels. Demo data only."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

SAMPLE_RATES = (8000, 16000, 22050, 44100, 48000)


def _burst(rng, rate: int, seconds: float, low_hz: float) -> np.ndarray:
    """A cough: noise with a fast attack and exponential decay, lightly low-passed."""
    n = int(seconds * rate)
    noise = rng.standard_normal(n)
    kernel = max(1, int(rate / (low_hz * 4)))
    smooth = np.convolve(noise, np.ones(kernel) / kernel, mode="same")
    envelope = np.exp(-np.linspace(0, 6, n)) * np.minimum(1, np.linspace(0, 40, n))
    return smooth * envelope


def recording(rng, unhealthy: bool, rate: int, seconds: float, voice_hz: float) -> np.ndarray:
    n = int(seconds * rate)
    t = np.arange(n) / rate
    signal = 0.02 * rng.standard_normal(n)  # background noise
    coughs = rng.integers(2, 7)
    for _ in range(coughs):
        length = rng.uniform(0.25, 0.9) if unhealthy else rng.uniform(0.15, 0.5)
        start = int(rng.uniform(0, max(0.1, seconds - length)) * rate)
        burst = _burst(rng, rate, length, voice_hz)[: n - start]
        signal[start : start + len(burst)] += rng.uniform(0.5, 1.0) * burst / (np.abs(burst).max() + 1e-9)
    breath = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 0.4) * t + rng.uniform(0, 6.3))
    # Not every sick caller wheezes, and some healthy phones hum: the classes overlap.
    if (unhealthy and rng.random() < 0.8) or (not unhealthy and rng.random() < 0.15):
        wheeze_hz = rng.uniform(250, 600)
        vibrato = 1 + 0.03 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
        phase = 2 * np.pi * np.cumsum(wheeze_hz * vibrato) / rate
        loudness = rng.uniform(0.03, 0.2) if unhealthy else rng.uniform(0.02, 0.06)
        signal += loudness * breath * np.sin(phase)
    if unhealthy and rng.random() < 0.6:
        for _ in range(rng.integers(5, 25)):  # crackles
            at = rng.integers(0, max(1, n - 40))
            signal[at : at + 40] += rng.uniform(-0.6, 0.6) * np.hanning(40)[: n - at]
    signal += 0.03 * breath * rng.standard_normal(n)
    signal *= rng.uniform(0.05, 0.9) / (np.abs(signal).max() + 1e-9)
    return signal.astype(np.float32)


def generate(out: Path, participants: int = 80, per_participant: tuple[int, int] = (1, 3),
             unhealthy_share: float = 0.3, seconds: tuple[float, float] = (4.0, 26.0),
             seed: int = 7) -> Path:
    """Write recordings and labels.csv under `out`; return the CSV's path."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for p in tqdm(range(participants), desc="synthesising recordings", unit="participant"):
        pid = f"p{p:04d}"
        unhealthy = bool(rng.random() < unhealthy_share)
        voice_hz = rng.uniform(150, 400)
        for r in range(rng.integers(per_participant[0], per_participant[1] + 1)):
            rate = int(rng.choice(SAMPLE_RATES))
            audio = recording(rng, unhealthy, rate, rng.uniform(*seconds), voice_hz)
            if rng.random() < 0.25:  # some phones record stereo
                audio = np.stack([audio, audio * rng.uniform(0.7, 1.0)], axis=1)
            name = f"{pid}_{r}.wav"
            sf.write(out / name, audio, rate, subtype="PCM_16")
            rows.append({"path": name, "label": int(unhealthy), "participant_id": pid})
    labels = out / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "participant_id"])
        writer.writeheader()
        writer.writerows(rows)
    return labels


def demo_dataset(participants: int = 80) -> Path:
    """The demo set under build/respiratory/synthetic in the workspace, generated once; returns labels.csv."""
    from marport.workspace import current

    labels = current().build / "respiratory" / "synthetic" / "labels.csv"
    return labels if labels.exists() else generate(labels.parent, participants)
