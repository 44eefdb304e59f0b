"""`audiotext serve` as people and orchestrators see it: a start they can follow, a stop
that stops (at any moment, warm-up included), bad flags refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audiotext.server.config import ServerConfig
from audiotext.server.launcher import STARTUP_TIMEOUT_S, ServerProcess, free_port
from audiotext.server.supervisor import STOP_GRACE_S
from tests.conftest import left_alive, process_tree

CLI = [sys.executable, "-m", "audiotext.server.cli"]


class Serve:
    """`audiotext serve` as a person starts it, its output collected line by line."""

    def __init__(self, *flags: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "serve", "--model", "tiny", "--port", str(free_port()), *flags],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, "\n".join(self.lines[-40:])
            assert time.monotonic() < deadline, f"no {text!r} in {timeout} s"
            time.sleep(0.1)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def kill(self) -> None:
        for process in process_tree(self.proc.pid) if self.proc.poll() is None else []:
            process.kill()


@pytest.fixture
def serve() -> Iterator[type[Serve]]:
    started: list[Serve] = []

    class Tracked(Serve):
        def __init__(self, *flags: str) -> None:
            super().__init__(*flags)
            started.append(self)

    yield Tracked
    for s in started:
        s.kill()


def test_sigterm_during_compilation_leaves_no_process(
    tiny_path: object, serve: type[Serve]
) -> None:
    server = serve()
    server.wait_for("audiotext: compiling the model (torch.compile)")
    assert "--enforce-eager skips it" in server.output
    processes = process_tree(server.proc.pid)
    assert len(processes) >= 3  # audiotext, vLLM's API server, its engine
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=STOP_GRACE_S + 30)
    assert time.monotonic() - started < STOP_GRACE_S + 10
    assert left_alive(processes) == []
    assert "audiotext: stopping (signal again to stop at once)" in server.output
    # vLLM's known noise stays out by default.
    assert "GuardedHfRenderer is already registered" not in server.output
    assert "Attempted to load weight" not in server.output
    assert "nanobind" not in server.output


def test_a_second_ctrl_c_stops_at_once(tiny_path: object, serve: type[Serve]) -> None:
    server = serve("--log-level", "debug")
    server.wait_for("audiotext: loading the model's weights")
    processes = process_tree(server.proc.pid)
    server.proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    started = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    server.proc.wait(timeout=30)
    assert time.monotonic() - started < 6.0
    assert left_alive(processes, within=2.0) == []
    assert "audiotext: second signal: killing the server now" in server.output
    # --log-level debug shows every line, the known noise and vLLM's debug lines included.
    assert "GuardedHfRenderer is already registered" in server.output
    assert " DEBUG " in server.output


def log_once_ready(server: ServerProcess, timeout: float = 10.0) -> list[str]:
    """The server's log lines once its `ready:` line is in.

    The supervisor polls `/health` on its own clock, so the line can land a poll after
    `/health` first answered the launcher.
    """
    assert server.log is not None
    deadline = time.monotonic() + timeout
    while True:
        lines = Path(server.log.name).read_text(errors="replace").splitlines()
        if any(line.startswith("ready: ") for line in lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_the_start_is_told_in_audiotexts_own_lines(server: ServerProcess) -> None:
    lines = log_once_ready(server)
    ours = [line for line in lines if line.startswith(("audiotext: ", "ready: "))]
    expected = [
        'audiotext: resolving model "tiny": built-in checkpoint',
        "audiotext: starting vLLM",
        "audiotext: loading the model's weights",
        "audiotext: compiling the model (torch.compile)",
        "audiotext: engine ready; starting the API server",
        f'ready: {server.base_url}, model "tiny"',
    ]
    progress = [line for line in ours if not line.startswith("audiotext: still ")]
    assert [p[: len(e)] for p, e in zip(progress, expected, strict=False)] == expected
    assert sum(line.startswith("ready: ") for line in lines) == 1
    assert not any("Attempted to load weight" in line for line in lines)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_whole_process_tree(tiny_path: object, sig: signal.Signals) -> None:
    # Eager mode: this test is about the process tree, not speed.
    server = ServerProcess(ServerConfig(model="tiny", port=free_port(), enforce_eager=True))
    server.start()
    try:
        assert server.proc is not None
        processes = process_tree(server.proc.pid)
        assert len(processes) > 2  # vLLM runs its engine in child processes
        os.kill(server.proc.pid, sig)  # only the main process, as an orchestrator would
        code = server.proc.wait(timeout=60)
        assert code == 0
        assert left_alive(processes) == []
    finally:
        server.stop()


def test_unknown_vllm_flag_fails_fast_without_traceback(tiny_path: object) -> None:
    result = subprocess.run(
        [*CLI, "serve", "--model", "tiny", "--port", str(free_port()), "--no-such-vllm-flag"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--no-such-vllm-flag" in result.stderr
    assert "Traceback" not in result.stderr
