"""The endpoint plugin on vLLM's own app: the served surface, and the checks it makes at start.

The app is vLLM's real `build_app` with audiotext's plugins, as `audiotext serve` builds
it; no engine is needed to see which routes it mounts.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from audiotext.server import config as server_config
from audiotext.server.config import ServerConfig, to_vllm
from audiotext.server.renderer import GuardedHfRenderer
from audiotext.server.routes_plugin import SUPPORTED_PATHS, AudioTextRoutes

# Routes stock vLLM 0.32 mounts for a generating model that audiotext does not support.
UNSUPPORTED = (
    "/scale_elastic_ep", "/is_scaling_elastic_ep", "/v1/chat/completions/batch",
    "/generative_scoring", "/v1/chat/completions/render", "/inference/v1/generate",
)  # fmt: skip


def vllm_app(monkeypatch: pytest.MonkeyPatch, config: ServerConfig) -> FastAPI:
    """vLLM's app as `audiotext serve` would build it for `config`."""
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    invocation = to_vllm(config)
    for name, value in invocation.env.items():
        monkeypatch.setenv(name, value)
    server_config.served_config.cache_clear()
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(list(invocation.argv))
    try:
        return build_app(args, ("generate",))
    finally:
        server_config.served_config.cache_clear()


def paths(app: FastAPI) -> set[str]:
    return {path for route in app.routes if (path := getattr(route, "path", None))}


def test_unsupported_vllm_routes_answer_404_unless_turned_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = vllm_app(monkeypatch, ServerConfig(model="tiny"))
    assert paths(served) <= SUPPORTED_PATHS
    assert {"/v1/chat/completions", "/invocations", "/v1/audio-text-to-text"} <= paths(served)
    schema = served.openapi()["paths"]
    anonymous = TestClient(served)
    for path in UNSUPPORTED:
        assert path not in schema
        assert anonymous.post(path, json={}).status_code == 404, path

    everything = vllm_app(monkeypatch, ServerConfig(model="tiny", all_vllm_routes=True))
    assert set(UNSUPPORTED) <= paths(everything)
    assert paths(everything) > paths(served)


def start(engine_client: Any) -> None:
    asyncio.run(AudioTextRoutes().init_state(engine_client, SimpleNamespace(), SimpleNamespace()))


def renderer() -> GuardedHfRenderer:
    """audiotext's renderer class, without the tokenizer a real one loads."""
    instance = GuardedHfRenderer.__new__(GuardedHfRenderer)
    instance.on_shutdown = []
    return instance


def test_the_server_does_not_start_when_vllm_moved_what_it_relies_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", server_config.MEDIA_CONNECTOR)
    # A renamed public attribute: engine death would go unnoticed, the exit code would be 0.
    with pytest.raises(RuntimeError, match="no public `errored`"):
        start(SimpleNamespace(renderer=renderer()))
    with pytest.raises(RuntimeError, match="not audiotext's renderer"):
        start(SimpleNamespace(renderer=object(), errored=False))
    with pytest.raises(RuntimeError, match="need vLLM's engine"):
        start(None)
    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", "http")
    with pytest.raises(RuntimeError, match="not audiotext's"):
        start(SimpleNamespace(renderer=renderer(), errored=False))
    # What vLLM 0.32 provides passes, and turns the control-token check and draining on.
    monkeypatch.setenv("VLLM_MEDIA_CONNECTOR", server_config.MEDIA_CONNECTOR)
    wired = renderer()
    start(SimpleNamespace(renderer=wired, errored=False))
    assert wired.guard_user_text and len(wired.on_shutdown) == 1


def test_realtime_key_from_the_browser_subprotocol_passes_vllms_own_key_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    served = vllm_app(monkeypatch, ServerConfig(model="tiny", api_key="k"))
    client = TestClient(served)
    with client.websocket_connect("/v1/realtime") as ws:
        assert ws.receive_json()["error"]["code"] == "invalid_api_key"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
    assert closed.value.code == 1008
    # With the key as a subprotocol, the session reaches the route (vLLM's API-key
    # middleware, inside the guard, saw it as the header); this app has no engine, so the
    # route stops there, where a served app would begin the session.
    protocols = ["realtime", "openai-insecure-api-key.k"]
    with (
        pytest.raises(AttributeError, match="openai_serving_chat"),
        client.websocket_connect("/v1/realtime", subprotocols=protocols),
    ):
        pass
