"""Audio decoding and normalisation, shared by the client and the server.

The client normalises local audio before sending it; the server's audio intake decodes
what it receives with the same functions, so both hear a clip the same way.

Local audio (a path, bytes, a file object, a numpy array, a `data:` URL) is decoded with
soundfile (WAV, FLAC, OGG/Opus, MP3) or PyAV (M4A/MP4, WebM and the rest), down-mixed to
mono, resampled to 16 kHz with soxr and sent as 16-bit PCM WAV in an `input_audio` part.
That moves decoding and resampling off the server, where they bottleneck under load.
Remote http(s) URLs are passed to the server as `audio_url` parts.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import mimetypes
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias, cast

import numpy as np
import numpy.typing as npt
import soundfile
import soxr

from audiotext.client._constants import HOP_LENGTH, SAMPLE_RATE
from audiotext.client._exceptions import AudioTooLongError, InvalidAudioError

__all__ = [
    "SAMPLE_RATE",
    "AudioSource",
    "AudioTooLongError",
    "InvalidAudioError",
    "PreparedAudio",
    "Samples",
    "audio_token_count",
    "decode",
    "encode_wav",
    "load_audio",
    "min_samples",
    "prepare_audio",
    "to_model_rate",
]

Samples: TypeAlias = npt.NDArray[np.float32]
# A path, a URL, encoded bytes, a binary file object, samples at 16 kHz, (samples, rate),
# or a Hugging Face datasets-style {"array": samples, "sampling_rate": rate}.
AudioSource: TypeAlias = (
    str
    | os.PathLike[str]
    | bytes
    | bytearray
    | memoryview
    | IO[bytes]
    | npt.NDArray[Any]
    | tuple[npt.NDArray[Any], int]
    | Mapping[str, Any]
)


@dataclass(frozen=True)
class PreparedAudio:
    """One audio item ready to send: its content part and, when known, its duration."""

    part: dict[str, Any]
    seconds: float | None


def is_remote_url(source: object) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def prepare_audio(source: AudioSource, *, normalize: bool = True) -> PreparedAudio:
    """Turn any supported source into a content part (remote URLs are passed through)."""
    if is_remote_url(source):
        return PreparedAudio({"type": "audio_url", "audio_url": {"url": source}}, None)
    if isinstance(source, np.ndarray | tuple | Mapping):
        samples, rate = _array_and_rate(source)
        return _wav_part(samples, rate, normalize)
    data = read_bytes(source)
    if not normalize:
        url = f"data:{sniff_mime(data, source)};base64,{base64.b64encode(data).decode()}"
        return PreparedAudio({"type": "audio_url", "audio_url": {"url": url}}, None)
    samples, rate = _decode_source(data, source)
    return _wav_part(samples, rate, normalize)


def load_audio(source: AudioSource) -> Samples:
    """Decode any local source to the 16 kHz mono float32 signal the model hears."""
    if isinstance(source, np.ndarray | tuple | Mapping):
        samples, rate = _array_and_rate(source)
    else:
        samples, rate = _decode_source(read_bytes(source), source)
    return to_model_rate(samples, rate)


def _decode_source(data: bytes, source: object) -> tuple[npt.NDArray[np.float32], int]:
    """`decode`, with a file's name in the error when the source is a path."""
    try:
        return decode(data)
    except InvalidAudioError as e:
        if isinstance(source, str | os.PathLike) and not str(source).startswith("data:"):
            raise InvalidAudioError(f"{os.fspath(source)}: {e}") from e
        raise


def read_bytes(source: AudioSource) -> bytes:
    """The encoded bytes of a path, `data:` URL, bytes-like or binary file object."""
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source)
    if isinstance(source, str) and source.startswith("data:"):
        return _data_url_bytes(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source).expanduser()
        if path.is_dir():
            raise InvalidAudioError(f"{path} is a folder, not an audio file")
        if not path.is_file():
            raise InvalidAudioError(f"audio file not found: {path}")
        return path.read_bytes()
    if hasattr(source, "read"):
        data = cast(IO[bytes], source).read()
        if not isinstance(data, bytes):
            raise InvalidAudioError("audio file objects must be opened in binary mode ('rb')")
        return data
    raise InvalidAudioError(f"unsupported audio source of type {type(source).__name__}")


