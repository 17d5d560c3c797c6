"""Respiratory-sound CNN as a served Model: a cough or breath recording in, P(unhealthy) out.

A recording (WAV, FLAC, OGG or MP3, or a float .npy array) is decoded a block at a time, mixed down to mono and
resampled to the model's rate (audio_input.py, which bounds that work first), cut into overlapping windows, scored
by a raw-waveform CNN (respiratory_net.py), and the window scores aggregated into one probability. Training
(marport.train_respiratory) decodes and scores through the same methods; explanations are occlusion.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .audio_input import AudioLimits, Decoded, decode, to_rate
from .bodies import as_bytes, check_body_size, refuse_form
from .contract import Model, Request, RequestError
from .occlusion import occlusion_scores
from .respiratory_net import LABELS, AudioConfig, RespiratoryCNN, fold_batchnorm, read_checkpoint, windows
from .review import ReviewBand, mark
from .settings import checkpoint_dir, setting_flag, shipped_settings

SILENCE_PEAK = 1e-4  # below this peak amplitude a recording is treated as silent
__all__ = ["LABELS", "AudioConfig", "Recording", "Respiratory", "RespiratoryCNN", "to_model_rate", "windows"]


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


def prepared(decoded: Decoded, audio: AudioConfig) -> Recording:
    """A decoded mono waveform at the model's rate -> normalised float32, flagged when silent."""
    waveform = decoded.waveform
    if waveform.size == 0:  # a few samples at a high rate: nothing left at the CNN's rate
        raise RequestError(f"the recording lasts {decoded.duration_s * 1000:.2f} ms: shorter than one sample at "
                           f"the model's {audio.model_rate} Hz", kind="empty_audio")
    flags = []
    peak = float(np.abs(waveform).max())
    if peak < SILENCE_PEAK:
        flags.append("silent")  # answered, but the score means little
    else:
        waveform = waveform / peak  # loudness varies by phone and caller; shape matters
    return Recording(waveform=waveform.astype(np.float32), duration_s=decoded.duration_s, flags=flags,
                     decode_ms=decoded.decode_ms, resample_ms=decoded.resample_ms,
                     source_rate=decoded.source_rate, channels=decoded.channels)


def to_model_rate(samples: np.ndarray, rate: int, audio: AudioConfig) -> np.ndarray:
    """(frames, channels) samples already in memory -> mono at the CNN's rate, as serving computes it."""
    limits = AudioLimits(max_duration_s=float("inf"), max_channels=samples.shape[1] if samples.ndim == 2 else 1,
                         max_sample_rate=max(rate, 1), max_decoded_samples=samples.size)
    blocks = iter([samples if samples.ndim == 2 else samples[:, None]])
    return to_rate(blocks, rate, audio.model_rate, limits, limits.max_channels).waveform.astype(np.float32)


