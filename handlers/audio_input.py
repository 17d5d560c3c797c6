"""Untrusted recording bytes -> a mono waveform at the model's rate, with the work bounded first.

A compressed body is not bounded by its size, so a recording's cost is checked against its header before
decoding, counted again while decoding, and decoding reads BLOCK_FRAMES at a time into an incremental resampler.
Only ALLOWED_FORMATS are read; a `.npy` body's header is checked before allocating and it is never unpickled
(docs/caps.md)."""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import soundfile as sf
import soxr

from .contract import RequestError

NPY_TYPES = ("application/x-npy", "application/npy")
NPY_MAGIC = b"\x93NUMPY"
# libsndfile's format name -> its name in the 415 and docs/serving.md (WAV's telephony codecs included).
ALLOWED_FORMATS = {"WAV": "WAV", "WAVEX": "WAV (extensible)", "FLAC": "FLAC", "OGG": "Ogg (Vorbis, Opus)",
                   "MP3": "MP3"}
# Media types a recording may be sent as; anything else (text/plain, image/png, a form) is a 415.
AUDIO_TYPES = ("application/octet-stream", "binary/octet-stream", "application/ogg", "")
BLOCK_FRAMES = 32_768  # frames decoded at a time: 8 channels x 32k x 4 bytes = 1 MiB per block
MIN_RATE = 100  # Hz: a header below this is broken or lying
UNKNOWN_LENGTH = 2**63 - 1  # libsndfile's frame count for a stream that does not declare its length
TRUNCATED_DATA = re.compile(r"data\s*:\s*(\d+)\s*\(should be (\d+)\)")
STREAMING_SIZES = (0, 0xFFFFFFFF)  # data sizes streaming writers use for "unknown"
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


@dataclass(frozen=True)
class AudioLimits:
    """What one recording may cost (values and their reasons: model-config.yaml; docs/caps.md, "Caps")."""

    max_duration_s: float  # seconds of audio per request
    max_channels: int
    max_sample_rate: int  # Hz, as declared by the header (or sent with a .npy): resampling work grows with it
    max_decoded_samples: int  # frames x channels: bounds the decoding and resampling work


@dataclass
class Decoded:
    """A recording mixed to mono at the target rate (not yet normalised) and what it cost."""

    waveform: np.ndarray  # float64
    source_rate: int
    channels: int
    frames: int  # at the source rate
    decode_ms: float = 0.0
    resample_ms: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.frames / self.source_rate


def _empty() -> RequestError:
    return RequestError("recording has no samples (zero-length audio)", kind="empty_audio")


def _non_finite() -> RequestError:
    return RequestError("recording contains NaN or infinite samples", kind="non_finite_audio")


def check_declared(frames: int, rate: int, channels: int, limits: AudioLimits) -> None:
    """Refuse what the header declares before a sample is decoded."""
    if not MIN_RATE <= rate <= limits.max_sample_rate:
        raise RequestError(f"sample rate {rate} Hz is outside {MIN_RATE}-{limits.max_sample_rate} Hz "
                           "(max_sample_rate); resample the recording first", kind="invalid_sample_rate")
    if channels < 1:
        raise RequestError("recording declares no channels", kind="corrupt_audio")
    if channels > limits.max_channels:
        raise RequestError(f"recording has {channels} channels; at most {limits.max_channels} are accepted",
                           kind="too_many_channels")
    if frames == 0:
        raise _empty()
    if frames == UNKNOWN_LENGTH:
        raise RequestError("recording does not declare its length (a streamed FLAC?); re-encode it as a file",
                           kind="unknown_length")
    _check_counted(frames, rate, channels, limits)


def _check_counted(frames: int, rate: int, channels: int, limits: AudioLimits) -> None:
    if frames / rate > limits.max_duration_s:
        raise RequestError(f"recording lasts {frames / rate:.1f}s; at most {limits.max_duration_s:g}s are accepted "
                           "(max_duration_s)", kind="audio_too_long", code=413)
    if frames * channels > limits.max_decoded_samples:
        raise RequestError(
            f"recording decodes to {frames * channels} samples ({channels} channels x {frames} frames); at most "
            f"{limits.max_decoded_samples} are accepted (max_decoded_samples); send fewer channels or a lower rate",
            kind="too_many_samples", code=413)


