"""Respiratory-sound CNN: the model core, free of any serving runtime.

A recording (WAV, FLAC, OGG or MP3, or a float .npy array) is decoded a block at a
time, mixed down to mono and resampled to the model's rate (audio_input.py, which
bounds that work before doing it), cut into overlapping windows, scored
by a raw-waveform CNN, and the window scores are aggregated into one probability
that the speaker is unhealthy. Training (marport.train_respiratory), both serving
adapters, the tests and the benchmarks call these same functions.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .audio_input import AudioLimits, Decoded, decode, to_rate
from .placement import Placement, device_settings, place
from .review import ReviewBand, mark
from .serving_common import (
    Request, RequestError, as_bytes, check_body_size, checkpoint_dir, read_settings, refuse_form, setting_flag,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SILENCE_PEAK = 1e-4  # below this peak amplitude a recording is treated as silent
LABELS = ("healthy", "unhealthy")
LIMITS = ("max_duration_s", "max_channels", "max_sample_rate", "max_decoded_samples", "max_body_bytes",
          "batch_windows", "explain_resolution_s", "explain_max_s")


@dataclass
class AudioConfig:
    """How audio becomes model input; saved next to the weights."""

    sample_rate: int = 8000  # resample every recording to this rate ...
    decimation: int = 5  # ... then keep every 5th sample (anti-aliased): 1600 Hz into the CNN
    window_s: float = 20.0  # the CNN's window; shorter recordings are zero-padded
    hop_s: float = 10.0  # windows overlap on longer recordings
    threshold: float = 0.5  # decision threshold, chosen on a validation split
    temperature: float = 1.0  # logits are divided by it: fitted on validation so probabilities are calibrated
    aggregate: str = "mean"  # how window probabilities combine: mean or max

    @property
    def model_rate(self) -> int:
        return self.sample_rate // self.decimation

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.model_rate))

    @property
    def hop_samples(self) -> int:
        return max(1, int(round(self.hop_s * self.model_rate)))


# bf16 measured no faster than fp32 for this CNN on the reference CPU (BENCHMARKS.md), so fp32 unless asked.
DEFAULT_PRECISION = "fp32"


class RespiratoryCNN(nn.Module):
    """Raw-waveform CNN: a wide strided first conv, three conv blocks, global pooling."""

    def __init__(self, num_classes: int = 2):
        super().__init__()

        def block(c_in, c_out, kernel, stride=1):
            return nn.Sequential(
                nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(4),
            )

        self.features = nn.Sequential(
            block(1, 128, 80, stride=4),
            block(128, 128, 3),
            block(128, 256, 3),
            block(256, 512, 3),
        )
        # Adaptive pooling over time: any window length gives a 512-vector.
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(batch, samples) -> (batch, classes) logits."""
        x = self.features(waveforms.unsqueeze(1))
        return self.classifier(self.pool(x).squeeze(-1))


@dataclass
class RespiratoryModel:
    """The CNN, its audio settings, and what one request or forward pass may ask of it.

    Shipped limits (model-config.yaml) come from measurements: see the README's caps table.
    """

    net: RespiratoryCNN
    audio: AudioConfig
    # What one recording may cost (audio_input.AudioLimits holds the defaults and their reasons).
    max_duration_s: float = AudioLimits.max_duration_s
    max_channels: int = AudioLimits.max_channels
    max_sample_rate: int = AudioLimits.max_sample_rate
    max_decoded_samples: int = AudioLimits.max_decoded_samples
    max_body_bytes: int = 64 * 1024 * 1024  # refused before decoding
    batch_windows: int = 32  # windows per forward pass: bounds activation memory
    explain_resolution_s: float = 1.0  # occlusion explanations silence this much audio at a time
    explain_max_s: float = 300.0  # seconds of audio one explained request may hold (README, "Explanations")
    review: ReviewBand | None = None  # handler.review_band on the probability of "unhealthy"

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.net.parameters()).dtype


