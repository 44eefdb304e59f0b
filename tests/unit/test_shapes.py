"""The matmul-shape benchmark times the layers the real model has, at their real shapes."""

from __future__ import annotations

import torch
from torch import nn

from audiotext.benchmarks import shapes
from audiotext.benchmarks.flops import Shape
from audiotext.server import checkpoint


def linear_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


def test_layer_shapes_are_the_checkpoints_own() -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    path = checkpoint.ensure_built("tiny")
    shape = Shape.of_checkpoint(path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
    encoder_layer = model.model.audio_tower.layers[0]
    assert sorted(linear_shapes(encoder_layer)) == sorted(shapes.encoder_layers(shape))
    # vLLM fuses q, k, v into one layer and gate, up into another: same inputs, summed outputs.
    lm = model.model.language_model.layers[0]
    attn, mlp = lm.self_attn, lm.mlp
    fused = [
        (
            attn.q_proj.in_features,
            sum(p.out_features for p in (attn.q_proj, attn.k_proj, attn.v_proj)),
        ),
        (attn.o_proj.in_features, attn.o_proj.out_features),
        (mlp.gate_proj.in_features, mlp.gate_proj.out_features + mlp.up_proj.out_features),
        (mlp.down_proj.in_features, mlp.down_proj.out_features),
    ]
    assert shapes.lm_layers(shape) == fused
    assert len(linear_shapes(lm)) == 7  # q, k, v, o, gate, up, down: nothing left out
