"""One realtime session over one WebSocket: client events in, server events out.

The receive loop handles client events in order; an answer streams from its own task, so
the loop keeps listening while it runs (speech that starts meanwhile cancels it: barge-in).
A watchdog closes the session when it idles, outlives its length, or the server drains.
When the client goes away, the answer's task is cancelled, which aborts its engine request.

While the user pauses (the VAD's `SpeechPaused`, `silence_duration_ms - TAIL_MS` before the
turn ends), the turn's prompt is prefilled: the very request the answer will send, for one
token, its output dropped. The answer then finds the turn's KV in vLLM's prefix cache;
speech that resumes cancels the prefill.

Close codes: 1001 the server is shutting down, 1008 policy (idle timeout, session length,
unknown model), 1009 a message over the size limit, 1013 the server is full (`guards`),
1011 an unexpected server error. Each is preceded by an `error` event with its code.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from vllm.entrypoints.openai.chat_completion.serving import OpenAIServingChat

from audiotext.server.errors import AudioRequestError
from audiotext.server.intake import AudioQueue, RequestAudio
from audiotext.server.lifecycle import Lifecycle
from audiotext.server.realtime import events
from audiotext.server.realtime.engine import ROUTE, AnswerRequest, EngineRefusal, Finished, answer
from audiotext.server.realtime.session import (
    AudioBuffer,
    Conversation,
    Item,
    SessionSettings,
    SettingsError,
    max_tokens,
    new_id,
)
from audiotext.server.realtime.vad import (
    FRAME_MS,
    SpeechDetector,
    SpeechPaused,
    SpeechResumed,
    SpeechStarted,
    SpeechStopped,
)
from audiotext.server.renderer import GuardedHfRenderer

logger = logging.getLogger(__name__)

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_SERVER_ERROR = 1011
WATCH_INTERVAL_S = 0.25
MIN_COMMIT_MS = 100  # OpenAI's: a commit needs at least 100 ms of audio
SUBPROTOCOL = "realtime"


@dataclass(frozen=True)
class Limits:
    """What one session may do (from the server's configuration)."""

    max_audio_seconds: float  # buffered audio, and audio per answer (--max-audio-seconds)
    max_message_bytes: int  # one client message (--max-body-mb)
    idle_timeout_s: float  # no client event and no answer running
    max_session_s: float  # the session's length


@dataclass
class ActiveResponse:
    id: str
    item: Item
    task: asyncio.Task[None]
    cancel_reason: str = "client_cancelled"


class RealtimeSession:
    """Serves one WebSocket (already past the guards) until either side closes it."""

    def __init__(
        self,
        websocket: WebSocket,
        chat: OpenAIServingChat,
        model: str,
        limits: Limits,
        audio_queue: AudioQueue | None,
        lifecycle: Lifecycle,
    ) -> None:
        self.ws = websocket
        self.chat = chat
        self.model = model
        self.limits = limits
        self.audio_queue = audio_queue
        self.lifecycle = lifecycle
        self.id = new_id("sess")
        self.settings = SessionSettings()
        self.buffer = AudioBuffer(self.settings.rate)
        self.conversation = Conversation()
        self.detector: SpeechDetector | None = None
        self.detector_offset_ms = 0
        self.speech: tuple[str, int] | None = None  # (item id, start ms) of speech under way
        self.response: ActiveResponse | None = None
        self.prefill: asyncio.Task[None] | None = None  # the paused turn's prompt, prefilled
        # The turn the prefill sent: the turn itself if the stop cuts the same audio.
        self.paused_turn: Item | None = None
        self.closed = False
        self.started = self.last_activity = time.monotonic()
        self._send_lock = asyncio.Lock()
        self._handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._item_retrieve,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }
        self._new_detector()

    async def run(self) -> None:
        offered = self.ws.scope.get("subprotocols", [])
        await self.ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        model = self.ws.query_params.get("model")
        await self.send(events.event("session.created", session=self._session()))
        if model and model != self.model:
            await self.close_with(
                events.error(f"model {model!r} is not served here; use {self.model!r}",
                             "invalid_request", param="model"),
                CLOSE_POLICY,
            )  # fmt: skip
            return
        watchdog = asyncio.create_task(self._watch())
        try:
            await self._receive_loop()
        except Exception:
            logger.exception("realtime session %s failed", self.id)
            await self.close_with(
                events.error("internal server error", "server_error", kind="server_error"),
                CLOSE_SERVER_ERROR,
            )
        finally:
            self.closed = True
            watchdog.cancel()
            await self._drop_prefill()
            if self.response is not None:
                self.response.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.response.task

    async def send(self, event: dict[str, Any]) -> None:
        if self.closed or self.ws.application_state != WebSocketState.CONNECTED:
            return
        async with self._send_lock:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self.ws.send_text(json.dumps(event))

    async def close_with(self, error: dict[str, Any], code: int) -> None:
        """Send the error that says why, then close with `code`."""
        await self.send(error)
        self.closed = True
        with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
            await self.ws.close(code=code, reason=error["error"]["code"])

    async def _receive_loop(self) -> None:
        while not self.closed:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            raw = message.get("text")
            if raw is None and message.get("bytes") is not None:
                raw = message["bytes"].decode("utf-8", errors="replace")
            raw = raw or ""
            if len(raw) > self.limits.max_message_bytes:
                await self.close_with(
                    events.error(
                        f"a message is at most {self.limits.max_message_bytes} bytes "
                        "(--max-body-mb); send audio in smaller chunks",
                        "message_too_large",
                    ),
                    CLOSE_TOO_BIG,
                )
                return
            self.last_activity = time.monotonic()
            await self._handle(raw)

    async def _handle(self, raw: str) -> None:
        try:
            event = json.loads(raw)
        except json.JSONDecodeError as e:
            await self.send(events.error(f"the message is not JSON: {e}", "invalid_json"))
            return
        if not isinstance(event, dict):
            await self.send(events.error("an event is a JSON object", "invalid_json"))
            return
        kind = event.get("type")
        client_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            served = ", ".join(self._handlers)
            await self.send(
                events.error(f"unknown event type {kind!r}; this server takes {served}",
                             "unknown_event", param="type", client_event_id=client_id)
            )  # fmt: skip
            return
        try:
            await handler(event)
        except SettingsError as e:
            await self.send(
                events.error(str(e), "invalid_event", param=e.param, client_event_id=client_id)
            )
        except AudioRequestError as e:
            await self.send(
                events.error(e.message, "invalid_request", param=e.param, client_event_id=client_id)
            )
        except _Refused as e:
            await self.send(
                events.error(e.message, e.code, param=e.param, client_event_id=client_id)
            )

    # session

    def _session(self) -> dict[str, Any]:
        return self.settings.as_dict(self.id, self.model)

    async def _session_update(self, event: dict[str, Any]) -> None:
        settings = self.settings.updated(event.get("session", {}))
        if settings.rate != self.settings.rate and self.buffer.data:
            raise SettingsError(
                "commit or clear the input audio buffer before changing its format",
                "session.audio.input.format",
            )
        changed = (settings.turn_detection, settings.rate) != (
            self.settings.turn_detection,
            self.settings.rate,
        )
        if settings.rate != self.settings.rate:
            now = self.buffer.end_ms
            self.buffer = AudioBuffer(settings.rate)
            self.buffer.start_ms = now
        self.settings = settings
        if changed:
            self._new_detector()
        await self.send(events.event("session.updated", session=self._session()))

    def _new_detector(self) -> None:
        vad = self.settings.turn_detection
        self.speech = None
        self.detector = None
        if vad is not None:
            self.detector = SpeechDetector(
                self.settings.rate, vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms
            )
            self.detector_offset_ms = self.buffer.end_ms

    # input audio

    async def _append(self, event: dict[str, Any]) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise SettingsError("audio must be a base64 string of PCM16 samples", "audio")
        try:
            pcm = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError) as e:
            raise _Refused(f"audio is not valid base64: {e}", "invalid_audio", "audio") from e
        if len(pcm) % 2:
            raise _Refused("PCM16 audio has an even number of bytes", "invalid_audio", "audio")
        seconds = len(pcm) / 2 / self.buffer.rate
        if self.buffer.seconds + seconds > self.limits.max_audio_seconds:
            raise _Refused(
                f"the input audio buffer holds {self.buffer.seconds:.1f} s; it takes at most "
                f"{self.limits.max_audio_seconds:g} s (--max-audio-seconds): commit or clear "
                "it. This chunk was not added",
                "input_audio_buffer_full",
                "audio",
            )
        self.buffer.append(pcm)
        if self.detector is None:
            return
        for found in self.detector.feed(pcm):
            if isinstance(found, SpeechStarted):
                await self._speech_started(found)
            elif isinstance(found, SpeechPaused):
                self._speech_paused(found)
            elif isinstance(found, SpeechResumed):
                await self._drop_prefill()
            else:
                await self._speech_stopped(found)
        if self.speech is None:
            # Before speech, only the prefix padding can still become part of a turn.
            assert self.settings.turn_detection is not None
            keep = self.settings.turn_detection.prefix_padding_ms + 2 * FRAME_MS
            if self.buffer.end_ms - self.buffer.start_ms > keep + 1000:
                self.buffer.take(end_ms=self.buffer.end_ms - keep)

    async def _speech_started(self, found: SpeechStarted) -> None:
        start = max(self.buffer.start_ms, found.audio_start_ms + self.detector_offset_ms)
        item_id = new_id("item")
        self.speech = (item_id, start)
        await self.send(
            events.event("input_audio_buffer.speech_started", audio_start_ms=start, item_id=item_id)
        )
        vad = self.settings.turn_detection
        if self.response is not None and vad is not None and vad.interrupt_response:
            await self._cancel_response("turn_detected")

    def _turn_end_ms(self, detector_end_ms: int) -> int:
        """Where a turn the detector ends at `detector_end_ms` ends on the session's clock."""
        return min(self.buffer.end_ms, detector_end_ms + self.detector_offset_ms)

    def _speech_paused(self, found: SpeechPaused) -> None:
        """Prefill the turn as it would be if the speech stopped here (one token, dropped)."""
        vad = self.settings.turn_detection
        if self.speech is None or vad is None or not vad.create_response or self.response:
            return
        item_id, start = self.speech
        end = self._turn_end_ms(found.audio_end_ms)
        turn = Item(item_id, "user", audio=self.buffer.peek(start, end), rate=self.buffer.rate)
        self.paused_turn = turn
        request = self._answer_request(self.settings, [turn])
        self.prefill = asyncio.create_task(self._prefill(replace(request, max_tokens=1)))

    async def _prefill(self, request: AnswerRequest) -> None:
        audio = RequestAudio(self.limits.max_audio_seconds, self.audio_queue, route=ROUTE)
        try:
            async for _ in answer(self.chat, request, audio):
                pass
        except EngineRefusal as e:  # the answer will meet the same refusal and report it
            logger.debug("realtime prefill refused: %s", e.message)

    async def _drop_prefill(self) -> None:
        """Cancel a prefill still running (its engine request is aborted)."""
        task, self.prefill = self.prefill, None
        self.paused_turn = None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _speech_stopped(self, found: SpeechStopped) -> None:
        if self.speech is None:
            return
        item_id, start = self.speech
        self.speech = None
        # A prefill under way is left to finish: it is computing this turn's KV.
        end = self._turn_end_ms(found.audio_end_ms)
        await self.send(
            events.event("input_audio_buffer.speech_stopped", audio_end_ms=end, item_id=item_id)
        )
        pcm = self.buffer.take(start, end)
        paused, self.paused_turn = self.paused_turn, None
        if paused is not None and paused.audio == pcm:
            await self._add_turn(paused)  # the prefilled item: its WAV is made already
        else:
            await self._add_turn(Item(item_id, "user", audio=pcm, rate=self.buffer.rate))
        vad = self.settings.turn_detection
        if vad is not None and vad.create_response and self.response is None:
            await self._start_response()

    async def _commit(self, event: dict[str, Any]) -> None:
        if self.buffer.ms(len(self.buffer.data)) < MIN_COMMIT_MS:
            raise _Refused(
                f"the input audio buffer holds {self.buffer.ms(len(self.buffer.data))} ms; a "
                f"commit needs at least {MIN_COMMIT_MS} ms of audio",
                "input_audio_buffer_commit_empty",
            )
        item_id = self.speech[0] if self.speech else new_id("item")
        await self._drop_prefill()  # the commit's audio is not the paused turn's
        await self._add_turn(Item(item_id, "user", audio=self.buffer.take(), rate=self.buffer.rate))
        self._reset_detector()

    async def _clear(self, event: dict[str, Any]) -> None:
        await self._drop_prefill()
        self.buffer.clear()
        self._reset_detector()
        await self.send(events.event("input_audio_buffer.cleared"))

    def _reset_detector(self) -> None:
        self.speech = None
        if self.detector is not None:
            self.detector.reset(self.buffer.end_ms - self.detector_offset_ms)

    async def _add_turn(self, item: Item) -> None:
        """A user audio turn is committed: added to the conversation and told."""
        item_id = item.id
        previous = self.conversation.add(item)
        await self.send(
            events.event("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        )
        await self.send(
            events.event(
                "conversation.item.created", previous_item_id=previous, item=item.as_dict()
            )
        )

    # conversation

    async def _item_create(self, event: dict[str, Any]) -> None:
        item = self._parse_item(event.get("item"))
        if item.text:
            # The renderer checks every prompt; a text turn is checked as it comes in too,
            # so that a refused one never sits in the conversation.
            renderer = self.chat.renderer
            assert isinstance(renderer, GuardedHfRenderer)
            renderer.refuse_control_tokens([item.text], "item.content")
        previous_id = event.get("previous_item_id")
        if previous_id is not None and not isinstance(previous_id, str):
            raise SettingsError("previous_item_id must be a string", "previous_item_id")
        previous = self.conversation.add(item, previous_id)
        await self.send(
            events.event(
                "conversation.item.created", previous_item_id=previous, item=item.as_dict()
            )
        )

    def _parse_item(self, raw: Any) -> Item:
        if not isinstance(raw, dict) or raw.get("type") != "message":
            raise SettingsError("item must be a message ({'type': 'message', ...})", "item.type")
        role = raw.get("role")
        if role not in ("user", "assistant", "system"):
            raise SettingsError("item.role must be user, assistant or system", "item.role")
        content = raw.get("content")
        if not isinstance(content, list) or not content:
            raise SettingsError("item.content must be a non-empty list of parts", "item.content")
        texts: list[str] = []
        audio = bytearray()
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in ("input_text", "text", "output_text") and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "input_audio" and role == "user" and isinstance(part.get("audio"), str):
                try:
                    audio += base64.b64decode(part["audio"], validate=True)
                except (binascii.Error, ValueError) as e:
                    raise _Refused(f"audio is not valid base64: {e}", "invalid_audio",
                                   "item.content.audio") from e  # fmt: skip
            else:
                raise SettingsError(
                    "a content part is input_text (or text/output_text) with text, or, for a "
                    "user, input_audio with base64 PCM16 audio",
                    "item.content",
                )
        text = "\n".join(texts)
        if not text and not audio:
            raise SettingsError("the item has neither text nor audio", "item.content")
        if len(audio) % 2 or len(audio) / 2 / self.buffer.rate > self.limits.max_audio_seconds:
            raise _Refused(
                f"item audio must be PCM16 of at most {self.limits.max_audio_seconds:g} s",
                "invalid_audio",
                "item.content.audio",
            )
        given = raw.get("id")
        item_id = given if isinstance(given, str) else new_id("item")
        if any(existing.id == item_id for existing in self.conversation.items):
            raise SettingsError(f"an item {item_id!r} is already in the conversation", "item.id")
        return Item(item_id, role, text=text or None, audio=bytes(audio) or None,
                    rate=self.buffer.rate)  # fmt: skip

    async def _item_delete(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        if self.response is not None and item_id == self.response.item.id:
            raise SettingsError("the answer being made cannot be deleted; cancel it", "item_id")
        try:
            self.conversation.delete(str(item_id))
        except SettingsError as e:
            raise _Refused(str(e), "item_not_found", "item_id") from e
        await self.send(events.event("conversation.item.deleted", item_id=item_id))

    async def _item_retrieve(self, event: dict[str, Any]) -> None:
        item_id = event.get("item_id")
        item = next((i for i in self.conversation.items if i.id == item_id), None)
        if item is None:
            raise _Refused(f"no item {item_id!r} in the conversation", "item_not_found", "item_id")
        await self.send(
            events.event("conversation.item.retrieved", item=item.as_dict(with_audio=True))
        )

    # responses

    async def _response_create(self, event: dict[str, Any]) -> None:
        if self.response is not None:
            raise _Refused(
                f"response {self.response.id} is still running; cancel it or wait for "
                "response.done",
                "conversation_already_has_active_response",
            )
        options = event.get("response") or {}
        if not isinstance(options, dict):
            raise SettingsError("response must be an object", "response")
        for unsupported in ("input", "tools", "audio"):
            if options.get(unsupported):
                raise SettingsError(
                    f"response.{unsupported} is not served", f"response.{unsupported}"
                )
        if options.get("conversation", "auto") not in ("auto", None):
            raise SettingsError("response.conversation must be auto", "response.conversation")
        # A response's own settings: what session.update takes, for this answer only.
        overrides = {k: options[k] for k in ("instructions", "output_modalities", "temperature")
                     if k in options}  # fmt: skip
        settings = self.settings.updated({"type": "realtime", **overrides})
        if "max_output_tokens" in options:
            limit = max_tokens(options["max_output_tokens"], "response.max_output_tokens")
            settings = replace(settings, max_output_tokens=limit)
        await self._start_response(settings)

    async def _response_cancel(self, event: dict[str, Any]) -> None:
        wanted = event.get("response_id")
        if self.response is None or (wanted and wanted != self.response.id):
            raise _Refused("no response is running to cancel", "response_cancel_not_active",
                           "response_id")  # fmt: skip
        await self._cancel_response("client_cancelled")

    async def _cancel_response(self, reason: str) -> None:
        active = self.response
        if active is None:
            return
        active.cancel_reason = reason
        active.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await active.task
        if self.response is active:  # cancelled before it began: nothing was said
            details = {"type": "cancelled", "reason": reason}
            await self._finish_response(active.id, active.item, "", "cancelled", details,
                                        Finished(None, 0, 0, None))  # fmt: skip

    def _answer_request(self, settings: SessionSettings, more: list[Item]) -> AnswerRequest:
        """The conversation so far, and `more` items after it, as one chat request."""
        return AnswerRequest(
            model=self.model,
            messages=self.conversation.chat_messages(settings.instructions, more),
            max_tokens=settings.max_output_tokens,
            temperature=settings.temperature,
        )

    async def _start_response(self, settings: SessionSettings | None = None) -> None:
        settings = settings or self.settings
        request = self._answer_request(settings, [])
        item = Item(new_id("item"), "assistant", text="", status="in_progress")
        response_id = new_id("resp")
        previous = self.conversation.add(item)
        await self.send(
            events.event(
                "response.created",
                response=events.response(
                    response_id, "in_progress", [], settings.max_output_tokens
                ),
            )
        )
        task = asyncio.create_task(self._respond(response_id, item, previous, request))
        self.response = ActiveResponse(response_id, item, task)

    async def _respond(
        self, response_id: str, item: Item, previous: str | None, request: AnswerRequest
    ) -> None:
        ids = {"response_id": response_id, "item_id": item.id, "output_index": 0}
        texts: list[str] = []
        finished = Finished(None, 0, 0, None)
        status = "completed"
        details: dict[str, Any] | None = None
        self.lifecycle.in_flight += 1
        try:
            await self.send(events.event("response.output_item.added", response_id=response_id,
                                         output_index=0, item=item.as_dict()))  # fmt: skip
            await self.send(
                events.event("conversation.item.created", previous_item_id=previous,
                             item=item.as_dict())
            )  # fmt: skip
            await self.send(
                events.event("response.content_part.added", **ids, content_index=0,
                             part=events.text_part(""))
            )  # fmt: skip
            audio = RequestAudio(self.limits.max_audio_seconds, self.audio_queue, route=ROUTE)
            async for piece in answer(self.chat, request, audio):
                if isinstance(piece, Finished):
                    finished = piece
                    continue
                texts.append(piece)
                await self.send(
                    events.event("response.output_text.delta", **ids, content_index=0, delta=piece)
                )
            if finished.finish_reason == "length":
                status, details = (
                    "incomplete",
                    {"type": "incomplete", "reason": "max_output_tokens"},
                )
        except EngineRefusal as e:
            code: events.ErrorCode = "server_overloaded" if e.status == 503 else "invalid_request"
            kind: events.ErrorType = "invalid_request_error" if e.status < 500 else "server_error"
            status = "failed"
            details = {"type": "failed", "error": {"type": kind, "code": code}}
            await self.send(events.error(e.message, code, param=e.param, kind=kind))
        except Exception:
            # The engine failed (not the request): say so, and keep the session usable.
            logger.exception("realtime answer %s failed", response_id)
            status = "failed"
            details = {"type": "failed", "error": {"type": "server_error", "code": "server_error"}}
            await self.send(events.error("the answer failed on the server", "server_error",
                                         kind="server_error"))  # fmt: skip
        except asyncio.CancelledError:
            if self.closed:
                raise
            status = "cancelled"
            details = {"type": "cancelled", "reason": self.response.cancel_reason
                       if self.response else "client_cancelled"}  # fmt: skip
        finally:
            self.lifecycle.in_flight -= 1
        await self._finish_response(response_id, item, "".join(texts), status, details, finished)

    async def _finish_response(
        self,
        response_id: str,
        item: Item,
        text: str,
        status: str,
        details: dict[str, Any] | None,
        finished: Finished,
    ) -> None:
        item.text = text
        item.status = "completed" if status == "completed" else "incomplete"
        ids = {"response_id": response_id, "item_id": item.id, "output_index": 0}
        await self.send(
            events.event("response.output_text.done", **ids, content_index=0, text=text)
        )
        await self.send(events.event("response.content_part.done", **ids, content_index=0,
                                     part=events.text_part(text)))  # fmt: skip
        await self.send(events.event("response.output_item.done", response_id=response_id,
                                     output_index=0, item=item.as_dict()))  # fmt: skip
        usage = events.usage(finished.prompt_tokens, finished.completion_tokens,
                             finished.cached_tokens)  # fmt: skip
        self.response = None
        self.last_activity = time.monotonic()
        await self.send(
            events.event(
                "response.done",
                response=events.response(response_id, status, [item.as_dict()],
                                         self.settings.max_output_tokens, usage=usage,
                                         status_details=details),
            )
        )  # fmt: skip

    # limits

    async def _watch(self) -> None:
        while not self.closed:
            await asyncio.sleep(WATCH_INTERVAL_S)
            now = time.monotonic()
            if self.lifecycle.draining.is_set() and self.response is None:
                error = events.error("the server is shutting down; reconnect to another instance",
                                     "server_shutting_down", kind="server_error")  # fmt: skip
                await self.close_with(error, CLOSE_GOING_AWAY)
            elif now - self.started > self.limits.max_session_s:
                error = events.error(
                    f"the session reached its maximum length of {self.limits.max_session_s:g} s "
                    "(--realtime-max-session-s); open a new one",
                    "session_expired",
                )
                await self.close_with(error, CLOSE_POLICY)
            elif self.response is None and now - self.last_activity > self.limits.idle_timeout_s:
                error = events.error(
                    f"no event for {self.limits.idle_timeout_s:g} s "
                    "(--realtime-idle-timeout-s); the session is closed",
                    "idle_timeout",
                )
                await self.close_with(error, CLOSE_POLICY)


class _Refused(Exception):
    """A client event refused with a specific error code; the session goes on."""

    def __init__(self, message: str, code: events.ErrorCode, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param
