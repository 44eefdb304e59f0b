"""vLLM endpoint plugin (`vllm.endpoint_plugins`): attaches audiotext's routes.

vLLM loads it in the API server process when `VLLM_PLUGINS` names `audiotext_routes`,
which the launcher does unless `--stock` is given.
"""

from __future__ import annotations

import os
from argparse import Namespace
from typing import Any

from fastapi import FastAPI

from audiotext.server.config import ENV_PREFIX, ServerConfig

MAX_AUDIO_SECONDS_ENV = ENV_PREFIX + "MAX_AUDIO_SECONDS"


class AudioTextRoutes:
    """The task, transcription and translation routes, and long audio on chat completions."""

    name = "audiotext_routes"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        from audiotext.server.routes import router

        app.include_router(router)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        import httpx

        from audiotext.server.long_audio import AudioLimits
        from audiotext.server.routes import FETCH_TIMEOUT_S, RouteState

        model_config = engine_client.model_config
        max_seconds = os.environ.get(MAX_AUDIO_SECONDS_ENV) or ServerConfig.max_audio_seconds
        limits = AudioLimits(
            max_seconds=float(max_seconds),
            max_items=model_config.multimodal_config.get_limit_per_prompt("audio"),
            max_model_len=model_config.max_model_len,
        )
        http = httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=True)
        state.audiotext = RouteState(limits=limits, http=http)
