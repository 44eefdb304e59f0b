"""audiotext's client SDK: the audio-text-to-text task on top of OpenAI audio chat.

    from audiotext.client import AudioTextClient
    client = AudioTextClient(base_url="http://localhost:8000/v1")
    client.generate({"audio": "meeting.mp3", "text": "Summarize this in one sentence."})
    client.transcribe("meeting.mp3", response_format="verbose_json").segments

Light: it needs the OpenAI SDK and audio decoders, not vLLM or torch.
"""

from audiotext.client._client import AsyncAudioTextClient, AudioTextClient, BatchResult
from audiotext.client._constants import DEFAULT_BASE_URL, SAMPLE_RATE
from audiotext.client._core import Generation, Segment, Transcription
from audiotext.client._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AudioTextError,
    AuthenticationError,
    BadRequestError,
    InvalidAudioError,
    InvalidRequestError,
    OverloadedError,
    ServerError,
)
from audiotext.client._realtime import AsyncRealtimeSession, RealtimeSession
from audiotext.client.audio import AudioSource, audio_token_count, load_audio

__all__ = [
    "DEFAULT_BASE_URL",
    "SAMPLE_RATE",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "AsyncAudioTextClient",
    "AsyncRealtimeSession",
    "AudioSource",
    "AudioTextClient",
    "AudioTextError",
    "AuthenticationError",
    "BadRequestError",
    "BatchResult",
    "Generation",
    "InvalidAudioError",
    "InvalidRequestError",
    "OverloadedError",
    "RealtimeSession",
    "Segment",
    "ServerError",
    "Transcription",
    "audio_token_count",
    "load_audio",
]