def to_rate(blocks: Iterator[np.ndarray], rate: int, out_rate: int, limits: AudioLimits,
            channels: int, scale: float = 1.0) -> Decoded:
    """Mix each (frames, channels) block to mono and resample it incrementally to out_rate, counting frames against the
    caps as blocks arrive; `scale` keeps a float source louder than 1.0 within what soxr takes."""
    stream = None if rate == out_rate else soxr.ResampleStream(rate, out_rate, 1, dtype="float64", quality="HQ")
    pieces, frames, decode_s, resample_s = [], 0, 0.0, 0.0
    mark = time.perf_counter()
    for block in blocks:
        frames += len(block)
        _check_counted(frames, rate, channels, limits)
        if scale != 1.0:  # before mixing: a sum of channels near the float limit would overflow
            block = block * np.float64(scale)
        mono = block.mean(axis=1, dtype=np.float64)
        if not np.isfinite(mono).all():
            raise _non_finite()
        started = time.perf_counter()
        decode_s += started - mark
        pieces.append(mono if stream is None else stream.resample_chunk(mono, last=False))
        mark = time.perf_counter()
        resample_s += mark - started
    if frames == 0:
        raise _empty()
    started = time.perf_counter()
    if stream is not None:
        pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.float64), last=True))
    waveform = np.concatenate(pieces)
    resample_s += time.perf_counter() - started
    return Decoded(waveform, rate, channels, frames, decode_s * 1000, resample_s * 1000)


def peak_of(blocks: Iterator[np.ndarray]) -> float:
    """The largest absolute sample, block by block; NaN or infinity is refused here."""
    peak = 0.0
    for block in blocks:
        block_peak = float(np.abs(block).max()) if block.size else 0.0
        if not np.isfinite(block_peak):
            raise _non_finite()
        peak = max(peak, block_peak)
    return peak


def _scale_for(peak: float) -> float:
    return 1.0 / peak if peak > 1.0 else 1.0


def _unreadable(exc: Exception) -> RequestError:
    # libsndfile's message names the file it opened: for a body, an in-memory object's repr; only the reason helps
    reason = re.sub(r"^Error opening <[^>]*>: ", "", str(exc)).strip() or type(exc).__name__
    reason = re.sub(r"<[\w.]+ object at 0x[0-9a-fA-F]+>", "the body", reason)
    return RequestError(f"body is not a recording libsndfile can read ({reason}); send WAV, FLAC, OGG or MP3 bytes, "
                        "or a float array as application/x-npy", kind="unreadable_audio")


