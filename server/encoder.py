"""Padding-free Qwen2-Audio encoding: run the audio encoder only over what was heard.

Stock vLLM runs the Whisper-style encoder over 30 s of padded mel frames (1500
positions) for every clip and masks the padding in attention. Keys past a clip's length
are masked, so its valid positions never see the padding: running the encoder on the
valid frames alone (plus the frames its two convolutions read at the edge) gives the
same embeddings, with a fraction of the work for short clips and quadratically less
attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def encode_valid_frames(
    tower: Any,
    projector: nn.Module,
    input_features: torch.Tensor | Sequence[torch.Tensor],
    feature_attention_mask: torch.Tensor | Sequence[torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """Audio embeddings, one (tokens, hidden) tensor per clip, as stock but without padding.

    Args:
        tower: the Qwen2-Audio encoder (transformers' `Qwen2AudioEncoder`).
        projector: the multimodal projector.
        input_features: per clip, (mel bins, frames) log-mel features: padded to 30 s
            (stock) or trimmed (`features.trimmed_features`), stacked or as a list.
        feature_attention_mask: per clip, (frames,) with 1 on valid frames.
    """
    dtype, device = tower.conv1.weight.dtype, tower.conv1.weight.device
    embeddings = []
    for clip_features, mask in zip(input_features, feature_attention_mask, strict=True):
        length, count = (int(n) for n in tower._get_feat_extract_output_lengths(mask.sum()))
        # conv2 (stride 2) position p reads conv1 outputs 2p-1..2p+1, i.e. frames up to 2p+2.
        frames = min(2 * length + 1, clip_features.shape[-1])
        x = clip_features[None, :, :frames].to(dtype=dtype, device=device)
        x = nn.functional.gelu(tower.conv1(x))
        x = nn.functional.gelu(tower.conv2(x))
        x = x.permute(0, 2, 1)[:, :length] + tower.embed_positions.weight[:length]
        for layer in tower.layers:
            x = layer(x, None)
        x = tower.avg_pooler(x.permute(0, 2, 1)).permute(0, 2, 1)
        x = tower.layer_norm(x)
        embeddings.append(projector(x)[0, :count])
    return tuple(embeddings)
