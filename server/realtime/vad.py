"""Server-side voice activity detection: where an utterance starts and stops in a stream.

`SpeechDetector` is sans-IO: feed it PCM16 as it arrives, in chunks of any size, and it
says when speech started and stopped, in milliseconds of the session's audio. It frames
the stream into 20 ms frames for WebRTC's VAD (the `webrtcvad` package, at 16 kHz; 24 kHz
input is resampled for detection only, with soxr) and applies the OpenAI Realtime knobs:

- `threshold` (0-1) picks WebRTC's aggressiveness (0-3): higher asks for clearer speech;
- speech starts at the first of `START_VOICED` voiced frames among `START_WINDOW` frames,
  reported `prefix_padding_ms` earlier (the audio the model gets starts there);
- speech stops after `silence_duration_ms` without a voiced frame; the audio the model gets
  ends `TAIL_MS` after the last voiced frame (a short silence included), so the turn's audio
  is known `silence_duration_ms - TAIL_MS` before the stop is: `SpeechPaused` says so at
  that moment (the server prefills the turn's prompt while it waits), and `SpeechResumed`
  if speech comes back before the stop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import soxr
import webrtcvad

FRAME_MS = 20
VAD_RATE = 16000
# Speech begins when this many of the last START_WINDOW frames are voiced (60 of 100 ms):
# a click or one noisy frame does not open a turn.
START_VOICED = 3
START_WINDOW = 5
# Silence kept at the end of a turn's audio: the pause after which the turn's audio is known.
TAIL_MS = 200


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int


@dataclass(frozen=True)
class SpeechPaused:
    """Silence for `TAIL_MS`: if the speech stops here, its audio ends at `audio_end_ms`."""

    audio_end_ms: int


@dataclass(frozen=True)
class SpeechResumed:
    """Speech came back after a `SpeechPaused`, before it stopped."""


Event = SpeechStarted | SpeechStopped | SpeechPaused | SpeechResumed


def aggressiveness(threshold: float) -> int:
    """WebRTC VAD's mode (0-3) for an OpenAI threshold (0-1; 0.5 is mode 2)."""
    return min(3, max(0, int(threshold * 4)))


class SpeechDetector:
    """Turns a PCM16 mono stream into speech start and stop events.

    Args:
        rate: the stream's sample rate (16000 or 24000).
        threshold: OpenAI's activation threshold, 0-1.
        prefix_padding_ms: audio before detected speech that belongs to the utterance.
        silence_duration_ms: silence that ends an utterance.
    """

    def __init__(
        self, rate: int, threshold: float, prefix_padding_ms: int, silence_duration_ms: int
    ) -> None:
        self.vad = webrtcvad.Vad(aggressiveness(threshold))
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_frames = max(1, -(-silence_duration_ms // FRAME_MS))
        self.tail_frames = min(self.silence_frames, TAIL_MS // FRAME_MS)
        self.resampler = (
            soxr.ResampleStream(rate, VAD_RATE, 1, dtype="int16") if rate != VAD_RATE else None
        )
        self.pending = np.zeros(0, dtype=np.int16)
        self.frames = 0  # 20 ms frames seen so far: the stream's clock
        self.recent: deque[bool] = deque(maxlen=START_WINDOW)
        self.in_speech = False
        self.silent_frames = 0
        self.floor_ms = 0  # speech cannot start before audio already handed out

    def feed(self, pcm: bytes) -> list[Event]:
        """Events found in this chunk (PCM16 little-endian mono), in order."""
        samples = np.frombuffer(pcm, dtype="<i2").astype(np.int16)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        self.pending = np.concatenate([self.pending, samples])
        frame = VAD_RATE * FRAME_MS // 1000
        events: list[Event] = []
        while len(self.pending) >= frame:
            voiced = self.vad.is_speech(self.pending[:frame].tobytes(), VAD_RATE)
            self.pending = self.pending[frame:]
            self.frames += 1
            events += self._step(voiced)
        return events

    def reset(self, now_ms: int) -> None:
        """Forget any speech in progress (the buffer was cleared or committed at `now_ms`)."""
        self.in_speech = False
        self.silent_frames = 0
        self.recent.clear()
        self.floor_ms = now_ms

    def _step(self, voiced: bool) -> list[Event]:
        self.recent.append(voiced)
        now_ms = self.frames * FRAME_MS
        if not self.in_speech:
            if sum(self.recent) < START_VOICED:
                return []
            self.in_speech = True
            self.silent_frames = 0
            first_voiced = self.frames - len(self.recent) + self.recent.index(True)
            start_ms = first_voiced * FRAME_MS - self.prefix_padding_ms
            return [SpeechStarted(max(self.floor_ms, start_ms))]
        if voiced:
            paused = self.silent_frames >= self.tail_frames
            self.silent_frames = 0
            return [SpeechResumed()] if paused else []
        self.silent_frames += 1
        # The audio ends TAIL_MS after the last voiced frame, silence included.
        end_ms = now_ms - (self.silent_frames - self.tail_frames) * FRAME_MS
        found: list[Event] = []
        if self.silent_frames == self.tail_frames < self.silence_frames:
            found.append(SpeechPaused(end_ms))
        if self.silent_frames >= self.silence_frames:
            self.in_speech = False
            self.recent.clear()
            self.floor_ms = end_ms
            found.append(SpeechStopped(end_ms))
        return found
