"""A realtime session's state, without I/O: its settings, its input audio, its conversation.

- `SessionSettings.updated(...)` applies a `session.update` (the Realtime API's GA shape,
  `{"type": "realtime", "audio": {"input": {"format", "turn_detection"}}, ...}`, and the
  beta shape, `input_audio_format` / `turn_detection` at the top, alike) or says which
  field is wrong.
- `AudioBuffer` holds the input audio not yet committed, on the session's clock (ms since
  the first audio appended), and cuts utterances out of it.
- `Conversation` is the session's items in order; `chat_messages()` is the whole
  conversation as one chat, growing turn by turn, so that the engine's prefix cache keeps
  the KV of every earlier turn.
"""

from __future__ import annotations

import base64
import io
import itertools
import secrets
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import soundfile

RATES = (16000, 24000)
DEFAULT_RATE = 24000  # OpenAI's: PCM16 at 24 kHz


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


class SettingsError(ValueError):
    """A `session.update` or `response.create` field the server cannot take."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD settings (OpenAI's names and defaults)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    create_response: bool = True
    interrupt_response: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"type": "server_vad", **self.__dict__}


@dataclass(frozen=True)
class SessionSettings:
    """What `session.update` may set; `None` turn detection means the client commits."""

    instructions: str = ""
    rate: int = DEFAULT_RATE
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    max_output_tokens: int | None = None  # None: "inf", what the context leaves
    temperature: float | None = None  # None: the model's generation defaults

    def updated(self, session: dict[str, Any]) -> SessionSettings:
        """These settings with a `session.update`'s `session` applied."""
        if not isinstance(session, dict):
            raise SettingsError("session must be an object", "session")
        if session.get("type", "realtime") != "realtime":
            raise SettingsError("only realtime sessions are served (session.type)", "session.type")
        modalities = session.get("output_modalities", session.get("modalities"))
        if modalities is not None and list(modalities) != ["text"]:
            raise SettingsError(
                "this server answers in text only: output_modalities must be ['text']",
                "session.output_modalities",
            )
        new = self
        if "instructions" in session:
            if not isinstance(session["instructions"], str):
                raise SettingsError("instructions must be a string", "session.instructions")
            new = replace(new, instructions=session["instructions"])
        audio_in = _mapping(session.get("audio", {}), "session.audio").get("input", {})
        audio_in = _mapping(audio_in, "session.audio.input")
        if "format" in audio_in:
            new = replace(new, rate=_rate(audio_in["format"], "session.audio.input.format"))
        if "input_audio_format" in session:
            new = replace(
                new, rate=_rate(session["input_audio_format"], "session.input_audio_format")
            )
        for where, holder in (("session.audio.input", audio_in), ("session", session)):
            if "turn_detection" in holder:
                new = replace(new, turn_detection=_turn_detection(holder["turn_detection"], where))
        if "max_output_tokens" in session or "max_response_output_tokens" in session:
            value = session.get("max_output_tokens", session.get("max_response_output_tokens"))
            new = replace(new, max_output_tokens=max_tokens(value, "session.max_output_tokens"))
        if "temperature" in session:
            new = replace(new, temperature=_temperature(session["temperature"]))
        return new

    def as_dict(self, session_id: str, model: str) -> dict[str, Any]:
        """The session as the Realtime API shows it (`session.created` / `updated`)."""
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "instructions": self.instructions,
            "output_modalities": ["text"],
            "max_output_tokens": self.max_output_tokens or "inf",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": self.rate},
                    "turn_detection": self.turn_detection.as_dict()
                    if self.turn_detection
                    else None,
                }
            },
        }


def max_tokens(value: Any, param: str) -> int | None:
    if value == "inf" or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"{param} must be a positive integer or 'inf'", param)
    return value


def _temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
        raise SettingsError("temperature must be a number from 0 to 2", "session.temperature")
    return float(value)


def _mapping(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SettingsError(f"{param} must be an object", param)
    return value


def _rate(value: Any, param: str) -> int:
    if value == "pcm16":  # the beta API's name: PCM16 at 24 kHz
        return DEFAULT_RATE
    if isinstance(value, dict) and value.get("type") == "audio/pcm":
        rate = value.get("rate", DEFAULT_RATE)
        if rate in RATES:
            return int(rate)
        raise SettingsError(f"{param}.rate must be 16000 or 24000, not {rate!r}", f"{param}.rate")
    raise SettingsError(
        f"{param} must be PCM16 ({{'type': 'audio/pcm', 'rate': 16000 or 24000}}); "
        "G.711 (pcmu, pcma) is not served",
        param,
    )


def _turn_detection(value: Any, where: str) -> TurnDetection | None:
    param = f"{where}.turn_detection"
    if value is None:
        return None
    value = _mapping(value, param)
    if value.get("type") != "server_vad":
        raise SettingsError(f"{param}.type must be server_vad (or turn_detection null)", param)
    base = TurnDetection()
    threshold = value.get("threshold", base.threshold)
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float)
        or not 0 <= threshold <= 1
    ):
        raise SettingsError(f"{param}.threshold must be from 0 to 1", f"{param}.threshold")
    durations: dict[str, int] = {}
    for name, low, high in (("prefix_padding_ms", 0, 5000), ("silence_duration_ms", 20, 10000)):
        ms = value.get(name, getattr(base, name))
        if isinstance(ms, bool) or not isinstance(ms, int) or not low <= ms <= high:
            raise SettingsError(
                f"{param}.{name} must be an integer from {low} to {high}", f"{param}.{name}"
            )
        durations[name] = ms
    flags: dict[str, bool] = {}
    for name in ("create_response", "interrupt_response"):
        flag = value.get(name, getattr(base, name))
        if not isinstance(flag, bool):
            raise SettingsError(f"{param}.{name} must be true or false", f"{param}.{name}")
        flags[name] = flag
    return TurnDetection(
        threshold=float(threshold),
        prefix_padding_ms=durations["prefix_padding_ms"],
        silence_duration_ms=durations["silence_duration_ms"],
        create_response=flags["create_response"],
        interrupt_response=flags["interrupt_response"],
    )


