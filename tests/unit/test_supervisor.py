"""The serve supervisor: vLLM's known noise out, everything else kept; a headless node's
ready line."""

from __future__ import annotations

import pytest

from audiotext.server.config import ServerConfig
from audiotext.server.supervisor import NoiseFilter, Supervisor

NOISE = [
    "(Worker pid=7) WARNING 12-01 08:31:38 [utils.py:334] Attempted to load weight "
    "language_model.model.layers.0.mlp.up_proj.weight with dtype torch.float32 into parameter "
    "with dtype torch.bfloat16",
    "(EngineCore pid=5) INFO 12-01 08:33:00 [shm_broadcast.py:750] No available shared memory "
    "broadcast block found in 60 seconds. This typically happens when some processes are hanging",
    "nanobind: leaked 4 instances!",
    ' - leaked instance 0x7f5948a29768 of type "triton._C.libtriton.ir.attribute"',
    ' - leaked function "create_extern_elementwise"',
    " - ... skipped remainder",
    "See https://nanobind.readthedocs.io/en/latest/refleaks.html",
]
KEPT = [
    "(APIServer pid=1) INFO 12-01 08:32:33 [entry.py:140] Starting vLLM server on http://x:1",
    "(Worker pid=7) INFO 12-01 08:31:38 [default_loader.py:501] Loading weights took 0.08 s",
    "audiotext serve: error: unrecognized arguments: --no-such-vllm-flag",
    "Traceback (most recent call last):",
    "ValueError: bad",
]


@pytest.mark.parametrize("line", NOISE)
def test_known_noise_is_left_out(line: str) -> None:
    assert not NoiseFilter().keep(line)


@pytest.mark.parametrize("line", KEPT)
def test_everything_else_is_kept(line: str) -> None:
    assert NoiseFilter().keep(line)


def test_a_warning_and_its_source_line_go_together() -> None:
    lines = [
        "/x/dispatcher.py:138: FutureWarning: `torch.distributed.reduce_op` is deprecated, "
        "please use `torch.distributed.ReduceOp` instead",
        '  if hasattr(value, "__dict__"):',
        "(Worker pid=7) INFO next line",
    ]
    noise = NoiseFilter()
    assert [line for line in lines if noise.keep(line)] == ["(Worker pid=7) INFO next line"]


def test_a_headless_node_is_ready_when_all_its_engines_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # As vLLM says them: the engine count comes from vLLM (flags, aliases and defaults).
    launch = (
        "(APIServer pid=3) INFO 12-01 23:03:50 [serve.py:239] Launching 2 data parallel "
        "engine(s) in headless mode, with head node address tcp://10.0.0.1:13345."
    )
    engine_ready = (
        "(EngineCore_DP1 pid=7) INFO 12-01 23:04:15 [core.py:402] init engine (profile, "
        "create kv cache, warmup model) took 12.84 s"
    )
    supervisor = Supervisor(ServerConfig(model="tiny", extra_args=("--headless",)))
    supervisor._milestone(launch)
    supervisor._milestone(engine_ready)
    assert not supervisor.ready  # one of two
    supervisor._milestone(engine_ready)
    assert supervisor.ready
    out = capsys.readouterr()
    assert out.out == "ready: 2 headless engine(s) serving the API server at 10.0.0.1:13345\n"
    assert "starting the API server" not in out.err  # it has none
