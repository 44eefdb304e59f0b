"""Client-side normalisation cost: decode + down-mix + resample + encode of one file.

    python -m audiotext.benchmarks.normalize [--seconds 30] [--rate 44100] [--repeats 20]

Prints the median time and the size of what is sent relative to the original 16-bit WAV.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import time

import numpy as np
import soundfile

from audiotext.client.audio import prepare_audio


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=int, default=44100)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)


def make_wav(seconds: float, rate: int, channels: int) -> bytes:
    """Speech-like test signal: noise shaped by a syllable-rate envelope, plus a tone."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t))
    mono = 0.2 * envelope * rng.standard_normal(t.size) + 0.1 * np.sin(2 * np.pi * 220 * t)
    samples = np.stack([mono * (0.8 + 0.2 * c) for c in range(channels)], axis=1)
    buf = io.BytesIO()
    soundfile.write(buf, samples.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def main(args: argparse.Namespace) -> dict[str, object]:
    original = make_wav(args.seconds, args.rate, args.channels)
    prepare_audio(original)  # warm-up
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        prepared = prepare_audio(original)
        times.append(time.perf_counter() - start)
    sent = len(prepared.part["input_audio"]["data"]) * 3 // 4  # base64 -> bytes
    result = {
        "input": f"{args.seconds:g} s, {args.rate} Hz, {args.channels} ch, 16-bit WAV",
        "median_ms": round(statistics.median(times) * 1000, 1),
        "sent_bytes_ratio": round(sent / len(original), 3),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
