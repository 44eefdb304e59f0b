"""Transcripts in OpenAI's response formats: `json`, `text`, `verbose_json`, `srt`, `vtt`.

A segment is one long-audio window (at most 30 s, cut at a quiet point) with the text
the model gave for it; the model's output carries no finer timing.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "verbose_json", "srt", "vtt")
# Formats with timed segments: each window is transcribed on its own.
SEGMENTED: tuple[ResponseFormat, ...] = ("verbose_json", "srt", "vtt")


@dataclass(frozen=True)
class Segment:
    """One window's transcript, in OpenAI's `verbose_json` segment shape."""

    id: int
    seek: int
    """Where the window starts, in 10 ms frames (Whisper's unit)."""
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float | None
    compression_ratio: float


def segment(
    index: int,
    start: float,
    end: float,
    text: str,
    tokens: Sequence[int],
    logprobs: Sequence[float],
    temperature: float,
) -> Segment:
    """A window's segment; `avg_logprob` and `compression_ratio` as Whisper computes them."""
    raw = text.encode("utf-8")
    ratio = len(raw) / len(zlib.compress(raw)) if raw else 0.0
    return Segment(
        id=index,
        seek=round(start * 100),
        start=round(start, 3),
        end=round(end, 3),
        text=text,
        tokens=list(tokens),
        temperature=temperature,
        avg_logprob=sum(logprobs) / len(logprobs) if logprobs else None,
        compression_ratio=round(ratio, 4),
    )


def verbose_json(
    task: str, language: str | None, duration: float, segments: Sequence[Segment]
) -> dict[str, Any]:
    """OpenAI's `verbose_json` body: the text, its duration and its timed segments."""
    return {
        "task": task,
        "language": language,
        "duration": round(duration, 3),
        "text": joined(segments),
        "segments": [asdict(s) for s in segments],
    }


def joined(segments: Sequence[Segment]) -> str:
    return " ".join(s.text for s in segments if s.text)


def srt(segments: Sequence[Segment]) -> str:
    """SubRip subtitles: numbered cues, `HH:MM:SS,mmm` times; empty segments left out."""
    cues = [s for s in segments if s.text]
    return "".join(
        f"{n}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n\n"
        for n, s in enumerate(cues, start=1)
    )


def vtt(segments: Sequence[Segment]) -> str:
    """WebVTT subtitles: `HH:MM:SS.mmm` times; empty segments left out."""
    cues = [s for s in segments if s.text]
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n\n" for s in cues
    )


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"
