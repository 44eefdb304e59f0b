"""The decode probe the e2e and reliability servers run (`tests/probes/sitecustomize.py`)
sees every decoder a clip could go through: audiotext's intake and vLLM's own loader."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROBES, DecodeLog, speech_of, wav_bytes

DECODE_TWICE = """
import io, sys
from audiotext.server import intake
from vllm.multimodal.media.audio import load_audio
data = open(sys.argv[1], "rb").read()
intake.take(data, 240)
load_audio(io.BytesIO(data), sr=16000)
intake.declared_seconds(data)  # a header read, not a decode
"""


def test_the_probe_logs_each_decode_with_its_process(tmp_path: Path) -> None:
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes(speech_of(2)))
    log = DecodeLog(tmp_path / "decodes.log")
    env = {**os.environ, "PYTHONPATH": str(PROBES), "AUDIOTEXT_DECODE_LOG": str(log.path)}
    done = subprocess.run(
        [sys.executable, "-c", DECODE_TWICE, str(clip)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    decoders = log.processes()
    assert len(decoders) == 2 and len(set(decoders)) == 1 and decoders[0] != os.getpid()
