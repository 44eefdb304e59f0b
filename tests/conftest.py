"""Shared test helpers: the committed speech clips, decoded the same way everywhere."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import soundfile
import soxr

DATA = Path(__file__).parent / "data"
SAMPLE_RATE = 16000
# name -> (file, seconds to keep or None for all): about 1 s, 6 s and 25 s of speech.
CLIPS = {
    "1s": ("speech_short.flac", 1.0),
    "6s": ("speech_demo.flac", None),
    "25s": ("speech_long.ogg", None),
}


def load_clip(name: str) -> np.ndarray:
    """A committed clip as 16 kHz mono float32, cut to its length."""
    file, seconds = CLIPS[name]
    samples, rate = soundfile.read(DATA / file, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    if seconds is not None:
        mono = mono[: int(seconds * SAMPLE_RATE)]
    return np.ascontiguousarray(mono, dtype=np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "FLOAT") -> bytes:
    """Samples as a WAV file; float WAV keeps them bit for bit."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