def decode_file(data: bytes, out_rate: int, limits: AudioLimits) -> Decoded:
    """WAV/FLAC/OGG/MP3 bytes -> mono at out_rate, block by block."""
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _unreadable(exc) from None
    if info.format not in ALLOWED_FORMATS:
        known = ", ".join(sorted(set(ALLOWED_FORMATS.values())))
        raise RequestError(f"the body is a {info.format} file ({info.format_info}); recordings are accepted as "
                           f"{known}, or a float array as application/x-npy", kind="unsupported_audio_format", code=415)
    check_declared(info.frames, info.samplerate, info.channels, limits)
    # Never more than the caps allow, whatever the header said: one frame past them is enough to refuse.
    allowed = min(info.frames, int(limits.max_duration_s * info.samplerate) + 1,
                  limits.max_decoded_samples // info.channels + 1)

    def blocks() -> Iterator[np.ndarray]:
        buffer = np.empty((min(BLOCK_FRAMES, allowed), info.channels), dtype=np.float32)  # reused for every block
        left = allowed
        try:
            with sf.SoundFile(io.BytesIO(data)) as sound:
                while left > 0:
                    want = min(len(buffer), left)
                    got = sound.read(want, dtype="float32", always_2d=True, out=buffer[:want])
                    left -= len(got)
                    if len(got):
                        yield got
                    if len(got) < want:
                        return
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise RequestError(f"recording could not be decoded: {exc}", kind="corrupt_audio") from None

    # Float samples may reach float32's limit: one extra pass finds the peak (other codecs decode to about +-1).
    scale = _scale_for(peak_of(blocks())) if info.subtype in FLOAT_SUBTYPES else 1.0
    decoded = to_rate(blocks(), info.samplerate, out_rate, limits, info.channels, scale)
    _check_complete(info)
    return decoded


def _check_complete(info) -> None:
    """libsndfile quietly plays what is left of a cut-short file; its header log
    ("data : 32000 (should be 15978)") says when the header promised more."""
    short = TRUNCATED_DATA.search(info.extra_info or "")
    declared, present = map(int, short.groups()) if short else (0, 0)
    if declared not in STREAMING_SIZES and declared > present:
        raise RequestError(f"recording is truncated: its header declares {declared} bytes of audio, the file holds "
                           f"{present}", kind="truncated_audio")


def _pickled() -> RequestError:
    return RequestError("the .npy holds Python objects (a pickle); only numeric arrays are accepted",
                        kind="pickled_array")


def _npy_header(data: bytes) -> tuple[tuple, np.dtype, bool, int]:
    """Shape, dtype, order and data offset from a .npy header, read without touching the data.

    np.load would allocate the array the header promises before reading it: a few
    bytes claiming a terabyte-sized shape must be refused first.
    """
    from numpy.lib import format as npy_format

    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        # Version 3 only adds UTF-8 field names, i.e. structured arrays, which are never samples.
        readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported; use 1.0")
        shape, fortran, dtype = readers[version](stream)
    except Exception as exc:  # numpy raises several types for a damaged header
        message = str(exc)
        if "allow_pickle" in message or "Object arrays" in message:
            raise _pickled() from None
        raise RequestError(f"body is not a valid .npy array: {message}", kind="invalid_npy") from None
    return shape, dtype, fortran, stream.tell()


def _npy_rate(rate: Any, limits: AudioLimits) -> int:
    if rate is None:
        raise RequestError("a .npy body needs its sample rate: send an X-Sample-Rate: 16000 header (or a "
                           "sample_rate form field)", kind="missing_sample_rate")
    try:
        value = int(rate)
    except (TypeError, ValueError, OverflowError):
        value = 0
    if not MIN_RATE <= value <= limits.max_sample_rate:
        raise RequestError(f"sample_rate must be a whole number of Hz between {MIN_RATE} and "
                           f"{limits.max_sample_rate} (max_sample_rate)", kind="invalid_sample_rate")
    return value


def decode_npy(data: bytes, rate: Any, out_rate: int, limits: AudioLimits) -> Decoded:
    """A .npy float or integer array (samples,) or (samples, channels), read in place, never unpickled."""
    shape, dtype, fortran, offset = _npy_header(data)
    if dtype.hasobject:
        raise _pickled()
    if dtype.names or not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise RequestError(f"the .npy has dtype {dtype}; send float or integer samples", kind="invalid_npy")
    if len(shape) not in (1, 2):
        raise RequestError(f"the .npy has shape {shape}; send (samples,) or (samples, channels)", kind="invalid_npy")
    count = int(np.prod(shape, dtype=object))
    if count == 0:
        raise RequestError("the .npy holds no samples (zero-length audio)", kind="empty_audio")
    if count * dtype.itemsize != len(data) - offset:
        raise RequestError(f"the .npy header promises shape {shape} of {dtype} ({count * dtype.itemsize} bytes) "
                           f"but {len(data) - offset} bytes follow it", kind="invalid_npy")
    sample_rate = _npy_rate(rate, limits)
    channels = shape[1] if len(shape) == 2 else 1
    check_declared(shape[0], sample_rate, channels, limits)
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    samples = array.reshape(shape, order="F" if fortran else "C").reshape(shape[0], -1)  # a view: nothing copied
    if np.issubdtype(dtype, np.integer):
        scale = 1.0 / float(np.iinfo(dtype).max)
    else:  # a float array may hold anything up to its type's limit
        scale = _scale_for(peak_of(_array_blocks(samples)))
    return to_rate(_array_blocks(samples), sample_rate, out_rate, limits, channels, scale)


def _array_blocks(samples: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, len(samples), BLOCK_FRAMES):
        yield samples[start : start + BLOCK_FRAMES]


def media_check(media_type: str, is_npy: bool) -> None:
    """Recordings come as audio/*, a .npy type, octet-stream or no type: a text or form body is a mistake."""
    if is_npy or media_type.startswith("audio/") or media_type in AUDIO_TYPES:
        return
    raise RequestError(f"unsupported content type {media_type!r} for a recording; send audio/wav, audio/flac, "
                       "audio/ogg or audio/mpeg (or application/x-npy with X-Sample-Rate)",
                       kind="unsupported_media_type", code=415)


def decode(data: bytes, media_type: str, rate_option: Callable[[], Any], out_rate: int,
           limits: AudioLimits) -> Decoded:
    """Any accepted recording body -> mono at out_rate (float64, not normalised)."""
    is_npy = media_type in NPY_TYPES or data.startswith(NPY_MAGIC)
    media_check(media_type, is_npy)
    if is_npy:
        return decode_npy(data, rate_option(), out_rate, limits)
    return decode_file(data, out_rate, limits)
