"""Padding-free Qwen2-Audio encoding: one encoder forward over what every clip holds.

Stock vLLM runs the Whisper-style encoder over 30 s of padded mel frames (1500
positions) for every clip and masks the padding in attention. Keys past a clip's length
are masked, so its valid positions never see the padding: running the encoder on the
valid frames alone (plus the frames its two convolutions read at the edge) gives the
same embeddings, with a fraction of the work for short clips and quadratically less
attention.

Each clip's convolutions run on its own frames (cheap, and exact at the edges). The
transformer layers then run over the concatenated positions of many clips at once, with
block-diagonal attention (`packed_attention`), so short clips share large matrix
products instead of one small set per clip: the whole batch in one forward on GPUs,
packs of up to `CPU_PACK_POSITIONS` on CPU. The layer math is transformers'
`Qwen2AudioEncoderLayer` step for step (pre-norm, queries scaled before attention, no
bias on `k_proj`, the float16 clamp), called through its own submodules.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from audiotext.server.packed_attention import AttentionFactory, PackedAttention, default_attention

Clip = tuple[torch.Tensor, int, int]
"""A clip's features, encoder positions and audio tokens."""


# On CPU a pack larger than this loses more to memory traffic (activations no longer
# fit in cache) than it gains from larger matrix products: short clips are packed
# together up to it, longer ones run alone, as per clip (README, "Padding-free audio
# encoder": 32 clips of 1-30 s cost 1.3x per clip's time in one forward, 1.0x so packed).
CPU_PACK_POSITIONS = 512


def encode_valid_frames(
    tower: Any,
    projector: nn.Module,
    input_features: torch.Tensor | Sequence[torch.Tensor],
    feature_attention_mask: torch.Tensor | Sequence[torch.Tensor],
    attention: AttentionFactory | None = None,
    pack_positions: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Audio embeddings, one (tokens, hidden) tensor per clip, as stock but without padding.

    Args:
        tower: the Qwen2-Audio encoder (transformers' `Qwen2AudioEncoder`).
        projector: the multimodal projector.
        input_features: per clip, (mel bins, frames) log-mel features: padded to 30 s
            (stock) or trimmed (`features.trimmed_features`), stacked or as a list.
        feature_attention_mask: per clip, (frames,) with 1 on valid frames.
        attention: block-diagonal attention for the packing; by default varlen flash
            attention where it runs, length-bucketed SDPA elsewhere.
        pack_positions: most encoder positions in one forward (a longer clip runs alone);
            by default `CPU_PACK_POSITIONS` on CPU and the whole batch elsewhere.
    """
    if len(input_features) != len(feature_attention_mask):
        raise ValueError(
            f"{len(input_features)} clips of features but {len(feature_attention_mask)} masks"
        )
    if not len(input_features):
        return ()
    dtype, device = tower.conv1.weight.dtype, tower.conv1.weight.device
    if attention is None:
        layer = tower.layers[0]
        head_dim = layer.self_attn.head_dim
        token_cost = 2 * layer.embed_dim + layer.fc1.out_features
        attention = default_attention(dtype, device, head_dim, token_cost)
    if pack_positions is None:
        pack_positions = CPU_PACK_POSITIONS if device.type == "cpu" else sys.maxsize
    # One host sync for every clip's lengths, not one per clip.
    valid = torch.stack([mask.sum() for mask in feature_attention_mask])
    positions, tokens = (n.tolist() for n in tower._get_feat_extract_output_lengths(valid))
    clips = [
        (clip_features.to(dtype=dtype, device=device), length, count)
        for clip_features, length, count in zip(input_features, positions, tokens, strict=True)
    ]
    embeddings: dict[int, torch.Tensor] = {}
    for pack in _packs(positions, pack_positions):
        packed = _encode_pack(tower, projector, [clips[i] for i in pack], attention)
        embeddings.update(zip(pack, packed, strict=True))
    return tuple(embeddings[i] for i in range(len(clips)))


def _packs(positions: list[int], pack_positions: int) -> list[list[int]]:
    """Clip indices grouped, shortest clips first, into packs of at most `pack_positions`."""
    packs: list[list[int]] = []
    total = 0
    for i in sorted(range(len(positions)), key=positions.__getitem__):
        if packs and total + positions[i] <= pack_positions:
            packs[-1].append(i)
            total += positions[i]
        else:
            packs.append([i])
            total = positions[i]
    return packs


def _encode_pack(
    tower: Any, projector: nn.Module, pack: list[Clip], attention: AttentionFactory
) -> tuple[torch.Tensor, ...]:
    """One forward over the packed positions of `pack`'s clips, split back per clip."""
    positions = [length for _, length, _ in pack]
    tokens = [count for _, _, count in pack]
    hidden = torch.cat([_convolved(tower, features, length) for features, length, _ in pack])
    device = hidden.device
    index = torch.cat([torch.arange(length) for length in positions]).to(device)
    hidden = hidden + tower.embed_positions.weight[index]
    attend = attention(positions, device)
    for layer in tower.layers:
        hidden = _encoder_layer(layer, hidden, attend)
    hidden = tower.layer_norm(_pooled(tower, hidden, positions, tokens))
    return tuple(projector(hidden).split(tokens))


def _convolved(tower: Any, features: torch.Tensor, length: int) -> torch.Tensor:
    """One clip's (positions, d_model) convolution output over the frames it reads."""
    # conv2 (stride 2) position p reads conv1 outputs 2p-1..2p+1, i.e. frames up to 2p+2.
    frames = min(2 * length + 1, features.shape[-1])
    x = nn.functional.gelu(tower.conv1(features[None, :, :frames]))
    x = nn.functional.gelu(tower.conv2(x))
    out: torch.Tensor = x[0, :, :length].T
    return out


def _encoder_layer(layer: Any, hidden: torch.Tensor, attend: PackedAttention) -> torch.Tensor:
    """transformers' `Qwen2AudioEncoderLayer.forward` (eval) on packed (tokens, d_model)."""
    attn = layer.self_attn
    shape = (hidden.shape[0], attn.num_heads, attn.head_dim)
    residual = hidden
    hidden = layer.self_attn_layer_norm(hidden)
    q = (attn.q_proj(hidden) * attn.scaling).view(shape)
    k = attn.k_proj(hidden).view(shape)
    v = attn.v_proj(hidden).view(shape)
    hidden = residual + attn.out_proj(attend(q, k, v).reshape(residual.shape))
    residual = hidden
    hidden = layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))
    hidden = residual + hidden
    if hidden.dtype == torch.float16:
        clamp_value = torch.finfo(hidden.dtype).max - 1000
        hidden = torch.clamp(hidden, min=-clamp_value, max=clamp_value)
    return hidden


def _pooled(
    tower: Any, hidden: torch.Tensor, positions: list[int], tokens: list[int]
) -> torch.Tensor:
    """The tower's stride-2 average pooling within each clip, on packed positions."""
    # Pooling pairs positions (0, 1), (2, 3), ... of a clip and drops an odd last one;
    # keeping just the paired rows makes the packing's pairs the clips' pairs.
    paired, start = [], 0
    for length, count in zip(positions, tokens, strict=True):
        paired.append(torch.arange(start, start + 2 * count))
        start += length
    keep = torch.cat(paired)
    if len(keep) != hidden.shape[0]:
        hidden = hidden[keep.to(hidden.device)]
    pooled: torch.Tensor = tower.avg_pooler(hidden.T[None])[0].T
    return pooled
