"""Block-diagonal attention over packed clips: each clip's positions attend only to its own.

The encoder packs every clip's positions into one (tokens, heads, head_dim) sequence. Three
implementations compute attention within each clip of that sequence, behind one signature
(`PackedAttention`, built per batch from the clips' lengths by an `AttentionFactory`):

- `BucketedSDPA` (any device and dtype, the CPU path): clips sorted by length into a few
  buckets, each bucket one batched `scaled_dot_product_attention` call with a key mask
  for the clips shorter than its longest. A dense (tokens x tokens) block-diagonal mask
  would cost the square of the whole batch's length (and its memory: 9 GB for 64 clips of
  30 s); a loop over clips costs one call per clip and layer.
- `VarlenFlashAttention` (CUDA, float16/bfloat16): torch's variable-length flash
  attention, one call over `cu_seqlens`.
- `VllmEncoderAttention`: vLLM's multimodal-encoder attention, which picks the platform's
  variable-length kernel (FlashAttention, AITER, Triton) and honours
  `--mm-encoder-attn-backend`; the model plugin uses it where vLLM has such a kernel.

Queries arrive already scaled (transformers' order for Qwen2-Audio), so every
implementation runs with scale 1.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

PackedAttention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(q, k, v), each (tokens, heads, head_dim) -> (tokens, heads, head_dim)."""

AttentionFactory = Callable[[Sequence[int], torch.device], PackedAttention]
"""Clip lengths (positions, in packing order) and device -> attention for that packing."""

# Padding a bucket to its longest clip may add at most this share of the bucket's work.
PADDING_WASTE = 0.1


@dataclass(frozen=True)
class _Bucket:
    """Clips attended in one batched call, each padded to the bucket's longest clip."""

    gather: torch.Tensor  # (clips, longest): packed token per slot (padding slots: token 0)
    key_mask: torch.Tensor | None  # (clips, 1, 1, longest): real keys; None if none padded
    slots: torch.Tensor | None  # flat indices of the real slots; None if none padded
    tokens: torch.Tensor  # packed token of each real slot, in slot order


def length_buckets(lengths: Sequence[int], token_cost: float) -> list[list[int]]:
    """Clip indices grouped so that padding each group to its longest clip wastes little.

    Args:
        lengths: positions per clip.
        token_cost: the layer's work per position outside attention, in units of one
            query-key pair of attention (`2 * d_model + ffn_dim` for a Whisper layer).
    """
    buckets: list[list[int]] = []
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    pairs = tokens = 0
    for i in order:
        length = lengths[i]
        if not length:  # no positions, nothing to attend
            continue
        if buckets:
            longest = lengths[buckets[-1][0]]
            count = len(buckets[-1]) + 1
            work = (pairs + length**2) + token_cost * (tokens + length)
            if count * longest**2 - (pairs + length**2) <= PADDING_WASTE * work:
                buckets[-1].append(i)
                pairs, tokens = pairs + length**2, tokens + length
                continue
        buckets.append([i])
        pairs, tokens = length**2, length
    return buckets


class BucketedSDPA:
    """Block-diagonal attention as batched SDPA over length buckets (any device)."""

    def __init__(self, lengths: Sequence[int], device: torch.device, token_cost: float) -> None:
        starts = [0]
        for length in lengths:
            starts.append(starts[-1] + length)
        self._total = starts[-1]
        self._buckets = [
            self._bucket([lengths[i] for i in clips], [starts[i] for i in clips], device)
            for clips in length_buckets(lengths, token_cost)
        ]

    @staticmethod
    def _bucket(lengths: list[int], starts: list[int], device: torch.device) -> _Bucket:
        longest = max(lengths)
        slot = torch.arange(longest)
        real = slot[None, :] < torch.tensor(lengths)[:, None]
        gather = torch.where(real, torch.tensor(starts)[:, None] + slot[None, :], 0)
        padded = not bool(real.all())
        return _Bucket(
            gather=gather.to(device),
            key_mask=real[:, None, None, :].to(device) if padded else None,
            slots=real.flatten().nonzero().squeeze(1).to(device) if padded else None,
            tokens=gather[real].to(device),
        )

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        heads, head_dim = q.shape[1:]
        if len(self._buckets) == 1 and self._buckets[0].slots is None:
            # One bucket of equal lengths: the packing itself is the batch, no copy.
            clips = self._buckets[0].gather.shape[0]
            q, k, v = (x.view(clips, -1, heads, head_dim).transpose(1, 2) for x in (q, k, v))
            out = functional.scaled_dot_product_attention(q, k, v, scale=1.0)
            return out.transpose(1, 2).reshape(self._total, heads, head_dim)
        out = q.new_empty(q.shape)
        for bucket in self._buckets:
            qb, kb, vb = (x[bucket.gather].transpose(1, 2) for x in (q, k, v))
            ob = functional.scaled_dot_product_attention(
                qb, kb, vb, attn_mask=bucket.key_mask, scale=1.0
            )
            ob = ob.transpose(1, 2).reshape(-1, heads, head_dim)
            out[bucket.tokens] = ob if bucket.slots is None else ob[bucket.slots]
        return out


