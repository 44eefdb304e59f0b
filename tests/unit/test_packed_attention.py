"""Block-diagonal attention over packed clips equals attention with a dense block mask."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional

from audiotext.server.packed_attention import (
    PADDING_WASTE,
    BucketedSDPA,
    VarlenFlashAttention,
    VllmEncoderAttention,
    length_buckets,
)

HEADS, HEAD_DIM = 4, 16
TOKEN_COST = 2 * 64 + 256  # the tiny checkpoint's encoder layer (d_model 64, ffn 256)


def packed_qkv(lengths: list[int]) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(sum(lengths))
    shape = (sum(lengths), HEADS, HEAD_DIM)
    return tuple(torch.randn(shape, generator=generator) for _ in range(3))


def dense_block_diagonal(lengths: list[int], *qkv: torch.Tensor) -> torch.Tensor:
    """The definition: one attention over the packing, keys masked to the query's clip."""
    clip = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    mask = clip[:, None] == clip[None, :]
    q, k, v = (x.transpose(0, 1)[None] for x in qkv)
    out = functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return out[0].transpose(0, 1)


LENGTH_SETS = [
    [7],
    [50, 50, 50, 50],
    [1, 300, 17, 300, 64, 2],
    [1500, 25, 1499, 750, 12, 1500, 333],
]


@pytest.mark.parametrize("lengths", LENGTH_SETS)
def test_bucketed_sdpa_equals_dense_block_diagonal_attention(lengths: list[int]) -> None:
    qkv = packed_qkv(lengths)
    ours = BucketedSDPA(lengths, torch.device("cpu"), TOKEN_COST)(*qkv)
    assert ours.shape == qkv[0].shape
    assert (ours - dense_block_diagonal(lengths, *qkv)).abs().max().item() < 1e-5


@pytest.mark.parametrize("lengths", LENGTH_SETS)
def test_vllm_encoder_attention_over_the_packing_equals_dense_block_diagonal(
    lengths: list[int],
) -> None:
    """The adapter the model plugin uses on GPUs, run through vLLM's own CPU kernel here."""
    from vllm.config import VllmConfig, set_current_vllm_config

    with set_current_vllm_config(VllmConfig()):  # vLLM builds it in model init, as here
        module = VllmEncoderAttention.build(HEADS, HEAD_DIM)
    qkv = packed_qkv(lengths)
    ours = VllmEncoderAttention(module, lengths, torch.device("cpu"))(*qkv)
    assert (ours - dense_block_diagonal(lengths, *qkv)).abs().max().item() < 1e-5
    # On CPU vLLM loops over clips in SDPA; the plugin keeps its own bucketed SDPA there.
    assert not VllmEncoderAttention.has_varlen_kernel(module)


def test_length_buckets_hold_every_clip_once_and_bound_the_padding() -> None:
    generator = torch.Generator().manual_seed(0)
    lengths = [*torch.randint(0, 1501, (64,), generator=generator).tolist(), 0, 1500, 1]
    buckets = length_buckets(lengths, TOKEN_COST)
    assert sorted(i for bucket in buckets for i in bucket) == [
        i for i, n in enumerate(lengths) if n
    ]
    for bucket in buckets:
        sizes = [lengths[i] for i in bucket]
        pairs = sum(n * n for n in sizes)
        padded = len(sizes) * max(sizes) ** 2
        assert padded - pairs <= PADDING_WASTE * (pairs + TOKEN_COST * sum(sizes))


def test_short_clips_share_one_call_and_long_ones_do_not_pad_to_each_other() -> None:
    assert len(length_buckets([25] * 40 + [50] * 24, TOKEN_COST)) == 1
    assert length_buckets([1500, 25], TOKEN_COST) == [[0], [1]]
    assert length_buckets([750, 1500, 1500], TOKEN_COST) == [[1, 2], [0]]


def test_varlen_flash_attention_runs_only_on_cuda_in_16_bit() -> None:
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert not VarlenFlashAttention.supports(cpu, torch.bfloat16, 64)
    assert not VarlenFlashAttention.supports(cuda, torch.float32, 64)
    assert not VarlenFlashAttention.supports(cuda, torch.bfloat16, 320)
    assert VarlenFlashAttention.supports(cuda, torch.bfloat16, 64)  # torch >= 2.9 has it
