"""Benchmark workloads: audio of a controlled length distribution, instructions, output lengths.

Speech is synthesised here with espeak-ng (several voices, fixed sentences), cut or
repeated to each clip's drawn length, with a little noise; some clips are noise or a
music-like tone sequence instead. Everything is seeded, so a workload is the same in
every run and for every system.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache

import numpy as np
import soundfile as sf
import soxr

from audiotext.benchmarks.loadgen import WorkItem

SAMPLE_RATE = 16000


@dataclass(frozen=True)
class Workload:
    """Clip lengths drawn uniformly from each (low, high) range in turn, in seconds."""

    name: str
    ranges: tuple[tuple[float, float], ...]


WORKLOADS = {
    "short": Workload("short", ((2.0, 10.0),)),
    "long": Workload("long", ((20.0, 30.0),)),
    "mixed": Workload("mixed", ((2.0, 10.0), (2.0, 10.0), (20.0, 30.0))),
}

# The task's uses: transcription, summary, question answering, translation.
INSTRUCTIONS = (
    "What does the person say?",
    "Summarize this in one sentence.",
    "What is the speaker asking for?",
    "Translate what is said into French.",
    "Transcribe the audio.",
    "What kind of sound is this?",
)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please book a table for two at seven tonight and send me the confirmation.",
    "Turn off the lights in the kitchen and set an alarm for six thirty.",
    "The quarterly report shows revenue grew by twelve percent over last year.",
    "Could you summarise the main points of this morning's meeting for the team?",
    "Rain is expected tomorrow afternoon, so bring an umbrella to the station.",
)
VOICES = ("en", "en-us", "en-gb-x-rp", "en+f3", "en+m3", "en-us+f2")


def make_items(
    workload: Workload, count: int, *, output_tokens: int, seed: int | tuple[int, ...] = 0
) -> list[WorkItem]:
    """`count` requests of `workload`; every request asks for exactly `output_tokens` tokens."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(count):
        low, high = workload.ranges[i % len(workload.ranges)]
        seconds = float(rng.uniform(low, high))
        kind = rng.choice(["speech", "speech", "speech", "speech", "noise", "music"])
        samples = {"speech": _speech, "noise": _noise, "music": _music}[kind](seconds, rng)
        items.append(WorkItem(samples, INSTRUCTIONS[i % len(INSTRUCTIONS)], output_tokens))
    return items


def _speech(seconds: float, rng: np.random.Generator) -> np.ndarray:
    utterances = _utterances()
    start = int(rng.integers(len(utterances)))
    pieces: list[np.ndarray] = []
    while sum(len(p) for p in pieces) < seconds * SAMPLE_RATE:
        pieces.append(utterances[(start + len(pieces)) % len(utterances)])
    clip = np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]
    speech: np.ndarray = (clip + 0.003 * rng.standard_normal(clip.size)).astype(np.float32)
    return speech


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(int(seconds * SAMPLE_RATE))
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(400) / 400, mode="same")  # drop the drift
    noise: np.ndarray = (0.1 * brown / (np.abs(brown).max() + 1e-9)).astype(np.float32)
    return noise


def _music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    note_s = 0.25
    t = np.arange(int(note_s * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = np.exp(-4 * t)
    notes = []
    for _ in range(int(np.ceil(seconds / note_s))):
        f0 = 220 * 2 ** (int(rng.integers(0, 24)) / 12)
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3))
        notes.append(0.2 * envelope * tone)
    music: np.ndarray = np.concatenate(notes)[: int(seconds * SAMPLE_RATE)].astype(np.float32)
    return music


@cache
def _utterances() -> tuple[np.ndarray, ...]:
    """Every sentence in a different voice, 16 kHz mono, with a short pause after it."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError(
            "benchmark speech is made with espeak-ng: `make install` installs it, "
            "or run `apt-get install espeak-ng`"
        )
    out = []
    for i, sentence in enumerate(SENTENCES):
        voice = VOICES[i % len(VOICES)]
        wav = subprocess.run(
            [espeak, "-v", voice, "-s", "165", "--stdout", sentence],
            check=True,
            capture_output=True,
        ).stdout
        samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
        speech = soxr.resample(samples, rate, SAMPLE_RATE)
        out.append(np.concatenate([speech, np.zeros(SAMPLE_RATE // 4, np.float32)]))
    return tuple(out)