@dataclass
class Recording:
    """One decoded request: the waveform at the model's rate and what we noticed."""

    waveform: np.ndarray  # float32 mono at audio.model_rate, peak-normalised
    duration_s: float
    flags: list[str] = field(default_factory=list)
    explain: bool = False  # answer with an occlusion map over time too
    decode_ms: float = 0.0  # bytes -> samples (operator metrics)
    resample_ms: float = 0.0  # samples -> the model's rate, mono, normalised
    source_rate: int = 0  # Hz, as sent
    channels: int = 1  # as sent


# --------------------------------------------------------------------------- loading


def save_checkpoint(path: str, net: RespiratoryCNN, audio: AudioConfig) -> None:
    from safetensors.torch import save_file

    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(path, WEIGHTS_FILE))
    config = {"model_type": "respiratory-cnn", "labels": list(LABELS), **asdict(audio)}
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=2)


def fold_batchnorm(net: RespiratoryCNN) -> nn.Module:
    """Each Conv1d+BatchNorm1d pair as one Conv1d (eval mode: the same function, one pass less)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in net.features:
        conv, norm = block[0], block[1]
        block[0], block[1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return net


def load(model_dir: str, settings: Mapping[str, Any] | None = None, placement: Placement | None = None) -> RespiratoryModel:
    """Weights from safetensors (no unpickling); audio settings from config.json."""
    from safetensors.torch import load_file

    settings = read_settings(model_dir, None) if settings is None else settings  # default: the archive's own
    placement = placement or place(None, settings, DEFAULT_PRECISION)
    settings = device_settings(settings, placement.device)  # `auto` values for this device
    if placement.precision == "int8":
        raise ValueError("the respiratory CNN has no int8 path; use precision fp32, bf16 or auto")
    path = checkpoint_dir(model_dir)
    with open(os.path.join(path, CONFIG_FILE), encoding="utf-8") as fh:
        stored = json.load(fh)
    known = AudioConfig.__dataclass_fields__
    audio = AudioConfig(**{k: v for k, v in stored.items() if k in known})
    for key in ("hop_s", "aggregate"):  # serving-time choices may be overridden per archive
        if key in settings:
            setattr(audio, key, type(getattr(audio, key))(settings[key]))
    net = RespiratoryCNN()
    net.load_state_dict(load_file(os.path.join(path, WEIGHTS_FILE)))
    net.eval()
    if setting_flag(settings, "fold_batchnorm", True):
        net = fold_batchnorm(net)
    net.to(device=placement.device, dtype=placement.dtype)
    limits = {k: type(getattr(RespiratoryModel, k))(settings[k]) for k in LIMITS if k in settings}
    return RespiratoryModel(net=net, audio=audio, review=ReviewBand.from_settings(settings), **limits)


# --------------------------------------------------------------------------- decoding


def limits_of(model: RespiratoryModel) -> AudioLimits:
    return AudioLimits(max_duration_s=model.max_duration_s, max_channels=model.max_channels,
                       max_sample_rate=model.max_sample_rate, max_decoded_samples=model.max_decoded_samples)


def prepare(decoded: Decoded, audio: AudioConfig) -> Recording:
    """A decoded mono waveform at the model's rate -> normalised float32, flagged when silent."""
    waveform = decoded.waveform
    if waveform.size == 0:  # a few samples at a high rate: nothing left at the CNN's rate
        raise RequestError(
            f"the recording lasts {decoded.duration_s * 1000:.2f} ms: shorter than one sample at the model's "
            f"{audio.model_rate} Hz", kind="empty_audio",
        )
    flags = []
    peak = float(np.abs(waveform).max())
    if peak < SILENCE_PEAK:
        flags.append("silent")  # answered, but the score means little
    else:
        waveform = waveform / peak  # loudness varies by phone and caller; shape matters
    return Recording(waveform=waveform.astype(np.float32), duration_s=decoded.duration_s, flags=flags,
                     decode_ms=decoded.decode_ms, resample_ms=decoded.resample_ms,
                     source_rate=decoded.source_rate, channels=decoded.channels)


