"""A fixed corpus of hostile request bodies, and a rig that drives a handler with TorchServe's own Context.

Each case is (name, body, headers, expect): `expect` is an error type the answer must
carry (a 4xx), "4xx" for any client error, or "ok" for a body that is odd but valid
and must be answered exactly as its plain twin (`twin`).
"""

from __future__ import annotations

import codecs
import json
import struct
from dataclasses import dataclass, field

import numpy as np
import yaml

from tests.audio_helpers import cough_like, encode, npy_bytes, pickle_canary_npy
from tests.load_mix import strict_json as bench_strict_json

GOOD_TEXT = "The staff were friendly and the room was spotless"


@dataclass
class Case:
    name: str
    body: bytes
    headers: dict
    expect: str  # an error type, "4xx", or "ok"
    twin: tuple[bytes, dict] | None = None  # for "ok": the plain request it must equal
    code: int | None = None  # the status, where it is exact


def _ct(value: str) -> dict:
    return {"Content-Type": value}


def sentiment_cases() -> list[Case]:
    text = GOOD_TEXT
    plain = (text.encode(), _ct("text/plain"))
    as_json = (json.dumps({"text": text}).encode(), _ct("application/json"))
    return [
        Case("deep-array", b"[" * 50_000, _ct("application/json"), "json_too_deep", code=400),
        Case("deep-object", b'{"text":' * 30_000, _ct("application/json"), "4xx"),
        Case("nan-literal", b'{"text": "ok", "x": NaN}', _ct("application/json"), "invalid_json", code=400),
        Case("infinity-literal", b'{"text": -Infinity}', _ct("application/json"), "invalid_json", code=400),
        Case("huge-integer", b'{"text": "ok", "n": 1' + b"0" * 5000 + b"}", _ct("application/json"), "invalid_json"),
        Case("huge-float-as-text", b'{"text": 1e999}', _ct("application/json"), "invalid_type", code=400),
        Case("lone-surrogate-escape", b'{"text": "bad \\ud800 text"}', _ct("application/json"), "invalid_text"),
        Case("lone-surrogate-bytes", b"bad \xed\xa0\x80 text", _ct("text/plain"), "invalid_encoding"),
        Case("zero-width-only", "\u200b\u200c\u200d\u2060\ufeff".encode(), _ct("text/plain"), "empty_text"),
        Case("controls-only", b'{"text": "\\u0000\\u0001\\t\\n"}', _ct("application/json"), "empty_text"),
        Case("bom-utf8", codecs.BOM_UTF8 + text.encode(), _ct("text/plain"), "ok", plain),
        Case("utf16-bom", text.encode("utf-16"), _ct("text/plain"), "ok", plain),
        Case("utf16-json-bom", json.dumps({"text": text}).encode("utf-16"), _ct("application/json"), "ok", as_json),
        Case("charset-utf16le", text.encode("utf-16-le"), _ct("text/plain; charset=UTF-16LE"), "ok", plain),
        Case("charset-latin1", text.encode("latin-1"), _ct("text/plain; charset=iso-8859-1"), "ok", plain),
        Case("charset-quoted", text.encode(), _ct('application/json; charset="utf-8"'), "invalid_json", code=400),
        Case("charset-unknown", text.encode(), _ct("text/plain; charset=klingon"), "unsupported_charset", code=415),
        Case("charset-not-text", text.encode(), _ct("text/plain; charset=base64"), "unsupported_charset", code=415),
        Case("charset-lies", text.encode("utf-16"), _ct("text/plain; charset=utf-8"), "invalid_encoding"),
        Case("too-many-items", json.dumps({"inputs": ["ok"] * 10_000}).encode(), _ct("application/json"),
             "too_many_inputs", code=413),
        Case("too-many-tokens", json.dumps({"inputs": ["word " * 900] * 64}).encode(), _ct("application/json"),
             "too_many_tokens", code=413),
        Case("body-too-large", b"a" * (5 * 1024 * 1024), _ct("text/plain"), "body_too_large", code=413),
        Case("wrong-type", b"\x89PNG\r\n", _ct("image/png"), "unsupported_media_type", code=415),
        Case("not-acceptable", text.encode(), {**_ct("text/plain"), "Accept": "text/csv"}, "not_acceptable", code=406),
        Case("json-scalar", b"42", _ct("application/json"), "invalid_json_shape", code=400),
    ]


def _wav_with(samples: np.ndarray, sample_rate: int, **patch) -> bytes:
    """A 16-bit WAV whose fmt/data header fields are overwritten (lies about channels, rate, size)."""
    data = bytearray(encode(samples, sample_rate, "wav-16"))
    fmt = data.index(b"fmt ") + 8
    fields = {"channels": (fmt + 2, "<H"), "rate": (fmt + 4, "<I"), "byte_rate": (fmt + 8, "<I"),
              "bits": (fmt + 14, "<H"), "data_size": (data.index(b"data") + 4, "<I")}
    for name, value in patch.items():
        offset, form = fields[name]
        struct.pack_into(form, data, offset, value)
    return bytes(data)


def _npy_header_claiming(shape: tuple, dtype: str = "<f4", payload: bytes = b"\0" * 64) -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


