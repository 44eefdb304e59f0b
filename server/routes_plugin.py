"""vLLM endpoint plugin (`vllm.endpoint_plugins`): attaches audiotext's routes.

vLLM loads it in the API server process when `VLLM_PLUGINS` names `audiotext_routes`,
which the launcher does unless `--stock` is given.
"""

from __future__ import annotations

from argparse import Namespace
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from audiotext.server.config import config_from_env

# The engine this process serves, kept so the launcher can tell a crash from a stop.
_engine: Any = None


def engine_failed() -> bool:
    """True when the engine process of this server died (rather than being stopped)."""
    # vLLM marks the engine dead after a clean stop too; only a failed engine process
    # (non-zero exit, e.g. killed) means a crash.
    resources = getattr(getattr(_engine, "engine_core", None), "resources", None)
    manager = getattr(resources, "engine_manager", None)
    return any(p.exitcode not in (0, None) for p in getattr(manager, "processes", []))


class AudioTextRoutes:
    """The task, transcription and translation routes, and long audio on chat completions."""

    name = "audiotext_routes"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        from audiotext.server.guards import GuardMiddleware, GuardSettings
        from audiotext.server.routes import router

        app.include_router(router)
        config = config_from_env()
        settings = GuardSettings(
            api_key=config.api_key,
            max_body_bytes=int(config.max_body_mb * 2**20),
            max_in_flight=config.max_queued_requests,
            deadline_s=config.request_timeout_s,
        )
        app.add_middleware(GuardMiddleware, settings=settings)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        from audiotext.server.long_audio import AudioLimits
        from audiotext.server.media import MediaFetcher, MediaPolicy
        from audiotext.server.routes import RouteState

        global _engine
        _engine = engine_client
        config = config_from_env()
        model_config = engine_client.model_config
        limits = AudioLimits(
            max_seconds=config.max_audio_seconds,
            max_items=model_config.multimodal_config.get_limit_per_prompt("audio"),
            max_model_len=model_config.max_model_len,
        )
        domains = {d.strip().lower() for d in (config.media_domains or "").split(",") if d.strip()}
        policy = MediaPolicy(
            max_bytes=int(config.max_fetch_mb * 2**20),
            timeout_s=config.fetch_timeout_s,
            allowed_domains=frozenset(domains),
            local_folder=Path(config.media_folder) if config.media_folder else None,
        )
        state.audiotext = RouteState(
            limits=limits,
            fetcher=MediaFetcher(policy),
            max_queued_audio_s=config.max_queued_audio_s,
        )
