"""The benchmark scripts run (so they cannot rot); only deterministic figures are asserted."""

from __future__ import annotations

import argparse

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
    result = encoder.main(parser.parse_args(["--size", "tiny", "--repeats", "1"]))
    assert [row["case"] for row in result["rows"]] == list(encoder.CASES)
    assert all(row["stock_ms"] > 0 and row["padding_free_ms"] > 0 for row in result["rows"])
