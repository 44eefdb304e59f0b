"""The realtime route's pure parts: settings, audio buffer, conversation, VAD, event shapes."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr
from openai.types.realtime import RealtimeServerEvent
from pydantic import TypeAdapter

from audiotext.server.realtime import events
from audiotext.server.realtime.session import (
    AudioBuffer,
    Conversation,
    Item,
    SessionSettings,
    SettingsError,
    TurnDetection,
)
from audiotext.server.realtime.vad import (
    TAIL_MS,
    SpeechDetector,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
    aggressiveness,
)
from tests.conftest import load_clip

SERVER_EVENT: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def utterance(rate: int, speech_s: float = 1.0, silence_s: float = 1.0) -> tuple[bytes, int, int]:
    """Silence, speech, silence as PCM16 at `rate`; and where the speech is (ms)."""
    speech = load_clip("6s")[: int(speech_s * 16000)]
    if rate != 16000:
        speech = soxr.resample(speech, 16000, rate)
    quiet = np.zeros(int(silence_s * rate), dtype=np.float32)
    signal = np.concatenate([quiet, speech, quiet])
    start_ms = int(silence_s * 1000)
    return pcm16(signal), start_ms, start_ms + int(len(speech) * 1000 / rate)


def in_chunks(data: bytes, rate: int, ms: int = 20) -> list[bytes]:
    size = rate * ms // 1000 * 2
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("rate", [16000, 24000])
def test_vad_finds_the_utterance_in_20ms_chunks(rate: int) -> None:
    audio, speech_start, speech_end = utterance(rate)
    detector = SpeechDetector(rate, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500)
    found = [event for chunk in in_chunks(audio, rate) for event in detector.feed(chunk)]
    starts = [e for e in found if isinstance(e, SpeechStarted)]
    stops = [e for e in found if isinstance(e, SpeechStopped)]
    assert len(starts) >= 1 and len(stops) == len(starts)
    # Padding included: the turn starts up to 300 ms (plus a frame or two) before speech.
    assert speech_start - 400 <= starts[0].audio_start_ms <= speech_start
    # The turn's audio ends TAIL_MS (200 ms) after the last voiced frame: after the speech
    # began, and no later than the clip's end plus 200 ms (and two frames of detection).
    assert speech_start + TAIL_MS < stops[-1].audio_end_ms <= speech_end + TAIL_MS + 40
    # Each stop was announced by a pause with the same end, the stop's silence earlier.
    pauses = [e for e in found if isinstance(e, SpeechPaused)]
    assert stops[-1].audio_end_ms in [e.audio_end_ms for e in pauses]
    assert found.index(stops[-1]) > found.index(SpeechPaused(stops[-1].audio_end_ms))


def test_vad_pause_then_speech_resumes_the_turn_without_stopping_it() -> None:
    detector = SpeechDetector(16000, 0.5, 300, silence_duration_ms=500)
    speech = pcm16(load_clip("6s")[:16000])
    # 300 ms of silence inside the utterance: past the pause (200 ms), short of the stop.
    audio = bytes(16000) + speech + bytes(2 * 4800) + speech + bytes(2 * 16000)
    found = [e for chunk in in_chunks(audio, 16000) for e in detector.feed(chunk)]
    kinds = [type(e) for e in found]
    first_resume = kinds.index(SpeechResumed)
    assert kinds[0] is SpeechStarted and SpeechPaused in kinds[:first_resume]
    assert SpeechStopped not in kinds[:first_resume]
    # One turn: it starts once and stops once, after its last pause.
    assert kinds.count(SpeechStarted) == kinds.count(SpeechStopped) == 1
    assert kinds[-2:] == [SpeechPaused, SpeechStopped]
    # It ends after the second stretch of speech (from 1.8 s), not at the first pause.
    assert found[-2].audio_end_ms == found[-1].audio_end_ms > 1800 + TAIL_MS


def test_vad_hears_nothing_in_silence_and_resets() -> None:
    detector = SpeechDetector(16000, 0.5, 300, 500)
    assert detector.feed(bytes(16000 * 2 * 2)) == []
    audio, _, _ = utterance(16000, silence_s=0.2)
    first = detector.feed(audio[: len(audio) // 2])
    assert isinstance(first[0], SpeechStarted)
    detector.reset(now_ms=detector.frames * 20)
    # After a reset mid-speech, the rest starts a new turn no earlier than the reset.
    rest = detector.feed(audio[len(audio) // 2 :])
    starts = [e for e in rest if isinstance(e, SpeechStarted)]
    assert all(e.audio_start_ms >= 2000 + 100 for e in starts)


def test_threshold_picks_webrtc_aggressiveness() -> None:
    assert [aggressiveness(t) for t in (0.0, 0.3, 0.5, 0.8, 1.0)] == [0, 1, 2, 3, 3]


def test_audio_buffer_cuts_exact_samples_and_keeps_its_clock() -> None:
    buffer = AudioBuffer(24000)
    data = np.arange(24000 * 2, dtype="<i2").tobytes()  # 2 s
    buffer.append(data)
    cut = buffer.take(500, 1500)
    assert cut == data[12000 * 2 : 36000 * 2]
    assert (buffer.start_ms, buffer.end_ms) == (1500, 2000)
    assert buffer.take() == data[36000 * 2 :]
    buffer.append(b"\x01\x00" * 240)
    buffer.clear()
    assert (buffer.start_ms, buffer.end_ms, buffer.seconds) == (2010, 2010, 0)


def test_session_update_ga_and_beta_shapes() -> None:
    ga = SessionSettings().updated(
        {
            "type": "realtime",
            "instructions": "Answer briefly.",
            "output_modalities": ["text"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 16000},
                    "turn_detection": {"type": "server_vad", "threshold": 0.7,
                                       "prefix_padding_ms": 200, "silence_duration_ms": 400},
                }
            },
            "max_output_tokens": 64,
        }
    )  # fmt: skip
    assert ga.rate == 16000 and ga.instructions == "Answer briefly." and ga.max_output_tokens == 64
    assert ga.turn_detection == TurnDetection(0.7, 200, 400)
    beta = SessionSettings().updated(
        {"modalities": ["text"], "input_audio_format": "pcm16", "turn_detection": None,
         "temperature": 0}
    )  # fmt: skip
    assert beta.rate == 24000 and beta.turn_detection is None and beta.temperature == 0.0


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"output_modalities": ["audio"]}, "session.output_modalities"),
        ({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 8000}}}},
         "session.audio.input.format.rate"),
        ({"audio": {"input": {"format": {"type": "audio/pcmu"}}}}, "session.audio.input.format"),
        ({"turn_detection": {"type": "semantic_vad"}}, "session.turn_detection"),
        ({"turn_detection": {"type": "server_vad", "threshold": 2}},
         "session.turn_detection.threshold"),
        ({"max_output_tokens": 0}, "session.max_output_tokens"),
        ({"type": "transcription"}, "session.type"),
    ],
)  # fmt: skip
def test_session_update_refuses_what_it_cannot_serve(session: dict[str, Any], param: str) -> None:
    with pytest.raises(SettingsError) as refused:
        SessionSettings().updated(session)
    assert refused.value.param == param


def test_conversation_is_one_growing_chat() -> None:
    conversation = Conversation()
    pcm = pcm16(load_clip("1s"))
    conversation.add(Item("a", "user", audio=pcm, rate=16000))
    conversation.add(Item("b", "assistant", text="Seven."))
    conversation.add(Item("c", "assistant", text="", status="incomplete"))  # cut off at once
    conversation.add(Item("d", "user", text="And plus one?"))
    first = conversation.chat_messages("Be brief.")
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user"]
    part = first[1]["content"][0]
    wav = base64.b64decode(part["input_audio"]["data"])
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="int16")
    assert rate == 16000 and samples.tobytes() == pcm
    conversation.add(Item("e", "assistant", text="Eight."))
    # The next turn's chat starts with the previous one, message for message.
    assert conversation.chat_messages("Be brief.")[: len(first)] == first
    with pytest.raises(SettingsError):
        conversation.add(Item("f", "user", text="x"), previous_item_id="nope")


def _response(status: str) -> dict[str, Any]:
    item = Item("item_1", "assistant", text="hi", status="completed").as_dict()
    details = {"type": "cancelled", "reason": "turn_detected"}
    usage = events.usage(10, 2, 8)
    assert "input_token_details" not in events.usage(10, 2, None)  # unknown, not 0
    return events.response("resp_1", status, [item], None, usage=usage, status_details=details)


def test_every_server_event_matches_the_openai_sdk_models() -> None:
    user = Item("item_0", "user", audio=b"\x00\x00" * 160, rate=16000)
    manual = SessionSettings(turn_detection=None)
    built = [
        events.event("session.created", session=SessionSettings().as_dict("sess_1", "tiny")),
        events.event("session.updated", session=manual.as_dict("sess_1", "tiny")),
        events.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id="item_0"),
        events.event("input_audio_buffer.speech_stopped", audio_end_ms=900, item_id="item_0"),
        events.event("input_audio_buffer.committed", item_id="item_0", previous_item_id=None),
        events.event("input_audio_buffer.cleared"),
        events.event("conversation.item.created", previous_item_id=None, item=user.as_dict()),
        events.event("conversation.item.retrieved", item=user.as_dict(with_audio=True)),
        events.event("conversation.item.deleted", item_id="item_0"),
        events.event("response.created", response=events.response("resp_1", "in_progress", [], 16)),
        events.event("response.output_item.added", response_id="resp_1", output_index=0,
                     item=Item("item_1", "assistant", text="", status="in_progress").as_dict()),
        events.event("response.content_part.added", response_id="resp_1", item_id="item_1",
                     output_index=0, content_index=0, part=events.text_part("")),
        events.event("response.output_text.delta", response_id="resp_1", item_id="item_1",
                     output_index=0, content_index=0, delta="hi"),
        events.event("response.output_text.done", response_id="resp_1", item_id="item_1",
                     output_index=0, content_index=0, text="hi"),
        events.event("response.done", response=_response("cancelled")),
        events.error("bad", "invalid_event", param="type", client_event_id="e1"),
    ]  # fmt: skip
    for event in built:
        parsed = SERVER_EVENT.validate_python(event)
        assert parsed.type == event["type"]
        # Nothing the SDK does not know: every field we send is one of its fields.
        assert set(event) <= set(type(parsed).model_fields), event["type"]


def test_the_client_helpers_session_and_chunks_are_what_the_server_takes() -> None:
    from audiotext.client._realtime import pcm16_chunks, session_update, trailing_silence_s

    update = session_update(
        instructions="Be brief.", turn_detection=True, silence_duration_ms=400,
        max_output_tokens=32, temperature=0.0,
    )  # fmt: skip
    settings = SessionSettings().updated(update["session"])
    assert settings.rate == 16000 and settings.instructions == "Be brief."
    assert settings.turn_detection == TurnDetection(silence_duration_ms=400)
    assert (settings.max_output_tokens, settings.temperature) == (32, 0.0)
    manual = session_update(instructions=None, turn_detection=False, silence_duration_ms=500,
                            max_output_tokens=None, temperature=None)  # fmt: skip
    assert SessionSettings().updated(manual["session"]).turn_detection is None

    clip = load_clip("1s")
    chunks = pcm16_chunks((clip, 16000), trailing_silence_s(400))
    assert {len(c) for c in chunks[:-1]} == {640}  # 20 ms of 16 kHz PCM16
    assert sum(len(c) for c in chunks) == (16000 + int(0.7 * 16000)) * 2
    assert trailing_silence_s(None) == 0
