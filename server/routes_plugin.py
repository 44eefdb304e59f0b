"""vLLM endpoint plugin (`vllm.endpoint_plugins`): audiotext's routes, surface and guards.

vLLM loads it in every API server process when `VLLM_PLUGINS` names `audiotext_routes`,
which the launcher does unless `--stock` is given. It
- adds the task, transcription and translation routes (`routes`);
- keeps the routes audiotext supports and tests, and drops the rest (vLLM's development,
  management and elastic-scaling routes) unless `--all-vllm-routes` is given;
- puts the guards (`guards`) in front of every route;
- turns on the renderer's control-token check and hooks draining into vLLM's shutdown.
"""

from __future__ import annotations

import asyncio
import logging
from argparse import Namespace
from typing import Any

from fastapi import FastAPI

from audiotext.server import lifecycle
from audiotext.server.config import MEDIA_CONNECTOR, served_config

logger = logging.getLogger(__name__)

# The served surface: what audiotext supports and its tests exercise.
SUPPORTED_PATHS = frozenset(
    {
        # open: probes, metrics, docs
        "/health", "/ping", "/metrics", "/version", "/load",
        "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/static",
        # OpenAI, Anthropic and SageMaker shapes
        "/v1/models", "/v1/chat/completions", "/v1/completions",
        "/v1/responses", "/v1/responses/{response_id}", "/v1/responses/{response_id}/cancel",
        "/v1/messages", "/v1/messages/count_tokens", "/invocations",
        "/tokenize", "/detokenize",
        # audiotext's own
        "/v1/audio-text-to-text", "/v1/audio/transcriptions", "/v1/audio/translations",
        "/playground", "/v1/realtime",
    }
)  # fmt: skip


class AudioTextRoutes:
    """The task, transcription and translation routes; the surface; the guards."""

    name = "audiotext_routes"
    required_tasks = ("generate",)

    def attach_router(self, app: FastAPI) -> None:
        from audiotext.server.guards import GuardMiddleware, GuardSettings
        from audiotext.server.intake import AudioQueue
        from audiotext.server.realtime.route import router as realtime_router
        from audiotext.server.routes import router

        config = served_config()
        app.include_router(router)
        app.include_router(realtime_router)
        if not config.all_vllm_routes:
            app.router.routes[:] = [
                r for r in app.router.routes if getattr(r, "path", None) in SUPPORTED_PATHS
            ]
        settings = GuardSettings(
            api_key=config.api_key,
            max_body_bytes=int(config.max_body_mb * 2**20),
            max_in_flight=config.max_queued_requests,
            deadline_s=config.request_timeout_s,
            max_audio_seconds=config.max_audio_seconds,
            max_queued_audio_s=config.max_queued_audio_s,
        )
        # One queue of audio in flight for the process: HTTP requests and realtime answers.
        app.state.audiotext_audio_queue = AudioQueue(settings.max_queued_audio_s)
        app.add_middleware(
            GuardMiddleware,
            settings=settings,
            lifecycle=lifecycle.PROCESS,
            audio_queue=app.state.audiotext_audio_queue,
        )
        outermost_websocket_guard(app, settings, config.realtime_max_sessions)

    async def init_state(self, engine_client: Any, state: Any, args: Namespace) -> None:
        from audiotext.server.renderer import GuardedHfRenderer

        check_vllm_wiring(engine_client)
        renderer: GuardedHfRenderer = engine_client.renderer
        renderer.guard_user_text = True
        drain_s = served_config().drain_timeout_s
        renderer.on_shutdown.append(lambda: lifecycle.PROCESS.drain(drain_s))
        state.audiotext_engine_watch = asyncio.get_running_loop().create_task(
            lifecycle.PROCESS.watch_engine(engine_client)
        )


def outermost_websocket_guard(app: FastAPI, settings: Any, max_sessions: int) -> None:
    """Put `guards.WebSocketGuard` outside every middleware, vLLM's included.

    vLLM adds its middleware (its API-key check among them) after the plugins attach, so
    any middleware added here runs inside it, and vLLM's check would refuse a browser's
    key, which comes as a subprotocol. Starlette builds the stack once, on the first
    request, with `build_middleware_stack`: wrapping it puts the guard outermost.
    """
    from audiotext.server.guards import WebSocketGuard

    build = app.build_middleware_stack

    def build_guarded() -> Any:
        return WebSocketGuard(build(), settings, lifecycle.PROCESS, max_sessions)

    setattr(app, "build_middleware_stack", build_guarded)  # noqa: B010 (an instance's method)


def check_vllm_wiring(engine_client: Any) -> None:
    """Fail at start, not silently later, if vLLM stopped providing what audiotext's
    guarantees, draining and engine-death detection rest on (a rename, a new default)."""
    from vllm import envs
    from vllm.renderers.hf import HfRenderer

    from audiotext.server.renderer import GuardedHfRenderer

    if engine_client is None:
        raise RuntimeError("audiotext's routes need vLLM's engine; this server has none")
    renderer = getattr(engine_client, "renderer", None)
    if not isinstance(renderer, GuardedHfRenderer):
        raise RuntimeError(
            f"vLLM uses {type(renderer).__name__}, not audiotext's renderer: control "
            "tokens would not be refused"
        )
    if envs.VLLM_MEDIA_CONNECTOR != MEDIA_CONNECTOR:
        raise RuntimeError(
            f"vLLM's media connector is {envs.VLLM_MEDIA_CONNECTOR!r}, not audiotext's: "
            "audio would not be guarded"
        )
    # Draining runs when vLLM shuts the renderer down; engine death is read from `errored`.
    if not callable(getattr(HfRenderer, "shutdown", None)):
        raise RuntimeError("vLLM's renderer has no shutdown(): draining would never start")
    try:
        errored = engine_client.errored
    except AttributeError as e:
        raise RuntimeError(
            f"vLLM's engine client has no public `errored` ({e}): a dead engine would not "
            "be noticed and the server would exit 0"
        ) from e
    if not isinstance(errored, bool):
        raise RuntimeError(f"vLLM's EngineClient.errored is {type(errored).__name__}, not bool")
