"""The respiratory core in-process: decoding, resampling, windowing, the CNN, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from marport.handlers import respiratory, respiratory_net
from marport.handlers.contract import Request, RequestError
from marport.handlers.endpoint import load_model
from tests.audio_helpers import FORMATS, encode, npy_bytes, pickle_canary_npy, plain_pickle, tone


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = respiratory.RespiratoryCNN().eval()
    return respiratory.Respiratory.around(net, respiratory.AudioConfig(), max_duration_s=60, max_channels=4)


def parse(model, body, content_type="audio/wav", **headers):
    return model.parse(Request(body=body, content_type=content_type, headers=headers))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_every_format_rate_and_layout_decodes(model, fmt, rate, channels):
    seconds = 2.5
    recording = parse(model, encode(tone(seconds, rate, channels=channels), rate, fmt))
    assert recording.waveform.dtype == np.float32 and recording.waveform.ndim == 1
    # MP3 and Vorbis pad a few milliseconds; PCM is exact.
    assert recording.duration_s == pytest.approx(seconds, abs=0.08)
    assert len(recording.waveform) == pytest.approx(seconds * model.audio.model_rate, abs=0.08 * 1600)
    assert np.abs(recording.waveform).max() == pytest.approx(1.0, abs=1e-4)  # peak-normalised
    assert recording.flags == []


def test_resampling_keeps_the_band_and_removes_what_would_alias(model):
    rate = 44100
    low = respiratory.to_model_rate(tone(4, rate, hz=200)[:, None], rate, model.audio)
    spectrum = np.abs(np.fft.rfft(low))
    peak_hz = np.argmax(spectrum) * model.audio.model_rate / len(low)
    assert peak_hz == pytest.approx(200, abs=2)
    # 1100 Hz is above the CNN's 800 Hz Nyquist limit: filtered, not folded to 500 Hz.
    high = respiratory.to_model_rate(tone(4, rate, hz=1100)[:, None], rate, model.audio)
    assert np.sqrt(np.mean(high**2)) < 0.01 * np.sqrt(np.mean(low**2))


def test_stereo_is_mixed_down(model):
    stereo = np.stack([tone(1, 8000), -tone(1, 8000)], axis=1)  # channels cancel out
    assert np.abs(respiratory.to_model_rate(stereo, 8000, model.audio)).max() < 1e-6


@pytest.mark.parametrize("seconds, starts", [(5, [0.0]), (20, [0.0]), (31.2, [0.0, 10.0, 20.0]), (45, [0.0, 10.0, 20.0, 30.0])])
def test_windows_cover_the_recording(model, seconds, starts):
    waveform = np.ones(int(seconds * model.audio.model_rate), dtype=np.float32)
    rows, got = respiratory.windows(waveform, model.audio)
    assert got == starts
    assert rows.shape == (len(starts), 32000)  # 20 s at 8 kHz, decimated by 5
    assert rows[-1, : len(waveform) - int(starts[-1] * 1600)].min() == 1.0
    if seconds < 20:
        assert rows[0, int(seconds * 1600) :].max() == 0.0  # zero-padded


@pytest.mark.parametrize("samples", [6400, 32000, 80000])
def test_cnn_output_shape_for_any_length(model, samples):
    with torch.inference_mode():
        assert model.net(torch.zeros(3, samples)).shape == (3, 2)


def test_answer_shape_for_a_long_recording(model):
    long = parse(model, encode(tone(31.2, 16000), 16000, "flac"), "audio/flac")
    short = parse(model, encode(tone(3, 8000), 8000))
    answers = model.predict([long, short])
    assert [len(a["windows"]) for a in answers] == [3, 1]
    first = answers[0]
    assert first["duration_s"] == pytest.approx(31.2, abs=1e-3)
    assert first["probability"] == pytest.approx(np.mean([w["probability"] for w in first["windows"]]))
    assert first["label"] == ("unhealthy" if first["probability"] >= first["threshold"] else "healthy")
    # Batched windows give the same answers as one recording at a time.
    alone = model.predict([short])[0]
    assert alone["probability"] == pytest.approx(answers[1]["probability"], abs=1e-5)


def test_npy_input_with_sample_rate_header(model):
    samples = tone(2, 16000)
    from_npy = parse(model, npy_bytes(samples), "application/x-npy", **{"x-sample-rate": "16000"})
    from_wav = parse(model, encode(samples, 16000, "wav-float"))
    np.testing.assert_allclose(from_npy.waveform, from_wav.waveform, atol=1e-6)
    int16 = parse(model, npy_bytes((samples * 32767).astype(np.int16)), "application/x-npy", **{"x-sample-rate": "16000"})
    np.testing.assert_allclose(int16.waveform, from_wav.waveform, atol=1e-3)


def test_silence_is_answered_but_flagged(model):
    recording = parse(model, encode(np.zeros(16000, dtype=np.float32), 8000))
    assert recording.flags == ["silent"]
    assert model.predict([recording])[0]["flags"] == ["silent"]


def truncated_wav():
    data = encode(tone(2, 8000), 8000)
    return data[: len(data) // 2]


BAD = [
    ("empty body", lambda tmp: b"", "audio/wav", {}, "empty_body"),
    ("not audio", lambda tmp: b"just some text, not a recording" * 4, "audio/wav", {}, "unreadable_audio"),
    ("truncated", lambda tmp: truncated_wav(), "audio/wav", {}, "truncated_audio"),
    ("zero length", lambda tmp: encode(np.zeros(0, dtype=np.float32), 8000), "audio/wav", {}, "empty_audio"),
    ("nan", lambda tmp: npy_bytes(np.array([0.1, np.nan] * 800, dtype=np.float32)), "application/x-npy",
     {"x-sample-rate": "8000"}, "non_finite_audio"),
    ("inf", lambda tmp: encode(np.array([0.1, np.inf] * 800, dtype=np.float32), 8000, "wav-float"), "audio/wav", {},
     "non_finite_audio"),
    ("object npy", lambda tmp: pickle_canary_npy(str(tmp / "canary")), "application/x-npy", {"x-sample-rate": "8000"},
     "pickled_array"),
    ("raw pickle", lambda tmp: plain_pickle(str(tmp / "canary")), "application/octet-stream", {}, "unreadable_audio"),
    ("no rate", lambda tmp: npy_bytes(np.zeros(100, dtype=np.float32)), "application/x-npy", {}, "missing_sample_rate"),
    ("bad rate", lambda tmp: npy_bytes(np.zeros(100, dtype=np.float32)), "application/x-npy", {"x-sample-rate": "fast"},
     "invalid_sample_rate"),
    ("3-d npy", lambda tmp: npy_bytes(np.zeros((2, 2, 2), dtype=np.float32)), "application/x-npy",
     {"x-sample-rate": "8000"}, "invalid_npy"),
    ("empty 2-d npy", lambda tmp: npy_bytes(np.zeros((100, 0), dtype=np.float32)), "application/x-npy",
     {"x-sample-rate": "8000"}, "empty_audio"),
    ("bool npy", lambda tmp: npy_bytes(np.ones(100, dtype=bool)), "application/x-npy", {"x-sample-rate": "8000"},
     "invalid_npy"),
    ("too long", lambda tmp: encode(np.zeros(8000 * 61, dtype=np.float32), 8000), "audio/wav", {}, "audio_too_long"),
    ("too many channels", lambda tmp: encode(tone(1, 8000, channels=5), 8000), "audio/wav", {}, "too_many_channels"),
]


@pytest.mark.parametrize("name, make, content_type, headers, kind", BAD, ids=[b[0] for b in BAD])
def test_bad_recordings_raise_clear_errors(model, tmp_path, name, make, content_type, headers, kind):
    with pytest.raises(RequestError) as caught:
        parse(model, make(tmp_path), content_type, **headers)
    assert caught.value.kind == kind
    assert 400 <= caught.value.code < 500 and len(caught.value.message) > 15
    assert " object at 0x" not in caught.value.message, "a Python object's repr reached the client"
    assert not (tmp_path / "canary").exists(), "request data was unpickled"


def test_checkpoint_round_trip_keeps_audio_settings(tmp_path, model):
    audio = respiratory.AudioConfig(window_s=4.0, hop_s=2.0, threshold=0.37)
    respiratory_net.save_checkpoint(str(tmp_path), model.net, audio)
    loaded = load_model(respiratory.Respiratory, str(tmp_path), {"handler": {"max_duration_s": 30,
                                                                           "fold_batchnorm": False}})
    assert (loaded.audio.window_s, loaded.audio.threshold, loaded.audio.window_samples) == (4.0, 0.37, 6400)
    assert loaded.limits.max_duration_s == 30 and loaded.dtype == torch.float32
    for name, tensor in model.net.state_dict().items():
        assert torch.equal(tensor, loaded.net.state_dict()[name])


def test_folded_batchnorm_computes_the_same_logits(tmp_path, model):
    respiratory_net.save_checkpoint(str(tmp_path), model.net, respiratory.AudioConfig())
    plain = load_model(respiratory.Respiratory, str(tmp_path), {"handler": {"fold_batchnorm": False}})
    folded = load_model(respiratory.Respiratory, str(tmp_path), {"handler": {"fold_batchnorm": True}})
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in folded.net.modules())
    windows = torch.randn(3, 4000)
    with torch.inference_mode():
        torch.testing.assert_close(folded.net(windows), plain.net(windows), atol=1e-4, rtol=1e-4)


def test_a_recording_shorter_than_one_model_sample_is_refused(model):
    """One sample at 96 kHz lasts 10 µs: nothing remains at 1600 Hz, so there is nothing to score."""
    import io

    buf = io.BytesIO()
    np.save(buf, np.array([0.5], dtype=np.float32))
    request = Request(body=buf.getvalue(), content_type="application/x-npy", headers={"x-sample-rate": "96000"})
    with pytest.raises(RequestError) as caught:
        model.parse(request)
    assert caught.value.kind == "empty_audio" and "shorter than one sample" in caught.value.message
