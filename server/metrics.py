"""audiotext's series on vLLM's `/metrics` (Prometheus conventions: prefix, base units).

Each is observed at the layer every request passes through, in the process where the work
happens:
- API server, media connector (`intake.take`): clips decoded, audio seconds per route,
  decode time;
- API server, end of each request (`intake.request_scope`): windows per request and the
  real-time factor of answered requests with audio;
- API server, the model's processor (`qwen2_audio`): feature-extraction time;
- engine core, the model (`qwen2_audio`): audio-encoder time and windows encoded;
- wherever a request is refused (`errors.request_error`, the guards): refusals by reason,
  once per request.

Every server process (API servers and engine cores) writes to one Prometheus multiprocess
folder (`PROMETHEUS_MULTIPROC_DIR`, set up by the launcher; vLLM itself sets one only for
several API servers), so vLLM's `/metrics` on any API server shows the sums over all of them.
Only counters and histograms are used: both add up across processes.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any, Literal, get_args

from prometheus_client import Counter, Histogram

Refusal = Literal[
    "too_long",  # audio over --max-audio-seconds, or more windows than --max-audios-per-prompt
    "too_large",  # a body over --max-body-mb, a media download over --max-fetch-mb
    "bad_audio",  # undecodable, empty, too short, bad base64, an unknown audio format
    "fetch_failed",  # a media URL that could not be fetched or read
    "ssrf",  # media the policy refuses: a non-public address, a domain, a folder, a scheme
    "control_tokens",  # the model's control tokens in user text or token ids
    "overload",  # --max-queued-requests or --max-queued-audio-s reached
    "unauthorized",  # a missing or wrong API key
    "draining",  # the server is shutting down
    "deadline",  # a request still running after --request-timeout-s
]
REFUSALS: tuple[Refusal, ...] = get_args(Refusal)

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

AUDIO_DECODES = Counter(
    "audiotext_audio_decodes",
    "Audio clips decoded by the API server: one per clip a request carries.",
)
AUDIO_SECONDS = Counter(
    "audiotext_audio_seconds",
    "Seconds of audio received (decoded and handed to the model), by route.",
    ["route"],
)
DECODE_SECONDS = Histogram(
    "audiotext_audio_decode_seconds",
    "Time to decode one clip and resample it to 16 kHz mono, in the API server.",
    buckets=_FAST,
)
FEATURE_SECONDS = Histogram(
    "audiotext_audio_feature_seconds",
    "Time to cut one prompt's audio into windows and compute its log-mel features "
    "(the model's processor, in the API server; audio found in vLLM's processor cache "
    "skips it).",
    buckets=_FAST,
)
ENCODER_SECONDS = Histogram(
    "audiotext_audio_encoder_seconds",
    "Time the audio encoder and projector take for one batch of audio, in the engine.",
    buckets=_FAST,
)
ENCODER_WINDOWS = Counter(
    "audiotext_audio_encoder_windows",
    "Audio windows (at most 30 s each) run through the audio encoder, in the engine.",
)
REQUEST_WINDOWS = Histogram(
    "audiotext_request_audio_windows",
    "Audio windows (at most 30 s each) the model heard per answered request, by route.",
    ["route"],
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 32),
)
REAL_TIME_FACTOR = Histogram(
    "audiotext_request_real_time_factor",
    "Seconds to answer a request per second of audio it carries (below 1 is faster than "
    "real time), by route.",
    ["route"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0),
)
REQUESTS_REFUSED = Counter(
    "audiotext_requests_refused",
    "Requests answered with an error instead of an answer, by reason (once per request).",
    ["reason"],
)
# Every reason is a series from the start, at 0: a rate needs a value before the first one.
for _reason in REFUSALS:
    REQUESTS_REFUSED.labels(reason=_reason)

# The current request's refusal, if one was counted; set per request by `one_refusal`.
_REFUSED: ContextVar[list[Refusal] | None] = ContextVar("audiotext_refused", default=None)
_refused_lock = threading.Lock()


@contextlib.contextmanager
def one_refusal() -> Iterator[None]:
    """Count at most one refusal for the request running in this context."""
    token = _REFUSED.set([])
    try:
        yield
    finally:
        _REFUSED.reset(token)


def refused(reason: Refusal) -> None:
    """Count a refused request (once per request inside `one_refusal`: the first reason).

    Work the request's context does not reach (vLLM's processor threads) counts each
    time; it raises once per request.
    """
    seen = _REFUSED.get()
    if seen is not None:
        with _refused_lock:
            if seen:
                return
            seen.append(reason)
    REQUESTS_REFUSED.labels(reason=reason).inc()


def request_answered(route: str, seconds: float, windows: int, elapsed_s: float) -> None:
    """Record an answered request that carried `seconds` of audio in `windows` windows."""
    if windows <= 0 or seconds <= 0:
        return
    REQUEST_WINDOWS.labels(route=route).observe(windows)
    REAL_TIME_FACTOR.labels(route=route).observe(elapsed_s / seconds)


class EncoderTimer:
    """Times audio-encoder batches without stalling the device.

    On CPU the clock is read when the batch returns. On CUDA the work is still queued
    then, so the batch is bracketed with CUDA events, and its time is observed once the
    events have completed (checked at the next batch), with no synchronisation.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Any, Any]] = []

    @contextlib.contextmanager
    def batch(self, device: Any, windows: int) -> Iterator[None]:
        ENCODER_WINDOWS.inc(windows)
        if getattr(device, "type", "cpu") != "cuda":
            started = time.perf_counter()
            yield
            ENCODER_SECONDS.observe(time.perf_counter() - started)
            return
        import torch

        self._harvest()
        event: Any = torch.cuda.Event
        start, end = event(enable_timing=True), event(enable_timing=True)
        start.record()
        yield
        end.record()
        self._pending.append((start, end))

    def _harvest(self) -> None:
        while self._pending and self._pending[0][1].query():
            start, end = self._pending.pop(0)
            ENCODER_SECONDS.observe(start.elapsed_time(end) / 1000)
