"""audiotext's series on vLLM's `/metrics` (Prometheus conventions: prefix, base units)."""

from __future__ import annotations

from prometheus_client import Counter

AUDIO_DECODES = Counter(
    "audiotext_audio_decodes",
    "Audio clips decoded by the API server: one per clip a request carries.",
)
AUDIO_SECONDS = Counter(
    "audiotext_audio_seconds",
    "Seconds of audio decoded and handed to the model.",
)