def cu_seqlens(lengths: Sequence[int], device: torch.device) -> torch.Tensor:
    """(clips + 1,) int32 offsets of each clip in the packing, as varlen kernels take them."""
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    offsets[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    return offsets.to(device, non_blocking=True)


class VarlenFlashAttention:
    """torch's variable-length flash attention over the whole packing (CUDA, 16-bit)."""

    def __init__(self, lengths: Sequence[int], device: torch.device) -> None:
        self._offsets = cu_seqlens(lengths, device)
        self._longest = max(lengths)

    @staticmethod
    def supports(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
        """Whether the kernel runs here: CUDA, float16/bfloat16, head_dim <= 256."""
        if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
            return False
        if head_dim > 256 or head_dim % 8:
            return False
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:  # torch older than 2.9
            return False
        # Queries arrive scaled; a kernel without a `scale` argument would scale again.
        return "scale" in inspect.signature(varlen_attn).parameters

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention.varlen import varlen_attn

        offsets, longest = self._offsets, self._longest
        out = varlen_attn(q, k, v, offsets, offsets, longest, longest, scale=1.0)
        assert isinstance(out, torch.Tensor)  # a (out, lse) pair only when asked for it
        return out


class VllmEncoderAttention:
    """vLLM's `MMEncoderAttention` over the whole packing, one call per layer."""

    # Backends that take plain (cu_seqlens, max_seqlen); FlashInfer's cuDNN path wants
    # offsets rewritten for a fused QKV layout, which the separate projections here lack.
    VARLEN_BACKENDS = ("FLASH_ATTN", "ROCM_AITER_FA", "TRITON_ATTN", "TORCH_SDPA")

    def __init__(self, attention: Any, lengths: Sequence[int], device: torch.device) -> None:
        self._attention = attention
        self._offsets = cu_seqlens(lengths, device)
        # On the offsets' device, as vLLM's own encoders pass it.
        self._longest = torch.tensor(max(lengths), dtype=torch.int32).to(device)

    @classmethod
    def build(cls, num_heads: int, head_dim: int) -> Any:
        """vLLM's encoder attention for this shape (call inside vLLM's model init)."""
        from vllm.model_executor.layers.attention.mm_encoder_attention import (
            MMEncoderAttention,
        )

        return MMEncoderAttention(num_heads=num_heads, head_size=head_dim, scale=1.0)

    @classmethod
    def has_varlen_kernel(cls, attention: Any) -> bool:
        """Whether vLLM picked a kernel that runs the packing in one call (not SDPA).

        FP8 encoder attention is left out: its scales are loaded for modules in vLLM's
        model tree, and this one is not part of the checkpoint's.
        """
        name = str(getattr(attention.attn_backend, "name", ""))
        fp8 = bool(getattr(attention, "fp8_enabled", False))
        return name in cls.VARLEN_BACKENDS and name != "TORCH_SDPA" and not fp8

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._attention(
            q[None], k[None], v[None], cu_seqlens=self._offsets, max_seqlen=self._longest
        )
        return out.reshape(q.shape)


def default_attention(
    dtype: torch.dtype, device: torch.device, head_dim: int, token_cost: float
) -> AttentionFactory:
    """Varlen flash attention where it runs, length-bucketed SDPA everywhere else."""
    if VarlenFlashAttention.supports(device, dtype, head_dim):
        return VarlenFlashAttention
    return lambda lengths, device: BucketedSDPA(lengths, device, token_cost)


def vllm_attention(attention: Any) -> AttentionFactory:
    """Factory over one `MMEncoderAttention` module (see `VllmEncoderAttention.build`)."""
    return lambda lengths, device: VllmEncoderAttention(attention, lengths, device)