def read_recording(data: bytes, model: RespiratoryModel, media_type: str = "", sample_rate: Any = None) -> Recording:
    """Recording bytes (any accepted format) -> the Recording the CNN scores; training and benchmarks use it too."""
    decoded = decode(data, media_type, lambda: sample_rate, model.audio.model_rate, limits_of(model))
    return prepare(decoded, model.audio)


def to_model_rate(samples: np.ndarray, rate: int, audio: AudioConfig) -> np.ndarray:
    """(frames, channels) samples already in memory -> mono at the CNN's rate, as serving computes it."""
    limits = AudioLimits(max_duration_s=float("inf"), max_channels=samples.shape[1] if samples.ndim == 2 else 1,
                         max_sample_rate=max(rate, 1), max_decoded_samples=samples.size)
    blocks = iter([samples if samples.ndim == 2 else samples[:, None]])
    return to_rate(blocks, rate, audio.model_rate, limits, limits.max_channels).waveform.astype(np.float32)


def windows(waveform: np.ndarray, audio: AudioConfig) -> tuple[np.ndarray, list[float]]:
    """Overlapping windows of window_s every hop_s; the last one is zero-padded."""
    size, hop = audio.window_samples, audio.hop_samples
    starts = [0]
    while starts[-1] + size < len(waveform):
        starts.append(starts[-1] + hop)
    out = np.zeros((len(starts), size), dtype=np.float32)
    for row, start in enumerate(starts):
        chunk = waveform[start : start + size]
        out[row, : len(chunk)] = chunk
    return out, [s / audio.model_rate for s in starts]


# --------------------------------------------------------------------------- serving


def parse_request(request: Request, model: RespiratoryModel) -> Recording:
    """One request -> a Recording, or a RequestError saying what is wrong."""
    refuse_form(request, "audio/wav")
    if request.body is None:
        raise RequestError("request body is empty; send the recording's bytes", kind="empty_body")
    check_body_size(request.body, model.max_body_bytes)
    data = as_bytes(request.body)
    if not data:
        raise RequestError("request body is empty; send the recording's bytes", kind="empty_body")
    recording = read_recording(data, model, request.media_type, request.option("sample_rate"))
    if request.explain:
        if recording.duration_s > model.explain_max_s:
            raise RequestError(
                f"an explanation was asked for {recording.duration_s:.1f} s of audio; at most "
                f"{model.explain_max_s:g} s per request are explained (explain_max_s); send a shorter excerpt",
                kind="too_long_to_explain", code=413,
            )
        recording.explain = True
    return recording


# Decoding is the work of each recording alone: reading a request is parsing it.
read_request = parse_request


def parse_batch(model: RespiratoryModel, items: Sequence[Recording]) -> list[Recording]:
    """Nothing to do together for recordings (serving_common.ModelCore)."""
    return list(items)


def preprocess(model: RespiratoryModel, recordings: Sequence[Recording]) -> tuple[torch.Tensor, list]:
    """Windows of every recording in the batch, stacked for one forward pass."""
    stacked, index = [], []
    for recording in recordings:
        rows, starts = windows(recording.waveform, model.audio)
        stacked.append(rows)
        index.append(starts)
    return torch.from_numpy(np.concatenate(stacked)), index


def forward(model: RespiratoryModel, batch: torch.Tensor) -> torch.Tensor:
    """Probability of 'unhealthy' for each window, batch_windows at a time (bounded memory)."""
    out = []
    with torch.inference_mode():
        for chunk in torch.split(batch, model.batch_windows):
            logits = model.net(chunk.to(device=model.device, dtype=model.dtype)).float()
            out.append(torch.softmax(logits / model.audio.temperature, dim=-1)[:, 1].cpu())
    return torch.cat(out) if out else torch.empty(0)


def _aggregate(model: RespiratoryModel, probs: Sequence[float]) -> float:
    """A recording's probability from its windows' (audio.aggregate: mean or max)."""
    return float(max(probs)) if model.audio.aggregate == "max" else float(sum(probs) / len(probs))


