"""Audio for listening clips: espeak-ng speech and synthetic sounds, at 16 kHz mono."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import soundfile as sf
import soxr

from audiotext.server.listening.cases import Clip

SAMPLE_RATE = 16000


def espeak() -> str:
    """The espeak-ng executable, or an error that says how to get it."""
    found = shutil.which("espeak-ng")
    if found is None:
        raise RuntimeError(
            "listening clips are spoken with espeak-ng: `make install` installs it, "
            "or run `apt-get install espeak-ng`"
        )
    return found


def speak(text: str, voice: str, rate: int = 165, pitch: int = 50, amplitude: int = 100) -> bytes:
    """espeak-ng's WAV file for one sentence."""
    argv = [espeak(), "-v", voice, "-s", str(rate), "-p", str(pitch), "-a", str(amplitude)]
    done = subprocess.run([*argv, "--stdout", text], capture_output=True, check=True)
    return done.stdout


def render(clip: Clip) -> np.ndarray:
    """A clip's samples: speech or sound, a little silence around it, noise at its SNR."""
    rng = np.random.default_rng(clip.seed)
    if clip.sound == "speech":
        assert clip.voice is not None
        parts = []
        for i, text in enumerate(clip.sentences):
            if i:
                parts.append(np.zeros(int(clip.gaps[i - 1] * SAMPLE_RATE), np.float32))
            wav = speak(text, clip.voice, clip.rate, clip.pitch, clip.amplitude)
            data, rate = sf.read(io.BytesIO(wav), dtype="float32")
            parts.append(soxr.resample(data, rate, SAMPLE_RATE).astype(np.float32))
        audio = np.concatenate(parts)
    else:
        audio = sound(clip.sound, rng)
    if clip.telephone:
        audio = soxr.resample(soxr.resample(audio, SAMPLE_RATE, 8000), 8000, SAMPLE_RATE)
    pad = [np.zeros(int(rng.uniform(0.05, 0.3) * SAMPLE_RATE), np.float32) for _ in range(2)]
    audio = np.concatenate([pad[0], audio, pad[1]])
    if clip.snr_db is not None:
        power = float(np.mean(audio**2)) + 1e-12
        noise = rng.standard_normal(len(audio)).astype(np.float32)
        audio = audio + noise * np.sqrt(power / 10 ** (clip.snr_db / 10))
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def sound(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A synthetic non-speech sound: `beep`, `noise`, `tones` or `silence`."""
    level = rng.uniform(0.1, 0.6)
    out: np.ndarray
    if kind == "beep":
        x = np.sin(2 * np.pi * rng.uniform(400, 2000) * _times(rng.uniform(0.3, 1.2)))
        return _faded(level * x)
    if kind == "noise":
        x = rng.standard_normal(int(rng.uniform(0.8, 3.0) * SAMPLE_RATE))
        if rng.random() < 0.5:  # brown-ish noise as well as white
            x = np.cumsum(x)
            x = x - np.convolve(x, np.ones(400) / 400, mode="same")
        out = (level * x / (np.abs(x).max() + 1e-9)).astype(np.float32)
        return out
    if kind == "tones":
        gap = np.zeros(int(rng.uniform(0.05, 0.15) * SAMPLE_RATE))
        notes = []
        for _ in range(rng.integers(3, 7)):
            notes += [_faded(np.sin(2 * np.pi * rng.uniform(300, 1500) * _times(0.15))), gap]
        out = (level * np.concatenate(notes)).astype(np.float32)
        return out
    if kind == "silence":
        n = int(rng.uniform(0.8, 3.0) * SAMPLE_RATE)
        return (rng.standard_normal(n) * 10 ** rng.uniform(-5, -3.5)).astype(np.float32)
    raise ValueError(f"unknown sound {kind!r}")


def _times(seconds: float) -> np.ndarray:
    return np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE


def _faded(x: np.ndarray) -> np.ndarray:
    ramp = min(len(x) // 4, SAMPLE_RATE // 100)
    envelope = np.ones(len(x))
    envelope[:ramp] = np.linspace(0, 1, ramp)
    envelope[len(x) - ramp :] = np.linspace(1, 0, ramp)
    return (x * envelope).astype(np.float32)
