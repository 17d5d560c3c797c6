"""What a recording may cost is bounded by what it decodes to, not by its bytes (audio_input.py).

Compressed bombs (a few KB of FLAC declaring hundreds of millions of samples), headers that lie
about their length, rate or channels, formats outside the allow-list, and the memory decoding
takes: all in-process, against the shipped caps and against small caps where a bomb at the
shipped size would take too long to build.
"""

from __future__ import annotations

import io
import struct
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marport.handlers import respiratory
from marport.handlers.contract import Request, RequestError
from marport.resources import model_config

SHIPPED = yaml.safe_load(model_config("respiratory").read_text())["handler"]


def model_with(**caps) -> respiratory.RespiratoryModel:
    torch.manual_seed(0)
    return respiratory.Respiratory.around(respiratory.RespiratoryCNN().eval(), respiratory.AudioConfig(), **caps)


@pytest.fixture(scope="module")
def shipped():
    return model_with(**{k: SHIPPED[k] for k in ("max_duration_s", "max_channels", "max_sample_rate",
                                                 "max_decoded_samples", "max_body_bytes")})


def constant(seconds: float, rate: int, channels: int, fmt: str = "FLAC", subtype: str = "PCM_16") -> bytes:
    """The bomb's shape: constant blocks compress to almost nothing, written a block at a time."""
    buf = io.BytesIO()
    block = np.full((65536, channels), 0.25, dtype=np.float32)
    left = int(seconds * rate)
    with sf.SoundFile(buf, "w", rate, channels, format=fmt, subtype=subtype) as out:
        while left > 0:
            out.write(block[: min(left, len(block))])
            left -= len(block)
    return buf.getvalue()


def parse(model, body: bytes, content_type: str = "audio/flac"):
    return model.parse(Request(body=body, content_type=content_type))


def test_shipped_caps_bound_the_work_and_fit_the_time_budget():
    from marport.handlers.settings import call_budget_s

    config = yaml.safe_load(model_config("respiratory").read_text())
    # Ten minutes of 48 kHz stereo is the largest accepted recording ...
    assert SHIPPED["max_decoded_samples"] == 600 * 48_000 * 2 == SHIPPED["max_duration_s"] * 48_000 * 2
    # ... and a full batch of them decodes, at the slowest measured 22 M samples/s, inside the call's budget.
    assert config["batchSize"] * SHIPPED["max_decoded_samples"] / 22e6 < call_budget_s(config) / 2
    assert config["responseTimeout"] <= 60  # SageMaker's real-time limit


