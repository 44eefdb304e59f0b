"""`audiotext bench` end to end on the tiny checkpoint: every system, a few requests each.

A smoke run so the harness cannot rot; the figures themselves are not asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from audiotext.benchmarks.systems import KINDS
from audiotext.server.config import cpu_has_bfloat16

OUTPUT_TOKENS = 6


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    if shutil.which("espeak-ng") is None:
        pytest.fail(
            "tests/e2e/test_bench.py needs espeak-ng (it speaks the benchmark workloads): "
            "`make install` installs it, or run `apt-get install espeak-ng`"
        )
    out = tmp_path_factory.mktemp("bench")
    command = [
        sys.executable, "-m", "audiotext.server.cli", "bench", "--size", "tiny",
        "--workloads", "short", "--requests", "4", "--serial-requests", "2",
        "--concurrency", "2", "--rates", "8", "--output-tokens", str(OUTPUT_TOKENS),
        "--name", "smoke", "--out-dir", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "smoke.json").read_text()), out


def test_every_system_ran_every_request_with_exact_output_lengths(
    result: tuple[dict[str, Any], Path],
) -> None:
    data, _ = result
    assert [s["kind"] for s in data["systems"]] == list(KINDS)
    for system in data["systems"]:
        assert "error" not in system and system["points"], system
        for point in system["points"]:
            assert point["summary"]["errors"] == 0, (system["name"], point["records"])
            assert point["summary"]["requests_per_s"] > 0
            assert {r["output_tokens"] for r in point["records"]} == {OUTPUT_TOKENS}


def test_servers_ran_the_sweep_and_audiotext_both_endpoints(
    result: tuple[dict[str, Any], Path],
) -> None:
    data, _ = result
    labels = {s["name"]: {p["label"] for p in s["points"]} for s in data["systems"]}
    assert labels["audiotext"] == {"c=1", "c=2", "rate=8/s", "c=1 task"}
    assert labels["vllm"] == {"c=1", "c=2", "rate=8/s"}
    assert labels["transformers-serve"] == {"c=1", "c=2"}
    assert labels["raw"] == {"sequential"} and labels["offline"] == {"offline"}
    audiotext = next(s for s in data["systems"] if s["name"] == "audiotext")
    streamed = [r for p in audiotext["points"] for r in p["records"]]
    assert all(0 < r["ttft_s"] <= r["e2e_s"] for r in streamed)


def test_the_json_echoes_configuration_machine_and_versions(
    result: tuple[dict[str, Any], Path],
) -> None:
    data, _ = result
    # By default each system runs in the dtype its users get.
    assert data["config"]["size"] == "tiny" and data["config"]["dtype"] == "auto"
    assert data["machine"]["cores"] >= 1 and data["versions"]["transformers"]
    stock = next(s for s in data["systems"] if s["name"] == "vllm")
    assert "--max-num-batched-tokens" in stock["invocation"]["vllm_argv"]
    dtypes = {s["name"]: s["dtype"] for s in data["systems"]}
    ours = "bfloat16" if cpu_has_bfloat16() else "float32"
    assert dtypes == {
        "audiotext": ours, "vllm": "bfloat16", "transformers-serve": "float32",
        "raw": "float32", "offline": ours,
    }  # fmt: skip
    audiotext = next(s for s in data["systems"] if s["name"] == "audiotext")
    argv = audiotext["invocation"]["vllm_argv"]
    assert argv[argv.index("--dtype") + 1] == ("auto" if ours == "bfloat16" else "float32")
    assert (
        stock["invocation"]["vllm_argv"][stock["invocation"]["vllm_argv"].index("--dtype") + 1]
        == "auto"
    )


def test_the_vllm_servers_record_their_engine_steps(result: tuple[dict[str, Any], Path]) -> None:
    from audiotext.benchmarks.report import step_counts, time_table

    data, _ = result
    for name in ("audiotext", "vllm"):
        system = next(s for s in data["systems"] if s["name"] == name)
        point = next(p for p in system["points"] if p["label"] == "c=2")
        # 4 requests of OUTPUT_TOKENS tokens, 2 at a time, a token per sequence per step.
        assert sum(n for _, _, n in step_counts(point["engine"])) >= 4 * OUTPUT_TOKENS / 2
    assert any(line.startswith("- audiotext at ") for line in time_table(data))
