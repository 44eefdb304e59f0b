"""Audio intake: what happens to every clip on its way to the engine, once.

vLLM resolves the audio of every route (chat completions, responses, Anthropic messages,
SageMaker invocations, tokenize, audiotext's own routes) and of offline `LLM.chat`
through its media connector; audiotext's connector (`connector.py`) fetches the bytes
under the media policy and hands them to `take`:

1. admission, before decoding: the clip's declared duration (its container header) counts
   against the request's `--max-audio-seconds` (413) and the server's
   `--max-queued-audio-s` (503), so an overload or an oversized clip costs no decode;
2. one decode (soundfile, else PyAV), capped so that a small file cannot expand to hours;
3. down-mix and soxr resampling to the model's 16 kHz; empty, non-finite or too-short
   audio is a 400.

The samples returned are the samples the model's processor gets. A request's
`RequestAudio` (set per HTTP request by the guard middleware, in a context variable)
counts what was heard, for the response and for `/metrics` (`metrics`: seconds per route,
decode time; at the end, windows and real-time factor), and holds its queued seconds
until it ends.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import numpy as np
import soundfile

from audiotext.client.audio import SAMPLE_RATE as SAMPLE_RATE
from audiotext.client.audio import (
    AudioTooLongError,
    InvalidAudioError,
    Samples,
    decode,
    to_model_rate,
)
from audiotext.server import metrics
from audiotext.server.errors import AudioRequestError, request_error
from audiotext.server.windows import window_count

# Decoders disagree on a file's length by a few samples; do not refuse for that.
TOLERANCE_S = 0.01


class AudioQueue:
    """Seconds of audio in flight in this API process, bounded (`--max-queued-audio-s`)."""

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max_seconds
        self.seconds = 0.0
        self._lock = threading.Lock()

    def hold(self, seconds: float, own: float = 0.0) -> None:
        """Count `seconds` as in flight, or refuse (503) when that would overfill the queue.

        One request alone may always run, however long its audio and however many clips
        it has: the per-request limit (`--max-audio-seconds`) bounds it. `own` is what the
        asking request already holds, so its second clip is not refused for its first.
        """
        with self._lock:
            others = self.seconds - own
            if others > TOLERANCE_S and self.seconds + seconds > self.max_seconds:
                raise request_error(
                    f"the server has {self.seconds:.0f} s of audio in flight, its limit is "
                    f"{self.max_seconds:g} s (--max-queued-audio-s); retry shortly",
                    status=503,
                    reason="overload",
                )
            self.seconds += seconds

    def release(self, seconds: float) -> None:
        with self._lock:
            self.seconds = max(0.0, self.seconds - seconds)


# The route label of audio that no HTTP request carries (offline `LLM.chat`).
OFFLINE_ROUTE = "offline"


@dataclass
class RequestAudio:
    """One request's audio: what it may carry, what it holds in the queue, what was heard.

    `route` is the request's path; the guards set `status` when the response starts.
    """

    max_seconds: float
    queue: AudioQueue | None = None
    route: str = OFFLINE_ROUTE
    seconds: float = 0.0
    windows: int = 0
    status: int | None = None
    held: float = field(default=0.0, repr=False)
    started: float = field(default_factory=time.monotonic, repr=False)
    # Seconds counted against `max_seconds`: each clip's declared length until it is heard,
    # then its decoded length. vLLM fetches a request's clips in parallel threads, so
    # counting happens under a lock, before any decode.
    admitted: float = field(default=0.0, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def admit(self, seconds: float) -> float:
        """Count a clip of `seconds` against this request's and the server's limits.

        Returns the room the clip was admitted into: the most it may decode to.
        """
        with self._lock:
            room = self.room()
            if seconds > room + TOLERANCE_S:
                raise too_long(self.max_seconds)
            if self.queue is not None and seconds > 0:
                self.queue.hold(seconds, own=self.held)
                self.held += seconds
            self.admitted += seconds
            return room

    def room(self) -> float:
        """Seconds of audio this request may still carry."""
        return self.max_seconds - self.admitted

    def heard(self, samples: Samples, declared: float = 0.0) -> None:
        """Record a decoded clip; its decoded length replaces what it declared."""
        with self._lock:
            self.admitted += len(samples) / SAMPLE_RATE - declared
            if self.admitted > self.max_seconds + TOLERANCE_S:  # a header that understated
                raise too_long(self.max_seconds)
            self.seconds += len(samples) / SAMPLE_RATE
            self.windows += window_count(samples)

    def release(self) -> None:
        if self.queue is not None:
            self.queue.release(self.held)
        self.held = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {"seconds": round(self.seconds, 3), "windows": self.windows}

    def headers(self) -> dict[str, str]:
        return {"X-Audio-Seconds": f"{self.seconds:.3f}", "X-Audio-Windows": str(self.windows)}


CURRENT: ContextVar[RequestAudio | None] = ContextVar("audiotext_request_audio", default=None)


@contextlib.contextmanager
def request_scope(request: RequestAudio) -> Iterator[RequestAudio]:
    """Make `request` the current request's audio until the block ends, then release it
    and, if it was answered, record what it heard."""
    token = CURRENT.set(request)
    try:
        with metrics.one_refusal():
            yield request
    finally:
        request.release()
        CURRENT.reset(token)
        if request.status == 200:
            elapsed = time.monotonic() - request.started
            metrics.request_answered(request.route, request.seconds, request.windows, elapsed)


def too_long(max_seconds: float) -> AudioRequestError:
    return request_error(
        f"audio is longer than {max_seconds:g} s; this server accepts at most "
        f"{max_seconds:g} s per request (--max-audio-seconds)",
        status=413,
        reason="too_long",
    )


def declared_seconds(data: bytes) -> float | None:
    """The duration a file's header declares, without decoding it (None if it has none)."""
    try:
        info = soundfile.info(io.BytesIO(data))
        if info.samplerate > 0 and info.frames > 0:
            return float(info.frames / info.samplerate)
    except (soundfile.LibsndfileError, RuntimeError, TypeError):
        pass
    try:
        import av

        with av.open(io.BytesIO(data), mode="r") as container:
            if container.duration:
                return float(container.duration / av.time_base)
    except (av.error.FFmpegError, ValueError):
        pass
    return None


def take(data: bytes, max_seconds: float) -> Samples:
    """Admit, decode once and resample one clip for the current request (see module doc).

    Args:
        data: the encoded audio.
        max_seconds: audio one request may carry (`--max-audio-seconds`); used when no
            request is current (offline use).
    """
    request = CURRENT.get() or RequestAudio(max_seconds=max_seconds)
    declared = declared_seconds(data)
    # The most this clip may decode to (a clip that decodes longer is cut off there and
    # refused, so that a lying header cannot expand): the room its declared length was
    # admitted into, or, without a header, the room the request has left.
    room = request.admit(declared) if declared is not None else request.room()
    budget = room + TOLERANCE_S
    metrics.AUDIO_DECODES.inc()
    started = time.perf_counter()
    try:
        samples = to_model_rate(*decode(data, max_seconds=budget))
    except AudioTooLongError as e:
        raise too_long(request.max_seconds) from e
    except InvalidAudioError as e:
        raise request_error(str(e), reason="bad_audio") from e
    metrics.DECODE_SECONDS.observe(time.perf_counter() - started)
    if declared is None:  # no header: admitted now, at its decoded length
        declared = len(samples) / SAMPLE_RATE
        request.admit(declared)
    request.heard(samples, declared=declared)
    metrics.AUDIO_SECONDS.labels(route=request.route).inc(len(samples) / SAMPLE_RATE)
    return np.ascontiguousarray(samples)