def test_a_compressed_bomb_is_refused_from_its_header_before_decoding(shipped):
    bomb = constant(80, 96_000, 8)  # 61 M samples in a few KB: over max_decoded_samples
    assert len(bomb) < 200_000
    tracemalloc.start()
    with pytest.raises(RequestError) as raised:
        parse(shipped, bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (raised.value.kind, raised.value.code) == ("too_many_samples", 413)
    assert "max_decoded_samples" in raised.value.message and peak < 4_000_000


@pytest.mark.parametrize("rate", [192_000, 384_000])
def test_rates_above_the_cap_are_refused(shipped, rate):
    with pytest.raises(RequestError) as raised:
        parse(shipped, constant(0.5, rate, 1))
    assert raised.value.kind == "invalid_sample_rate" and "max_sample_rate" in raised.value.message


def test_decoding_holds_one_block_not_the_recording():
    """30 s of 8-channel 48 kHz FLAC is 46 MB as float32; decoding must never hold it."""
    model = model_with(max_decoded_samples=20_000_000, max_sample_rate=48_000)
    body = constant(30, 48_000, 8)
    tracemalloc.start()
    recording = parse(model, body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert recording.duration_s == pytest.approx(30) and recording.channels == 8
    full = 30 * 48_000 * 8 * 4
    assert peak < 8_000_000 < full / 5, f"peak {peak / 1e6:.1f} MB while decoding"


def test_streamed_and_one_shot_resampling_agree():
    rate = 44_100
    t = np.arange(rate * 3) / rate
    stereo = np.stack([np.sin(2 * np.pi * 300 * t), 0.5 * np.sin(2 * np.pi * 120 * t)], axis=1).astype(np.float32)
    import soxr

    streamed = respiratory.to_model_rate(stereo, rate, respiratory.AudioConfig())
    one_shot = soxr.resample(stereo.mean(axis=1), rate, 1600, quality="HQ")
    assert len(streamed) == len(one_shot)
    np.testing.assert_allclose(streamed, one_shot, atol=2e-3)


# libsndfile reads all of these; none is what a phone or docs/serving.md's formats send.
OTHER_FORMATS = [("AIFF", "PCM_16"), ("AU", "PCM_16"), ("W64", "PCM_16"), ("NIST", "PCM_16"), ("IRCAM", "PCM_16"),
                 ("VOC", "PCM_16"), ("CAF", "PCM_16"), ("MAT5", "PCM_16"), ("PAF", "PCM_16"), ("SVX", "PCM_16"),
                 ("HTK", "PCM_16"), ("SDS", "PCM_16"), ("AVR", "PCM_16"), ("RF64", "PCM_16"), ("MAT4", "PCM_16")]


@pytest.mark.parametrize("fmt, subtype", OTHER_FORMATS, ids=[f for f, _ in OTHER_FORMATS])
def test_formats_outside_the_allow_list_get_a_415_naming_them(shipped, fmt, subtype):
    body = constant(0.5, 16_000, 1, fmt, subtype)
    with pytest.raises(RequestError) as raised:
        parse(shipped, body, "audio/wav")
    assert (raised.value.kind, raised.value.code) == ("unsupported_audio_format", 415)
    assert fmt in raised.value.message


@pytest.mark.parametrize("fmt, subtype", [("WAV", "ULAW"), ("WAV", "ALAW"), ("WAV", "GSM610"), ("WAVEX", "PCM_16"),
                                          ("WAV", "IMA_ADPCM")])
def test_telephony_codecs_inside_wav_are_read(shipped, fmt, subtype):
    t = np.arange(8000 * 2) / 8000
    buf = io.BytesIO()
    sf.write(buf, (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 8000, format=fmt, subtype=subtype)
    assert parse(shipped, buf.getvalue(), "audio/wav").duration_s == pytest.approx(2.0, abs=0.05)


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "image/png",
                                          "application/x-www-form-urlencoded"])
def test_a_recording_sent_as_something_else_is_a_415(shipped, content_type):
    with pytest.raises(RequestError) as raised:
        parse(shipped, constant(0.5, 16_000, 1, "WAV"), content_type)
    assert raised.value.code == 415


def flac_with_streaminfo(body: bytes, rate: int | None, channels: int | None, total: int | None) -> bytes:
    """A FLAC whose STREAMINFO (sample rate, channels, total samples) says something else."""
    data = bytearray(body)
    assert data[:4] == b"fLaC"
    (packed,) = struct.unpack(">Q", data[18:26])  # rate:20 channels-1:3 bits-1:5 total:36
    old_rate, old_channels, bits, old_total = packed >> 44, (packed >> 41) & 7, (packed >> 36) & 31, packed & (2**36 - 1)
    rate = old_rate if rate is None else rate
    channels = old_channels if channels is None else channels - 1
    total = old_total if total is None else total
    struct.pack_into(">Q", data, 18, (rate << 44) | (channels << 41) | (bits << 36) | total)
    return bytes(data)


SMALL_CAPS = dict(max_decoded_samples=400_000, max_duration_s=20.0, max_sample_rate=96_000, max_channels=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(channels=st.integers(1, 8), rate=st.sampled_from([8_000, 16_000, 48_000, 96_000]),
       seconds=st.floats(0.05, 3.0), lie_rate=st.none() | st.integers(1, 2**20 - 1),
       lie_channels=st.none() | st.integers(1, 8), lie_total=st.none() | st.integers(0, 2**36 - 1))
def test_declared_and_decoded_sizes_that_disagree_stay_bounded(channels, rate, seconds, lie_rate, lie_channels,
                                                               lie_total):
    """Whatever STREAMINFO claims, a FLAC is refused with a 4xx or decoded within the caps, in bounded memory."""
    model = model_with(**SMALL_CAPS)
    body = flac_with_streaminfo(constant(seconds, rate, channels), lie_rate, lie_channels, lie_total)
    tracemalloc.start()
    try:
        recording = parse(model, body)
    except RequestError as err:
        assert 400 <= err.code < 500 and err.kind and err.message
    else:
        assert recording.duration_s <= SMALL_CAPS["max_duration_s"]
        frames = round(recording.duration_s * recording.source_rate)
        assert frames * recording.channels <= SMALL_CAPS["max_decoded_samples"]
        assert np.isfinite(recording.waveform).all()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 6_000_000


@settings(max_examples=60, deadline=None)
@given(declared=st.integers(0, 2**32 - 1), frames=st.integers(1, 40_000), channels=st.integers(1, 8))
def test_wav_data_sizes_that_lie_stay_bounded(declared, frames, channels):
    buf = io.BytesIO()
    sf.write(buf, np.full((frames, channels), 0.1, np.float32), 16_000, format="WAV", subtype="PCM_16")
    data = bytearray(buf.getvalue())
    struct.pack_into("<I", data, data.index(b"data") + 4, declared)
    model = model_with(**{**SMALL_CAPS, "max_decoded_samples": 100_000})
    try:
        recording = parse(model, bytes(data), "audio/wav")
    except RequestError as err:
        assert 400 <= err.code < 500
    else:
        assert round(recording.duration_s * 16_000) * channels <= 100_000


def test_npy_is_held_to_the_same_caps(shipped):
    big = np.zeros((10, 9), np.float32)
    body = io.BytesIO()
    np.save(body, big)
    request = Request(body=body.getvalue(), content_type="application/x-npy", headers={"x-sample-rate": "16000"})
    with pytest.raises(RequestError) as raised:
        shipped.parse(request)
    assert raised.value.kind == "too_many_channels"
    model = model_with(max_decoded_samples=1000)
    np.save(body := io.BytesIO(), np.zeros((600, 2), np.float32))
    request = Request(body=body.getvalue(), content_type="application/x-npy", headers={"x-sample-rate": "16000"})
    with pytest.raises(RequestError) as raised:
        model.parse(request)
    assert raised.value.kind == "too_many_samples"
    assert respiratory.Respiratory.defaults["max_decoded_samples"] == SHIPPED["max_decoded_samples"]
