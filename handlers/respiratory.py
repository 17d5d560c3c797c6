"""Respiratory-sound CNN: the model core, free of any serving runtime.

A recording (WAV, FLAC, OGG or MP3, or a float .npy array) is decoded a block at a
time, mixed down to mono and resampled to the model's rate (audio_input.py, which
bounds that work before doing it), cut into overlapping windows, scored
by a raw-waveform CNN, and the window scores are aggregated into one probability
that the speaker is unhealthy. Training (marport.train_respiratory), every serving
adapter, the tests and the benchmarks call these same functions.

The network and its checkpoint files are respiratory_net.py; decoding is audio_input.py;
the occlusion map of an explanation is occlusion.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .audio_input import AudioLimits, Decoded, decode, to_rate
from .occlusion import occlusion_scores
from .placement import Placement, device_settings, place
from .respiratory_net import LABELS, AudioConfig, RespiratoryCNN, fold_batchnorm, read_checkpoint, windows
from .review import ReviewBand, mark
from .serving_common import (
    Request,
    RequestError,
    as_bytes,
    check_body_size,
    checkpoint_dir,
    read_settings,
    refuse_form,
    setting_flag,
    shipped_settings,
)

SILENCE_PEAK = 1e-4  # below this peak amplitude a recording is treated as silent
LIMITS = ("max_duration_s", "max_channels", "max_sample_rate", "max_decoded_samples", "max_body_bytes",
          "batch_windows", "explain_resolution_s", "explain_max_s")


# The shipped model-config.yaml's handler section (config/respiratory.yaml): every default below comes from it,
# `auto` values as on a CPU; an archive's own settings are laid over it at load.
SHIPPED: Mapping[str, Any] = shipped_settings("respiratory")
CPU_DEFAULTS = device_settings(SHIPPED, torch.device("cpu"))


@dataclass
class RespiratoryModel:
    """The CNN, its audio settings, and what one request or forward pass may ask of it.

    Shipped limits (model-config.yaml) come from measurements: see the docs/caps.md's table.
    """

    net: RespiratoryCNN
    audio: AudioConfig
    # What one recording may cost (audio_input.AudioLimits), and what one forward pass or explanation may hold.
    max_duration_s: float = float(CPU_DEFAULTS["max_duration_s"])
    max_channels: int = int(CPU_DEFAULTS["max_channels"])
    max_sample_rate: int = int(CPU_DEFAULTS["max_sample_rate"])
    max_decoded_samples: int = int(CPU_DEFAULTS["max_decoded_samples"])
    max_body_bytes: int = int(CPU_DEFAULTS["max_body_bytes"])  # refused before decoding
    batch_windows: int = int(CPU_DEFAULTS["batch_windows"])  # windows per forward pass: bounds activation memory
    explain_resolution_s: float = float(CPU_DEFAULTS["explain_resolution_s"])  # occlusion's silenced stretch
    explain_max_s: float = float(CPU_DEFAULTS["explain_max_s"])  # audio one explained request may hold
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


def load(model_dir: str, settings: Mapping[str, Any] | None = None, placement: Placement | None = None) -> RespiratoryModel:
    """Weights from safetensors (no unpickling); audio settings from config.json (respiratory_net)."""
    settings = {**SHIPPED, **(read_settings(model_dir, None) if settings is None else settings)}
    placement = placement or place(None, settings)
    settings = device_settings(settings, placement.device)  # `auto` values for this device
    if placement.precision == "int8":
        raise ValueError("the respiratory CNN has no int8 path; use precision fp32, bf16 or auto")
    net, audio = read_checkpoint(checkpoint_dir(model_dir))
    for key in ("hop_s", "aggregate"):  # serving-time choices may be overridden per archive
        if key in settings:
            setattr(audio, key, type(getattr(audio, key))(settings[key]))
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
    rate = model.audio.model_rate
    rows, start_s = windows(recording.waveform, model.audio)
    starts = [int(round(s * rate)) for s in start_s]
    step = max(1, int(round(model.explain_resolution_s * rate)))
    base = [w["probability"] for w in answer["windows"]]
    attributions = [
        {"start_s": round(a / rate, 3), "end_s": round(b / rate, 3),
         "score": answer["probability"] - _aggregate(model, probs)}
        for (a, b), probs in occlusion_scores(rows, starts, len(recording.waveform), step, base, model.batch_windows,
                                              lambda stack: forward(model, torch.from_numpy(stack)).double().numpy())
    ]
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