class AudioBuffer:
    """Input audio not yet committed: PCM16 mono bytes on the session's clock.

    Args:
        rate: samples per second of the stream.
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.data = bytearray()
        self.start_ms = 0  # session time of data[0]

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.ms(len(self.data))

    @property
    def seconds(self) -> float:
        return len(self.data) / 2 / self.rate

    def ms(self, nbytes: int) -> int:
        return nbytes // 2 * 1000 // self.rate

    def append(self, pcm: bytes) -> None:
        self.data += pcm

    def take(self, start_ms: int | None = None, end_ms: int | None = None) -> bytes:
        """Cut `[start_ms, end_ms)` out (default: everything); what came before is dropped,
        what comes after stays."""
        end_ms = self.end_ms if end_ms is None else end_ms
        cut = self.peek(self.start_ms if start_ms is None else start_ms, end_ms)
        end = self._offset(end_ms)
        self.start_ms += self.ms(end)
        # Keep the clock exact: drop whole samples only.
        del self.data[:end]
        return cut

    def peek(self, start_ms: int, end_ms: int) -> bytes:
        """`[start_ms, end_ms)` without cutting it out."""
        return bytes(self.data[self._offset(start_ms) : self._offset(end_ms)])

    def clear(self) -> None:
        self.start_ms = self.end_ms
        self.data.clear()

    def _offset(self, ms: int) -> int:
        samples = max(0, ms - self.start_ms) * self.rate // 1000
        return min(len(self.data), samples * 2)


def wav(pcm: bytes, rate: int) -> bytes:
    """PCM16 mono as a WAV file: what the media connector decodes for the engine."""
    import numpy as np

    buffer = io.BytesIO()
    soundfile.write(buffer, np.frombuffer(pcm, dtype="<i2"), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


Role = Literal["user", "assistant", "system"]


@dataclass
class Item:
    """One conversation item: a message with text, user audio (PCM16 at `rate`), or both."""

    id: str
    role: Role
    text: str | None = None
    audio: bytes | None = None
    rate: int = DEFAULT_RATE
    status: str = "completed"
    # The audio as base64 WAV, made once: every later answer sends this turn again.
    _wav: str | None = field(default=None, repr=False, compare=False)

    def as_dict(self, with_audio: bool = False) -> dict[str, Any]:
        """The item as the Realtime API shows it; its audio (base64 PCM16) if asked for."""
        content: list[dict[str, Any]] = []
        if self.audio is not None:
            audio = base64.b64encode(self.audio).decode("ascii") if with_audio else None
            content.append({"type": "input_audio", "audio": audio, "transcript": None})
        if self.role == "assistant":
            content.append({"type": "output_text", "text": self.text or ""})
        elif self.text:
            content.append({"type": "input_text", "text": self.text})
        return {
            "id": self.id,
            "object": "realtime.item",
            "type": "message",
            "role": self.role,
            "status": self.status,
            "content": content,
        }

    def chat_message(self) -> dict[str, Any]:
        """The item as a chat message: audio as a WAV `input_audio` part, then the text."""
        if self.audio is None:
            return {"role": self.role, "content": self.text or ""}
        if self._wav is None:
            self._wav = base64.b64encode(wav(self.audio, self.rate)).decode("ascii")
        parts: list[dict[str, Any]] = [
            {"type": "input_audio", "input_audio": {"data": self._wav, "format": "wav"}}
        ]
        if self.text:
            parts.append({"type": "text", "text": self.text})
        return {"role": self.role, "content": parts}


class Conversation:
    """The session's items, in order."""

    def __init__(self) -> None:
        self.items: list[Item] = []
        self._counter = itertools.count()

    @property
    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def add(self, item: Item, previous_item_id: str | None = None) -> str | None:
        """Insert after `previous_item_id` (default: at the end); return the item before it."""
        if previous_item_id is None:
            before = self.last_id
            self.items.append(item)
            return before
        index = next((i for i, it in enumerate(self.items) if it.id == previous_item_id), None)
        if index is None:
            raise SettingsError(
                f"no item {previous_item_id!r} in the conversation", "previous_item_id"
            )
        self.items.insert(index + 1, item)
        return previous_item_id

    def delete(self, item_id: str) -> None:
        index = next((i for i, it in enumerate(self.items) if it.id == item_id), None)
        if index is None:
            raise SettingsError(f"no item {item_id!r} in the conversation", "item_id")
        del self.items[index]

    def chat_messages(
        self, instructions: str, more: list[Item] | None = None
    ) -> list[dict[str, Any]]:
        """The whole conversation (and `more` after it) as chat messages, the instructions
        as the system turn."""
        system = [{"role": "system", "content": instructions}] if instructions else []
        # An answer cut off before its first word leaves nothing to say in the history.
        items = [*self.items, *(more or [])]
        turns = [item for item in items if item.audio is not None or item.text]
        return system + [item.chat_message() for item in turns]
