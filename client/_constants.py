"""Named defaults, shared with the server where they meet (environment variable names)."""

from typing import Literal

DEFAULT_BASE_URL = "http://localhost:8000/v1"
BASE_URL_ENV = "AUDIOTEXT_BASE_URL"
# `audiotext serve` listens where these say; without a base URL the client goes there too.
HOST_ENV = "AUDIOTEXT_HOST"
PORT_ENV = "AUDIOTEXT_PORT"
DEFAULT_PORT = 8000
API_KEY_ENV = "AUDIOTEXT_API_KEY"
MODEL_ENV = "AUDIOTEXT_MODEL"
# vLLM's server accepts any key unless started with --api-key.
DEFAULT_API_KEY = "EMPTY"

DEFAULT_TIMEOUT_S = 600.0
# A server that does not accept the connection within this is not coming.
CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_CONCURRENCY = 8
DEFAULT_MAX_NEW_TOKENS = 256

# What Qwen2-Audio's feature extractor expects.
SAMPLE_RATE = 16000
HOP_LENGTH = 160
# Remote audio fetched by the client (fetch_urls=True) is capped at this size.
MAX_FETCH_BYTES = 64 * 2**20

# Transcript formats of /v1/audio/transcriptions and /v1/audio/translations.
ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
RESPONSE_FORMATS: tuple[ResponseFormat, ...] = ("json", "text", "verbose_json", "srt", "vtt")