def respiratory_cases(canary_path: str) -> list[Case]:
    clip = cough_like(3, 16000, 11)
    wav = encode(clip, 16000, "wav-16")
    npy = {"Content-Type": "application/x-npy", "X-Sample-Rate": "16000"}
    huge = np.stack([clip / np.abs(clip).max() * 3e38] * 8, axis=1).astype(np.float32)
    return [
        Case("random-bytes", bytes(range(256)) * 8, _ct("audio/wav"), "unreadable_audio", code=400),
        Case("wav-zero-channels", _wav_with(clip, 16000, channels=0), _ct("audio/wav"), "4xx"),
        Case("wav-1000-channels", _wav_with(clip, 16000, channels=1000), _ct("audio/wav"), "4xx"),
        Case("wav-rate-zero", _wav_with(clip, 16000, rate=0, byte_rate=0), _ct("audio/wav"), "4xx"),
        Case("wav-rate-1hz", _wav_with(clip, 16000, rate=1, byte_rate=2), _ct("audio/wav"), "4xx"),
        Case("wav-rate-10mhz", _wav_with(clip, 16000, rate=10_000_000, byte_rate=20_000_000), _ct("audio/wav"), "4xx"),
        Case("wav-size-overstated", _wav_with(clip, 16000, data_size=len(wav) * 4), _ct("audio/wav"),
             "truncated_audio", code=400),
        Case("wav-size-streaming", _wav_with(clip, 16000, data_size=0xFFFFFFFF), _ct("audio/wav"), "ok",
             (wav, _ct("audio/wav"))),
        Case("wav-truncated", wav[: len(wav) // 3], _ct("audio/wav"), "truncated_audio", code=400),
        Case("npy-absurd-shape", _npy_header_claiming((10**12,)), npy, "invalid_npy", code=400),
        Case("npy-shape-overflow", _npy_header_claiming((2**62, 2**62)), npy, "invalid_npy", code=400),
        Case("npy-3d", npy_bytes(np.zeros((4, 4, 4), np.float32)), npy, "invalid_npy", code=400),
        Case("npy-nan", npy_bytes(np.full(1600, np.nan, np.float32)), npy, "non_finite_audio", code=400),
        Case("npy-inf", npy_bytes(np.full(1600, np.inf, np.float64)), npy, "non_finite_audio", code=400),
        Case("npy-huge-finite", npy_bytes(huge), npy, "ok", (npy_bytes(clip), npy)),
        Case("npy-object", pickle_canary_npy(canary_path), npy, "pickled_array", code=400),
        Case("npy-structured", npy_bytes(np.zeros(8, dtype=[("a", "<f4")])), npy, "invalid_npy", code=400),
        Case("npy-complex", npy_bytes(np.zeros(8, np.complex64)), npy, "invalid_npy", code=400),
        Case("npy-rate-absurd", npy_bytes(clip), {**npy, "X-Sample-Rate": "9" * 400}, "invalid_sample_rate", code=400),
        Case("npy-rate-nan", npy_bytes(clip), {**npy, "X-Sample-Rate": "nan"}, "invalid_sample_rate", code=400),
        Case("too-long", encode(np.zeros(70_000, np.float32), 100, "wav-16"), _ct("audio/wav"), "audio_too_long",
             code=413),
        Case("empty", b"", _ct("audio/wav"), "empty_body", code=400),
        Case("not-acceptable", wav, {**_ct("audio/wav"), "Accept": "audio/wav"}, "not_acceptable", code=406),
    ]


# --------------------------------------------------------------------------- a handler under TorchServe's Context


def strict_json(text):
    """Parse an answer as a strict client would: NaN or Infinity is an error."""
    assert isinstance(text, str), f"the handler returned {type(text).__name__}, not serialised JSON"
    return bench_strict_json(text)


@dataclass
class HandlerRig:
    """A model's TorchServe handler, initialised from an extracted archive, called as TorchServe calls it."""

    handler: object
    model_dir: object
    name: str
    calls: int = field(default=0)

    @classmethod
    def load(cls, handler_class, model_dir, name):
        handler = handler_class()
        handler.initialize(cls._context(model_dir, name, [{}]))
        return cls(handler, model_dir, name)

    @staticmethod
    def _context(model_dir, name, headers):
        from ts.context import Context, RequestProcessor

        config = yaml.safe_load((model_dir / "model-config.yaml").read_text())
        context = Context(name, str(model_dir), {}, len(headers), None, "0.12.0", model_yaml_config=config)
        context.request_processor = [RequestProcessor(h) for h in headers]
        context.request_ids = {i: f"req-{i}" for i in range(len(headers))}
        return context

    def run(self, rows: list[tuple[bytes, dict]]) -> list[tuple[int, object]]:
        """rows: (body, headers) as a raw-bytes TorchServe delivers them; returns (status, parsed JSON)."""
        headers = []
        for _, hdrs in rows:
            ct = hdrs.get("Content-Type", "")
            # TorchServe gives the part's type without parameters and the request headers as sent.
            headers.append({"body": {"content-type": ct.split(";")[0]}, **hdrs})
        context = self._context(self.model_dir, self.name, headers)
        answers = self.handler.handle([{"body": bytearray(body)} for body, _ in rows], context)
        assert len(answers) == len(rows)
        return [(context.get_response_status(i)[0] or 200, strict_json(a)) for i, a in enumerate(answers)]
