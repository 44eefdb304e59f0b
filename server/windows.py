"""Long audio heard whole: as few windows of at most 30 s as it needs, cut at quiet points.

Qwen2-Audio hears at most 30 s per audio item; stock vLLM drops the rest without a word.
audiotext's Qwen2-Audio processor (`qwen2_audio.py`) cuts every longer clip here into
windows of at most 30 s, and the model hears them in order, as one audio item. A clip of
`d` seconds takes `ceil(d / 30)` windows (60 s: two). Each cut falls on the quietest 100 ms
(vLLM's energy-based `find_split_point`) in the last second before a 30 s boundary, as far
as the rest still fits in the windows left; where it cannot (60 s in two windows), at the
boundary.
"""

from __future__ import annotations

import math

import numpy as np

from audiotext.client.audio import SAMPLE_RATE, Samples, min_samples

WINDOW_S = 30.0
WINDOW_SAMPLES = int(WINDOW_S * SAMPLE_RATE)
# Each cut is searched for within the last second before a 30 s boundary.
SPLIT_SEARCH_SAMPLES = int(1.0 * SAMPLE_RATE)
ENERGY_WINDOW_SAMPLES = 1600


def split_windows(samples: Samples) -> list[Samples]:
    """Cut 16 kHz mono audio into the fewest windows of at most 30 s, at quiet points."""
    total = len(samples)
    if total <= WINDOW_SAMPLES:
        return [samples]
    from vllm.multimodal.audio import find_split_point

    count = math.ceil(total / WINDOW_SAMPLES)
    windows, start = [], 0
    for left in range(count - 1, 0, -1):  # windows still to come after this cut
        latest = start + WINDOW_SAMPLES
        earliest = max(latest - SPLIT_SEARCH_SAMPLES, total - left * WINDOW_SAMPLES)
        cut = int(find_split_point(samples, earliest, latest, ENERGY_WINDOW_SAMPLES))
        windows.append(samples[start:cut])
        start = cut
    tail = samples[start:]
    if len(tail) < min_samples():
        # A few samples past a boundary: too short for the encoder; pad with silence.
        tail = np.pad(tail, (0, min_samples() - len(tail)))
    return [*windows, tail]


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
