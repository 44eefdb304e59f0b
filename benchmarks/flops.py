"""Model FLOPs of a request and this machine's matrix-multiply peak: how far from the limit.

A request's FLOPs are counted from the checkpoint's configuration and the tokens it
actually processed: the audio encoder over the clip's real frames (padding is not useful
work, whoever spends it), the projector, and the language model over the prompt and every
generated token, attention included. Two FLOPs per multiply-add. Model FLOP utilisation
(MFU) is a system's FLOPs per second at saturation over the peak measured with the same
torch in the same dtype (`peak_flops`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Whisper's front end: 100 mel frames a second, halved by the second convolution, halved
# again by the pooling before the projector (25 audio tokens a second).
MEL_FRAMES_PER_S = 100
ENCODER_POSITIONS_PER_S = 50
AUDIO_TOKENS_PER_S = 25


@dataclass(frozen=True)
class Shape:
    """What FLOPs depend on, from a Qwen2-Audio `config.json`."""

    mel_bins: int
    d_model: int
    encoder_layers: int
    encoder_ffn: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Shape:
        audio, text = config["audio_config"], config["text_config"]
        return cls(
            mel_bins=audio["num_mel_bins"],
            d_model=audio["d_model"],
            encoder_layers=audio["encoder_layers"],
            encoder_ffn=audio["encoder_ffn_dim"],
            hidden=text["hidden_size"],
            layers=text["num_hidden_layers"],
            intermediate=text["intermediate_size"],
            heads=text["num_attention_heads"],
            kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
            vocab=text["vocab_size"],
        )

    @classmethod
    def of_checkpoint(cls, path: Path) -> Shape:
        import json

        return cls.from_config(json.loads((path / "config.json").read_text()))


def encoder_flops(shape: Shape, audio_seconds: float) -> float:
    """Convolutions, transformer layers (attention within the clip) and projector."""
    frames = audio_seconds * MEL_FRAMES_PER_S
    positions = audio_seconds * ENCODER_POSITIONS_PER_S
    d = shape.d_model
    convs = 2 * 3 * shape.mel_bins * d * frames + 2 * 3 * d * d * positions
    projections = positions * (2 * 4 * d * d + 2 * 2 * d * shape.encoder_ffn)
    per_layer = projections + 2 * 2 * positions**2 * d  # scores and values, within the clip
    projector = 2 * d * shape.hidden * audio_seconds * AUDIO_TOKENS_PER_S
    return convs + shape.encoder_layers * per_layer + projector


def language_model_flops(shape: Shape, prompt_tokens: int, output_tokens: int) -> float:
    """Every prompt token and every generated token but the last through every layer
    (projections, gated MLP, attention over the context so far), and the output layer for
    each generated token."""
    h = shape.hidden
    kv = h * shape.kv_heads // shape.heads
    per_token = 2 * (2 * h * h + 2 * h * kv) + 2 * 3 * h * shape.intermediate
    tokens = prompt_tokens + max(output_tokens - 1, 0)
    attention = 2 * 2 * h * tokens * (tokens + 1) / 2  # sum over positions of the context
    return shape.layers * (per_token * tokens + attention) + 2 * h * shape.vocab * output_tokens


def request_flops(
    shape: Shape, audio_seconds: float, prompt_tokens: int, output_tokens: int
) -> float:
    return encoder_flops(shape, audio_seconds) + language_model_flops(
        shape, prompt_tokens, output_tokens
    )


def point_flops_per_s(shape: Shape, point: dict[str, Any]) -> float | None:
    """Model FLOPs per second over a benchmark point's successful requests."""
    ok = [r for r in point["records"] if r["error"] is None and r["prompt_tokens"]]
    wall = point["summary"]["wall_s"]
    if not ok or not wall:
        return None
    total = sum(
        request_flops(shape, r["audio_seconds"], r["prompt_tokens"], r["output_tokens"]) for r in ok
    )
    return float(total / wall)


def peak_flops(dtype: str, size: int = 2048, seconds: float = 2.0) -> float:
    """The best of repeated `size`-square linear layers (`F.linear`, as models call them)
    in `dtype`, with torch's threads."""
    return linear_rate([(size, size)], size, dtype, seconds)


def linear_rate(layers: Sequence[tuple[int, int]], rows: int, dtype: str, seconds: float) -> float:
    """FLOPs per second of one pass of `rows` rows through the (in, out) linear `layers`
    (`F.linear`, torch's threads): the best of repeats for `seconds`, after a warm-up."""
    import torch
    import torch.nn.functional as F

    kind = getattr(torch, dtype)
    work = [(torch.randn(rows, i, dtype=kind), torch.randn(o, i, dtype=kind)) for i, o in layers]
    flops = sum(2 * rows * i * o for i, o in layers)
    for x, w in work:  # warm-up: threads, kernels
        F.linear(x, w)
    best = float("inf")
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for x, w in work:
            F.linear(x, w)
        best = min(best, time.perf_counter() - start)
    return flops / best


def describe(path: Path, dtypes: tuple[str, ...]) -> dict[str, Any]:
    """What a result file stores: the shape FLOPs come from, and the peak per dtype."""
    return {
        "shape": asdict(Shape.of_checkpoint(path)),
        "peak_flops": {dtype: peak_flops(dtype) for dtype in dtypes},
    }
