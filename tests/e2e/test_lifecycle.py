"""`audiotext serve` as an orchestrator sees it: start, stop on a signal, refuse bad flags."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port


def group_gone(pgid: int, within: float = 15.0) -> bool:
    """True once no process of the group is left (exited children take a moment to be reaped)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_whole_process_tree(tiny_path: object, sig: signal.Signals) -> None:
    # Eager mode: this test is about the process tree, not speed.
    server = ServerProcess(ServerConfig(model="tiny", port=free_port(), enforce_eager=True))
    server.start()
    try:
        assert server.proc is not None
        pid = server.proc.pid
        children = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True)
        assert len(children.stdout.split()) > 1  # vLLM runs its engine in child processes
        os.kill(pid, sig)  # only the main process, as an orchestrator would
        code = server.proc.wait(timeout=60)
        assert code == 0
        assert group_gone(pid)
    finally:
        server.stop()


def test_unknown_vllm_flag_fails_fast_without_traceback(tiny_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "audiotext.server.cli", "serve", "--model", "tiny",
         "--port", str(free_port()), "--no-such-vllm-flag"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0
    assert "--no-such-vllm-flag" in result.stderr
    assert "Traceback" not in result.stderr
