"""The benchmark scripts run (so they cannot rot); only deterministic figures are asserted."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from audiotext.benchmarks import normalize


def test_normalize_benchmark_runs_and_sends_a_fifth_of_the_wav() -> None:
    parser = argparse.ArgumentParser()
    normalize.add_cli_args(parser)
    result = normalize.main(parser.parse_args(["--seconds", "3", "--repeats", "2"]))
    # 44.1 kHz stereo 16-bit -> 16 kHz mono 16-bit: 16000 / (2 * 44100) of the bytes.
    assert result["sent_bytes_ratio"] < 0.2


def test_encoder_benchmark_runs_on_the_tiny_checkpoint() -> None:
    from audiotext.benchmarks import encoder

    parser = argparse.ArgumentParser()
    encoder.add_cli_args(parser)
    result = encoder.main(
        parser.parse_args(["--size", "tiny", "--repeats", "1", "--batches", "1,3"])
    )
    assert [(row["batch"], row["case"]) for row in result["rows"]] == [
        (batch, case) for batch in (1, 3) for case in encoder.CASES
    ]
    assert all(row[f"{name}_ms"] > 0 for row in result["rows"] for name in encoder.SYSTEMS)


def test_encoder_benchmark_runs_the_7b_encoder_shape_without_vllm(tmp_path: Path) -> None:
    """The GPU table's command runs where only torch and transformers are installed."""
    from audiotext.benchmarks import encoder

    out = tmp_path / "encoder.json"
    run = subprocess.run(
        [sys.executable, "-c", "import sys, runpy; sys.modules['vllm'] = None; "
         "runpy.run_module('audiotext.benchmarks.encoder', run_name='__main__')",
         "--shape", "qwen2-audio-7b", "--layers", "1", "--dtype", "bfloat16",
         "--batches", "2", "--cases", "1 s", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["encoder"] == "qwen2-audio-7b shape, random weights, first 1 layers"
    assert result["dtype"] == "bfloat16"
    [row] = result["rows"]
    assert (row["case"], row["batch"]) == ("1 s", 2)
    assert all(row[f"{name}_ms"] > 0 for name in encoder.SYSTEMS)


def test_the_7b_shape_is_qwen2_audio_7bs_encoder() -> None:
    from audiotext.benchmarks import encoder

    config = encoder.shape_config("qwen2-audio-7b")
    audio = config.audio_config
    # Qwen2-Audio-7B-Instruct's config.json: Whisper-large-v3's encoder, projector to 4096.
    assert (audio.d_model, audio.encoder_layers, audio.encoder_attention_heads) == (1280, 32, 20)
    assert (audio.encoder_ffn_dim, audio.num_mel_bins, audio.max_source_positions) == (
        5120, 128, 1500,
    )  # fmt: skip
    assert config.text_config.hidden_size == 4096
    parser = argparse.ArgumentParser()
    encoder.add_cli_args(parser)
    args = parser.parse_args(["--shape", "qwen2-audio-7b", "--layers", "1"])
    tower, projector, extractor, _ = encoder.load_encoder(args)
    assert extractor.feature_size == 128 and extractor.n_samples == 30 * 16000
    assert len(tower.layers) == 1  # --layers trims the depth, not the width
    assert tower.layers[0].fc1.out_features == 5120
    assert (projector.linear.in_features, projector.linear.out_features) == (1280, 4096)


def test_summary_percentiles_and_throughput() -> None:
    from audiotext.benchmarks.loadgen import Record, summarize

    records = [
        Record(
            start_s=0, audio_seconds=2.0, ttft_s=t, e2e_s=t + 0.9, itl_s=[0.1] * 9, output_tokens=10
        )
        for t in (0.1, 0.2, 0.3, 0.4)
    ] + [Record(start_s=0, audio_seconds=5.0, error="boom")]
    summary = summarize(records, wall_s=2.0)
    assert summary["requests"] == 5 and summary["errors"] == 1
    assert summary["requests_per_s"] == 2.0
    assert summary["output_tokens_per_s"] == 20.0
    assert summary["audio_seconds_per_s"] == 4.0
    assert summary["ttft_s"]["p50"] == pytest.approx(0.25)
    assert summary["tpot_s"]["mean"] == pytest.approx(0.1)
    assert summary["itl_s"]["p99"] == pytest.approx(0.1)


def test_startup_systems_take_server_settings(tmp_path: Path) -> None:
    from audiotext.benchmarks.startup import StartSystem, server_config

    plain = StartSystem.parse("audiotext")
    changed = StartSystem.parse("audiotext:worker_process=true,max_num_seqs=8")
    assert changed.spec.name == "audiotext:worker_process=true,max_num_seqs=8"
    config = server_config(changed, "tiny", "auto")
    assert config.worker_process and config.max_num_seqs == 8
    assert not server_config(plain, "tiny", "auto").worker_process
    assert server_config(StartSystem.parse("vllm"), "tiny", "auto").stock
    assert StartSystem.parse(f"audiotext@{tmp_path}").source == tmp_path.resolve()
    for bad in ["sglang", "vllm@x", "vllm:stock=false", "audiotext:nope=1"]:
        with pytest.raises(SystemExit):
            StartSystem.parse(bad)
