"""Recordings written by the tests themselves with soundfile."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import soundfile as sf

FORMATS = {
    "wav-u8": ("WAV", "PCM_U8"),
    "wav-16": ("WAV", "PCM_16"),
    "wav-24": ("WAV", "PCM_24"),
    "wav-32": ("WAV", "PCM_32"),
    "wav-float": ("WAV", "FLOAT"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


def tone(seconds: float, rate: int, hz: float = 300.0, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono * (1 - 0.1 * c) for c in range(channels)], axis=1)


def cough_like(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A noisy tone, different for every seed: a stand-in recording for serving tests."""
    rng = np.random.default_rng(seed)
    noise = 0.1 * rng.standard_normal(int(seconds * rate))
    return (tone(seconds, rate, hz=rng.uniform(200, 500)) + noise).astype(np.float32)


def encode(samples: np.ndarray, rate: int, fmt: str = "wav-16") -> bytes:
    container, subtype = FORMATS[fmt]
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format=container, subtype=subtype)
    return buf.getvalue()


def npy_bytes(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=allow_pickle)
    return buf.getvalue()


class Canary:
    """Unpickling this creates a file: proof that something ran pickle.loads."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def pickle_canary_npy(canary_path: str) -> bytes:
    """A .npy object array whose payload, if unpickled, creates canary_path."""
    array = np.empty(1, dtype=object)
    array[0] = Canary(canary_path)
    data = npy_bytes(array, allow_pickle=True)
    assert b"open" in data and not os.path.exists(canary_path)
    return data


def plain_pickle(canary_path: str) -> bytes:
    return pickle.dumps(Canary(canary_path))