def decode(data: bytes, max_seconds: float | None = None) -> tuple[npt.NDArray[np.float32], int]:
    """Encoded audio -> (samples as frames x channels float32, sampling rate).

    With `max_seconds`, longer audio raises `AudioTooLongError` before it is decoded
    further (a small file can expand to hours of samples).
    """
    if not data:
        raise InvalidAudioError("audio is empty (0 bytes)")
    try:
        with soundfile.SoundFile(io.BytesIO(data)) as f:
            _check_length(f.frames / f.samplerate, max_seconds)
            return f.read(dtype="float32", always_2d=True), int(f.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        pass  # not a libsndfile format (M4A, WebM, ...): FFmpeg through PyAV
    return _decode_with_pyav(data, max_seconds)


def _check_length(seconds: float, max_seconds: float | None) -> None:
    if max_seconds is not None and seconds > max_seconds:
        raise AudioTooLongError(
            f"audio is {seconds:.1f} s long; at most {max_seconds:g} s is accepted", seconds
        )


def to_model_rate(samples: npt.NDArray[Any], rate: int) -> Samples:
    """Down-mix to mono and resample to 16 kHz; checks that the model can hear it."""
    mono = samples.mean(axis=1) if samples.ndim == 2 else samples
    mono = np.asarray(mono, dtype=np.float32)
    if mono.size == 0:
        raise InvalidAudioError("audio is empty (no samples)")
    if not np.isfinite(mono).all():
        raise InvalidAudioError("audio contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE).astype(np.float32, copy=False)
    if audio_token_count(mono.size) < 1:
        raise InvalidAudioError(
            f"audio is too short for the model ({mono.size / SAMPLE_RATE * 1000:.0f} ms); "
            f"send at least {min_samples() / SAMPLE_RATE * 1000:.0f} ms"
        )
    return mono


def audio_token_count(num_samples: int) -> int:
    """How many audio tokens Qwen2-Audio's encoder makes of this many 16 kHz samples."""
    frames = math.ceil(num_samples / HOP_LENGTH)
    after_conv = (frames - 1) // 2 + 1
    return max(0, (after_conv - 2) // 2 + 1)


def min_samples() -> int:
    n = 1
    while audio_token_count(n) < 1:
        n += 1
    return n


def encode_wav(samples: Samples, rate: int = SAMPLE_RATE) -> bytes:
    """16-bit PCM WAV: compact, lossless at the model's resolution, decoded by every server."""
    buf = io.BytesIO()
    soundfile.write(buf, np.clip(samples, -1.0, 1.0), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _wav_part(samples: npt.NDArray[Any], rate: int, normalize: bool) -> PreparedAudio:
    if normalize:
        samples, rate = to_model_rate(samples, rate), SAMPLE_RATE
    seconds = len(samples) / rate
    data = base64.b64encode(encode_wav(samples, rate)).decode("ascii")
    return PreparedAudio(
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}, seconds
    )


def _array_and_rate(source: Any) -> tuple[npt.NDArray[np.float32], int]:
    if isinstance(source, Mapping):
        if "array" not in source or "sampling_rate" not in source:
            raise InvalidAudioError("audio dicts need 'array' and 'sampling_rate'")
        array, rate = source["array"], source["sampling_rate"]
    elif isinstance(source, tuple):
        if len(source) != 2:
            raise InvalidAudioError("audio tuples are (samples, sampling_rate)")
        array, rate = source
    else:
        array, rate = source, SAMPLE_RATE
    array = np.asarray(array)
    if not isinstance(rate, int | np.integer) or rate <= 0:
        raise InvalidAudioError(f"sampling rate must be a positive integer, not {rate!r}")
    if array.ndim not in (1, 2) or not np.issubdtype(array.dtype, np.number):
        raise InvalidAudioError("audio arrays must be 1-D (samples) or 2-D numbers")
    if np.issubdtype(array.dtype, np.integer):
        array = array / float(np.iinfo(array.dtype).max)
    if array.ndim == 2 and array.shape[0] < array.shape[1]:
        array = array.T  # (channels, samples) -> (samples, channels)
    return np.asarray(array, dtype=np.float32), int(rate)


def _data_url_bytes(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise InvalidAudioError("data URLs must be base64: data:audio/<type>;base64,<data>")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise InvalidAudioError(f"data URL is not valid base64: {e}") from e


def _decode_with_pyav(
    data: bytes, max_seconds: float | None = None
) -> tuple[npt.NDArray[np.float32], int]:
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.audio:
                raise InvalidAudioError("the file has no audio stream")
            stream = container.streams.audio[0]
            rate = stream.codec_context.sample_rate
            chunks, frames = [], 0
            for frame in _planar_float(container.decode(stream)):
                chunks.append(frame.to_ndarray().reshape(frame.layout.nb_channels, -1))
                frames += chunks[-1].shape[1]
                _check_length(frames / (rate or 1), max_seconds)
    except av.error.FFmpegError as e:
        raise InvalidAudioError(
            "could not decode: not audio, or not a format audiotext reads "
            f"(WAV, FLAC, MP3, OGG/Opus, M4A/AAC, WebM, ...); FFmpeg said: {e.strerror or e}"
        ) from e
    if not chunks:
        raise InvalidAudioError("audio is empty (no samples decoded)")
    return np.concatenate(chunks, axis=1).T.astype(np.float32, copy=False), int(rate)


def _planar_float(frames: Any) -> Any:
    import av

    resampler = av.AudioResampler(format="fltp")
    for frame in frames:
        yield from resampler.resample(frame)
    yield from resampler.resample(None)


_MAGIC = (
    (b"RIFF", "audio/wav"),
    (b"fLaC", "audio/flac"),
    (b"OggS", "audio/ogg"),
    (b"ID3", "audio/mpeg"),
    (b"\xff\xfb", "audio/mpeg"),
    (b"\x1a\x45\xdf\xa3", "audio/webm"),
)


def sniff_mime(data: bytes, source: object = None) -> str:
    """The audio media type of encoded bytes, from their magic number or file name."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[4:8] == b"ftyp":
        return "audio/mp4"
    name = getattr(source, "name", source)
    guessed = mimetypes.guess_type(str(name))[0] if isinstance(name, str | os.PathLike) else None
    return guessed or "application/octet-stream"
