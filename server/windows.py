"""Long audio heard whole: windows of at most 30 s, cut at quiet points.

Qwen2-Audio hears at most 30 s per audio item; stock vLLM drops the rest without a word.
audiotext's Qwen2-Audio processor (`qwen2_audio.py`) cuts every longer clip here into
windows of at most 30 s (vLLM's energy-based splitter: the quietest 100 ms in the last
second before each 30 s boundary) and the model hears them in order, as one audio item.
"""

from __future__ import annotations

import numpy as np

from audiotext.client.audio import SAMPLE_RATE, Samples, min_samples

WINDOW_S = 30.0
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)
# Each cut is placed at the quietest 100 ms within the last second before a 30 s boundary.
SPLIT_SEARCH_S = 1.0
ENERGY_WINDOW_SAMPLES = 1600


def split_windows(samples: Samples) -> list[Samples]:
    """Cut 16 kHz mono audio into windows of at most 30 s at low-energy points."""
    if len(samples) <= WINDOW_SAMPLES:
        return [samples]
    from vllm.multimodal.audio import split_audio

    windows: list[Samples] = split_audio(
        samples, SAMPLE_RATE, WINDOW_S, SPLIT_SEARCH_S, ENERGY_WINDOW_SAMPLES
    )
    tail = windows[-1]
    if len(windows) > 1 and len(tail) < min_samples():
        # A few samples past a boundary: too short for the encoder; pad with silence.
        windows[-1] = np.pad(tail, (0, min_samples() - len(tail)))
    return windows


def window_count(samples: Samples) -> int:
    """How many windows the model hears `samples` in."""
    return len(split_windows(samples))


def timed_windows(samples: Samples) -> list[tuple[float, float, Samples]]:
    """`split_windows`, with each window's start and end in the clip, in seconds."""
    windows, start, total = split_windows(samples), 0, len(samples)
    timed = []
    for window in windows:
        end = min(start + len(window), total)
        timed.append((start / SAMPLE_RATE, end / SAMPLE_RATE, window))
        start = end
    return timed
