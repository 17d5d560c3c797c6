"""What decoding a recording costs per sample, by format: the figures `max_decoded_samples` derives from.

Each format is decoded in-process by handlers/audio_input.py exactly as a request is (block by block,
mixed to mono, resampled to the CNN's 1,600 Hz), timed (median of `reps`) with its peak traced memory.
The largest respiratory handler call is batchSize recordings at max_decoded_samples of the slowest
format: it must fit in half of the call's budget, like the other caps (docs/caps.md, "Caps").
"""

from __future__ import annotations

import io
import statistics
import time
import tracemalloc

import numpy as np
import soundfile as sf
import yaml

from marport.handlers import audio_input  # noqa: E402
from marport.handlers.serving_common import call_budget_s  # noqa: E402
from marport.resources import model_config

from .served import log

# (name, container, subtype, rate, channels, seconds, constant blocks: the shape of a compression bomb)
FORMATS = [
    ("WAV 16-bit mono 48 kHz", "WAV", "PCM_16", 48_000, 1, 60, False),
    ("WAV 16-bit stereo 48 kHz", "WAV", "PCM_16", 48_000, 2, 60, False),
    ("WAV float stereo 48 kHz", "WAV", "FLOAT", 48_000, 2, 30, False),
    ("WAV mu-law mono 8 kHz", "WAV", "ULAW", 8_000, 1, 600, False),
    ("FLAC 16-bit stereo 48 kHz", "FLAC", "PCM_16", 48_000, 2, 60, False),
    ("FLAC 8 channels 96 kHz, constant", "FLAC", "PCM_16", 96_000, 8, 30, True),
    ("Ogg Vorbis mono 48 kHz", "OGG", "VORBIS", 48_000, 1, 60, False),
    ("MP3 mono 48 kHz", "MP3", "MPEG_LAYER_III", 48_000, 1, 60, False),
]
UNBOUNDED = audio_input.AudioLimits(max_duration_s=1e9, max_channels=64, max_sample_rate=10**6,
                                    max_decoded_samples=10**12)


def encode(container: str, subtype: str, rate: int, channels: int, seconds: float, constant: bool) -> bytes:
    rng = np.random.default_rng(0)
    buf, left = io.BytesIO(), int(rate * seconds)
    with sf.SoundFile(buf, "w", rate, channels, format=container, subtype=subtype) as out:
        while left > 0:  # in blocks: libsndfile's Vorbis writer crashes on very large single writes
            n = min(left, 65_536)
            block = (np.full((n, channels), 0.25) if constant else 0.3 * rng.standard_normal((n, channels)))
            out.write(block.astype(np.float32))
            left -= n
    return buf.getvalue()


def decoding_bench(plan) -> dict:
    log("decoding: samples per second by format")
    reps = max(1, min(plan.reps, 3))
    rows = []
    for name, container, subtype, rate, channels, seconds, constant in FORMATS:
        body = encode(container, subtype, rate, channels, seconds, constant)
        times = []
        for _ in range(reps):
            started = time.perf_counter()
            decoded = audio_input.decode(body, "", lambda: None, 1600, UNBOUNDED)
            times.append(time.perf_counter() - started)
        tracemalloc.start()
        audio_input.decode(body, "", lambda: None, 1600, UNBOUNDED)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        samples = decoded.frames * channels
        rows.append({"format": name, "body_mb": len(body) / 1e6, "samples": samples, "seconds": statistics.median(times),
                     "msamples_per_s": samples / statistics.median(times) / 1e6, "peak_mb": peak / 1e6,
                     "whole_float32_mb": samples * 4 / 1e6})
    config = yaml.safe_load(model_config("respiratory").read_text())
    cap = int(config["handler"]["max_decoded_samples"])
    slowest = min(r["msamples_per_s"] for r in rows) * 1e6
    return {"formats": rows, "max_decoded_samples": cap, "batch_size": config["batchSize"],
            "largest_call_s": config["batchSize"] * cap / slowest, "budget_s": call_budget_s(config) / 2}