def postprocess(model: RespiratoryModel, probs: torch.Tensor, index: list, recordings: Sequence[Recording]) -> list:
    values = probs.tolist()
    answers, at = [], 0
    for starts, recording in zip(index, recordings):
        window_probs = values[at : at + len(starts)]
        at += len(starts)
        probability = _aggregate(model, window_probs)
        answer = {
            "label": LABELS[1] if probability >= model.audio.threshold else LABELS[0],
            "probability": probability,
            "threshold": model.audio.threshold,
            "duration_s": round(recording.duration_s, 3),
            "windows": [{"start_s": round(s, 3), "probability": p} for s, p in zip(starts, window_probs)],
        }
        if recording.flags:
            answer["flags"] = list(recording.flags)
        mark(answer, probability, model.review)
        answers.append(answer)
    return answers


def predict(model: RespiratoryModel, recordings: Sequence[Recording]) -> list:
    if not recordings:
        return []
    batch, index = preprocess(model, recordings)
    answers = postprocess(model, forward(model, batch), index, recordings)
    for recording, answer in zip(recordings, answers):
        if recording.explain:
            explain(model, recording, answer)
    return answers


def explain(model: RespiratoryModel, recording: Recording, answer: dict) -> None:
    """Occlusion over time: silence explain_resolution_s of the recording at a time and see how far
    the probability of "unhealthy" falls (a positive score: that stretch pushed towards unhealthy).

    Silencing a stretch changes only the windows that overlap it, so only those are scored
    again: the work is about (recording / resolution) x (window / hop + 1) windows.
    """
    audio, wave = model.audio, recording.waveform
    rate, size = audio.model_rate, audio.window_samples
    rows, start_s = windows(wave, audio)
    starts = [int(round(s * rate)) for s in start_s]
    base = [w["probability"] for w in answer["windows"]]
    step = max(1, int(round(model.explain_resolution_s * rate)))
    segments = [(a, min(a + step, len(wave))) for a in range(0, len(wave), step)]
    jobs = []  # (segment, window): every window a segment overlaps, scored again with that segment silenced
    for k, (a, b) in enumerate(segments):
        for w, s in enumerate(starts):
            if s < b and s + size > a:
                jobs.append((k, w))
    occluded = np.empty(len(jobs), dtype=np.float64)
    for at in range(0, len(jobs), model.batch_windows):  # built a chunk at a time: memory stays bounded
        chunk = jobs[at : at + model.batch_windows]
        stack = rows[[w for _, w in chunk]].copy()
        for row, (k, w) in enumerate(chunk):
            a, b = segments[k]
            stack[row, max(a - starts[w], 0) : min(b - starts[w], size)] = 0.0
        occluded[at : at + len(chunk)] = forward(model, torch.from_numpy(stack)).double().numpy()
    changed: dict[int, dict[int, float]] = {}
    for (k, w), p in zip(jobs, occluded):
        changed.setdefault(k, {})[w] = float(p)
    attributions = []
    for k, (a, b) in enumerate(segments):
        probs = [changed.get(k, {}).get(w, p) for w, p in enumerate(base)]
        attributions.append({"start_s": round(a / rate, 3), "end_s": round(b / rate, 3),
                             "score": answer["probability"] - _aggregate(model, probs)})
    answer["attributions"] = attributions
    answer["explanation"] = {"method": "occlusion", "target": LABELS[1], "baseline": "silence",
                             "resolution_s": model.explain_resolution_s}


def body_limit(model: RespiratoryModel) -> int:
    return model.max_body_bytes


def figures(model: RespiratoryModel, recordings: Sequence[Recording], answers: Sequence[dict]) -> dict:
    """One handler call's figures for the operator metrics."""
    return {
        "Recordings": len(recordings),
        "AudioSeconds": sum(r.duration_s for r in recordings),
        "DecodeMs": sum(r.decode_ms for r in recordings),
        "ResampleMs": sum(r.resample_ms for r in recordings),
        "ExplanationsServed": sum(r.explain for r in recordings),
        "ReviewFlagged": sum(bool(a.get("review")) for a in answers),
    }