class Respiratory(Model):
    defaults = shipped_settings("respiratory")

    @classmethod
    def around(cls, net: RespiratoryCNN | None, audio: AudioConfig, **settings: Any) -> "Respiratory":
        """A CPU model around a network in memory, with the shipped settings but `settings` (training, tests)."""
        from .settings import device_settings

        model = cls(device_settings({**cls.defaults, **settings}, torch.device("cpu")), torch.device("cpu"))
        model._configure(net, audio)
        return model

    def load(self, model_dir: str) -> None:
        """Weights from safetensors (no unpickling); audio settings from config.json (respiratory_net)."""
        if self.precision == "int8":
            raise ValueError("the respiratory CNN has no int8 path; use precision fp32, bf16 or auto")
        net, audio = read_checkpoint(checkpoint_dir(model_dir))
        for key in ("hop_s", "aggregate"):  # serving-time choices an archive may override
            if key in self.settings:
                setattr(audio, key, type(getattr(audio, key))(self.settings[key]))
        if setting_flag(self.settings, "fold_batchnorm", True):
            net = fold_batchnorm(net)
        self._configure(net.to(device=self.device, dtype=self.dtype), audio)

    def _configure(self, net: Any, audio: AudioConfig) -> None:
        get = self.settings.__getitem__
        self.net, self.audio = net, audio
        self.limits = AudioLimits(max_duration_s=float(get("max_duration_s")), max_channels=int(get("max_channels")),
                                  max_sample_rate=int(get("max_sample_rate")),
                                  max_decoded_samples=int(get("max_decoded_samples")))
        self.batch_windows = int(get("batch_windows"))  # windows per forward pass: bounds activation memory
        self.explain_resolution_s = float(get("explain_resolution_s"))  # occlusion's silenced stretch
        self.explain_max_s = float(get("explain_max_s"))  # audio one explained request may hold
        self.review = ReviewBand.from_settings(self.settings)

    def decode(self, data: bytes, media_type: str = "", sample_rate: Any = None) -> Recording:
        """Recording bytes (any accepted format) -> the Recording the CNN scores."""
        return prepared(decode(data, media_type, lambda: sample_rate, self.audio.model_rate, self.limits), self.audio)

    def read(self, request: Request) -> Recording:
        refuse_form(request, "audio/wav")
        if request.body is None:
            raise RequestError("request body is empty; send the recording's bytes", kind="empty_body")
        check_body_size(request.body, self.max_body_bytes)
        data = as_bytes(request.body)
        if not data:
            raise RequestError("request body is empty; send the recording's bytes", kind="empty_body")
        recording = self.decode(data, request.media_type, request.option("sample_rate"))
        if request.explain:
            if recording.duration_s > self.explain_max_s:
                raise RequestError(
                    f"an explanation was asked for {recording.duration_s:.1f} s of audio; at most "
                    f"{self.explain_max_s:g} s per request are explained (explain_max_s); send a shorter excerpt",
                    kind="too_long_to_explain", code=413)
            recording.explain = True
        return recording

    def preprocess(self, recordings: Sequence[Recording]) -> tuple[torch.Tensor, list]:
        """Windows of every recording, stacked for one forward pass, and each recording's window starts."""
        cut = [windows(r.waveform, self.audio) for r in recordings]
        return torch.from_numpy(np.concatenate([rows for rows, _ in cut])), [starts for _, starts in cut]

    def forward(self, batch: tuple[torch.Tensor, list]) -> tuple[torch.Tensor, list]:
        return self.window_probs(batch[0]), batch[1]

    def window_probs(self, stacked: torch.Tensor) -> torch.Tensor:
        """P(unhealthy) per window, batch_windows at a time (bounded memory)."""
        out = []
        with torch.inference_mode():
            for chunk in torch.split(stacked, self.batch_windows):
                logits = self.net(chunk.to(device=self.device, dtype=self.dtype)).float()
                out.append(torch.softmax(logits / self.audio.temperature, dim=-1)[:, 1].cpu())
        return torch.cat(out) if out else torch.empty(0)

    def aggregate(self, probs: Sequence[float]) -> float:
        """A recording's probability from its windows' (audio.aggregate: mean or max)."""
        return float(max(probs)) if self.audio.aggregate == "max" else float(sum(probs) / len(probs))

    def postprocess(self, output: tuple[torch.Tensor, list], recordings: Sequence[Recording]) -> list:
        values, index = output[0].tolist(), output[1]
        answers, at = [], 0
        for starts, recording in zip(index, recordings):
            window_probs = values[at : at + len(starts)]
            at += len(starts)
            probability = self.aggregate(window_probs)
            answer = {"label": LABELS[1] if probability >= self.audio.threshold else LABELS[0],
                      "probability": probability, "threshold": self.audio.threshold,
                      "duration_s": round(recording.duration_s, 3),
                      "windows": [{"start_s": round(s, 3), "probability": p} for s, p in zip(starts, window_probs)]}
            if recording.flags:
                answer["flags"] = list(recording.flags)
            mark(answer, probability, self.review)
            if recording.explain:
                self.explain(recording, answer)
            answers.append(answer)
        return answers

    def explain(self, recording: Recording, answer: dict) -> None:
        """Occlusion over time: silence explain_resolution_s at a time and see how far P(unhealthy) falls.
        Only the windows overlapping a silenced stretch are scored again."""
        rate = self.audio.model_rate
        rows, start_s = windows(recording.waveform, self.audio)
        starts = [int(round(s * rate)) for s in start_s]
        step = max(1, int(round(self.explain_resolution_s * rate)))
        base = [w["probability"] for w in answer["windows"]]
        scored = occlusion_scores(rows, starts, len(recording.waveform), step, base, self.batch_windows,
                                  lambda stack: self.window_probs(torch.from_numpy(stack)).double().numpy())
        answer["attributions"] = [{"start_s": round(a / rate, 3), "end_s": round(b / rate, 3),
                                   "score": answer["probability"] - self.aggregate(probs)}
                                  for (a, b), probs in scored]
        answer["explanation"] = {"method": "occlusion", "target": LABELS[1], "baseline": "silence",
                                 "resolution_s": self.explain_resolution_s}

    def figures(self, recordings: Sequence[Recording], answers: Sequence[dict]) -> dict:
        return {"Recordings": len(recordings), "AudioSeconds": sum(r.duration_s for r in recordings),
                "DecodeMs": sum(r.decode_ms for r in recordings), "ResampleMs": sum(r.resample_ms for r in recordings),
                "ExplanationsServed": sum(r.explain for r in recordings),
                "ReviewFlagged": sum(bool(a.get("review")) for a in answers)}
