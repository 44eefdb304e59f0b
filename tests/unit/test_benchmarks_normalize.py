"""The normalisation benchmark runs (so it cannot rot); its size ratio is deterministic."""

from __future__ import annotations

import argparse

from audiotext.benchmarks import normalize


def test_normalize_benchmark_runs_and_sends_a_fifth_of_the_wav() -> None:
    parser = argparse.ArgumentParser()
    normalize.add_cli_args(parser)
    result = normalize.main(parser.parse_args(["--seconds", "3", "--repeats", "2"]))
    # 44.1 kHz stereo 16-bit -> 16 kHz mono 16-bit: 16000 / (2 * 44100) of the bytes.
    assert result["sent_bytes_ratio"] < 0.2
