"""How fast this machine multiplies at the model's own shapes, against the square peak.

    python -m audiotext.benchmarks.shapes --size bench

times `F.linear` for each linear layer of the checkpoint (language model as vLLM fuses it,
audio encoder as `server/encoder.py` calls it) at the row counts the engine runs them with
(decode steps of a few sequences, prefill chunks, encoder packs) and prints, per row count,
the FLOP rate over all those layers as a share of the 2048-square peak measured in the same
run (`flops.peak_flops`). A model whose steps run at a share of 30 % cannot reach 60 % MFU.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from audiotext.benchmarks.flops import Shape, linear_rate, peak_flops

LM_ROWS = (1, 4, 16, 64, 256, 1024, 4096)
ENCODER_ROWS = (100, 500, 1500)


def lm_layers(shape: Shape) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's linear layers, fused as vLLM runs them."""
    head_dim = shape.hidden // shape.heads
    return [
        (shape.hidden, (shape.heads + 2 * shape.kv_heads) * head_dim),  # qkv_proj
        (shape.heads * head_dim, shape.hidden),  # o_proj
        (shape.hidden, 2 * shape.intermediate),  # gate_up_proj
        (shape.intermediate, shape.hidden),  # down_proj
    ]


def encoder_layers(shape: Shape) -> list[tuple[int, int]]:
    """(in, out) of one encoder layer's linear layers (q, k, v, out, fc1, fc2)."""
    d = shape.d_model
    return [(d, d)] * 4 + [(d, shape.encoder_ffn), (shape.encoder_ffn, d)]


def measure(shape: Shape, dtype: str, seconds: float = 0.5) -> dict[str, dict[int, float]]:
    """Share of the square peak per row count, for the language model and the encoder."""
    peak = peak_flops(dtype)
    return {
        "language model": {
            n: linear_rate(lm_layers(shape), n, dtype, seconds) / peak for n in LM_ROWS
        },
        "audio encoder": {
            n: linear_rate(encoder_layers(shape), n, dtype, seconds) / peak for n in ENCODER_ROWS
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    from audiotext.server import checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="bench", help="built-in checkpoint (default: bench)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"))
    args = parser.parse_args(argv)
    shape = Shape.of_checkpoint(checkpoint.ensure_built(args.size))
    print(f"| part | rows | share of the {args.dtype} 2048-square peak |")
    print("|---|---:|---:|")
    for part, shares in measure(shape, args.dtype).items():
        for rows, share in shares.items():
            print(f"| {part} | {rows} | {share:.0%} |")


if __name__ == "__main__":
    main()
