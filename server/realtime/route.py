"""The `/v1/realtime` WebSocket route (mounted by the endpoint plugin, behind the guards)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from audiotext.server import lifecycle
from audiotext.server.config import served_config
from audiotext.server.realtime.connection import Limits, RealtimeSession
from audiotext.server.realtime.engine import ROUTE

router = APIRouter()


@router.websocket(ROUTE)
async def realtime(websocket: WebSocket) -> None:
    """OpenAI's Realtime API for spoken dialogue, text out (see `audiotext.server.realtime`)."""
    config = served_config()
    state = websocket.app.state
    session = RealtimeSession(
        websocket,
        chat=state.openai_serving_chat,
        model=str(state.openai_serving_models.base_model_paths[0].name),
        limits=Limits(
            max_audio_seconds=config.max_audio_seconds,
            max_message_bytes=int(config.max_body_mb * 2**20),
            idle_timeout_s=config.realtime_idle_timeout_s,
            max_session_s=config.realtime_max_session_s,
        ),
        audio_queue=getattr(state, "audiotext_audio_queue", None),
        lifecycle=lifecycle.PROCESS,
    )
    await session.run()
