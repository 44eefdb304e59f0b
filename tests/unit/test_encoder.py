"""The padding-free packed encoder gives stock vLLM's audio embeddings (float32, within 1e-4)."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from audiotext.server import checkpoint
from audiotext.server.encoder import encode_valid_frames
from audiotext.server.features import TAIL_FRAMES, trimmed_features
from audiotext.server.packed_attention import VllmEncoderAttention, vllm_attention
from tests.conftest import SAMPLE_RATE, speech_of


@pytest.fixture(scope="module")
def tiny() -> Any:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    path = checkpoint.ensure_built("tiny")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    return (
        AutoProcessor.from_pretrained(path),
        model.model.audio_tower,
        model.model.multi_modal_projector,
    )


def features(processor: Any, clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    out = processor.feature_extractor(
        clips, sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding="max_length",
        return_tensors="pt",
    )  # fmt: skip
    return out["input_features"], out["attention_mask"]


def stock_embeddings(tower: Any, projector: Any, feats: torch.Tensor, mask: torch.Tensor) -> Any:
    """vLLM 0.32's own Qwen2-Audio encoding path, run on the same modules."""
    from vllm.model_executor.models.qwen2_audio import Qwen2AudioForConditionalGeneration

    model = SimpleNamespace(audio_tower=tower, multi_modal_projector=projector)
    audio_input = {
        "type": "audio_features",
        "input_features": feats,
        "feature_attention_mask": mask,
    }
    return Qwen2AudioForConditionalGeneration._process_audio_input(model, audio_input)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.37, 5.0, 10.0, 17.3, 29.99, 30.0])
def test_single_clips_match_stock(tiny: Any, seconds: float) -> None:
    processor, tower, projector = tiny
    feats, mask = features(processor, [speech_of(seconds)])
    with torch.no_grad():
        [ours] = encode_valid_frames(tower, projector, feats, mask)
        [stock] = stock_embeddings(tower, projector, feats, mask)
    assert ours.shape == stock.shape
    assert (ours - stock).abs().max().item() < 1e-4


def test_a_mixed_batch_matches_stock(tiny: Any) -> None:
    processor, tower, projector = tiny
    clips = [speech_of(s) for s in (0.5, 30.0, 3.1, 12.0, 7.77)]
    feats, mask = features(processor, clips)
    with torch.no_grad():
        ours = encode_valid_frames(tower, projector, feats, mask)
        stock = stock_embeddings(tower, projector, feats, mask)
    assert [o.shape for o in ours] == [s.shape for s in stock]
    assert max((o - s).abs().max().item() for o, s in zip(ours, stock, strict=True)) < 1e-4


@pytest.mark.parametrize("seconds", [0.5, 1.0, 2.37, 5.0, 17.3, 29.99, 30.0, 31.0])
def test_trimmed_features_are_stocks_frames(tiny: Any, seconds: float) -> None:
    processor, _, _ = tiny
    clip = speech_of(seconds)
    padded, stock_mask = features(processor, [clip])
    trimmed, mask = trimmed_features(processor.feature_extractor, clip)
    assert int(mask.sum()) == int(stock_mask.sum())
    assert trimmed.shape[-1] == min(3000, int(mask.sum()) + TAIL_FRAMES)
    assert torch.equal(trimmed, padded[0, :, : trimmed.shape[-1]])
    assert torch.equal(mask, stock_mask[0, : trimmed.shape[-1]])


def test_trimmed_features_of_a_mixed_list_give_stocks_embeddings(tiny: Any) -> None:
    processor, tower, projector = tiny
    clips = [speech_of(s) for s in (0.5, 30.0, 3.1, 12.0, 7.77)]
    trimmed = [trimmed_features(processor.feature_extractor, clip) for clip in clips]
    with torch.no_grad():
        ours = encode_valid_frames(tower, projector, *map(list, zip(*trimmed, strict=True)))
        stock = stock_embeddings(tower, projector, *features(processor, clips))
    assert [o.shape for o in ours] == [s.shape for s in stock]
    assert max((o - s).abs().max().item() for o, s in zip(ours, stock, strict=True)) < 1e-4


# 0.5-30 s, repeats included: buckets of equal lengths, padded buckets and lone long clips.
MIXED_SECONDS = (0.5, 30.0, 3.1, 12.0, 7.77, 0.5, 29.99, 1.0, 1.0, 1.0, 17.3, 2.37, 30.0, 5.0)


@pytest.mark.parametrize("pack_positions", [None, 1, 600, sys.maxsize])
def test_a_large_mixed_batch_of_trimmed_clips_matches_stock(
    tiny: Any, pack_positions: int | None
) -> None:
    """Packed by the CPU default, per clip, a few clips a pack, all in one forward."""
    processor, tower, projector = tiny
    clips = [speech_of(s) for s in MIXED_SECONDS]
    trimmed = [trimmed_features(processor.feature_extractor, clip) for clip in clips]
    feats, masks = map(list, zip(*trimmed, strict=True))
    with torch.no_grad():
        ours = encode_valid_frames(tower, projector, feats, masks, pack_positions=pack_positions)
        stock = stock_embeddings(tower, projector, *features(processor, clips))
    assert [o.shape for o in ours] == [s.shape for s in stock]
    assert max((o - s).abs().max().item() for o, s in zip(ours, stock, strict=True)) < 1e-4


def test_one_packed_forward_equals_each_clip_encoded_alone(tiny: Any) -> None:
    processor, tower, projector = tiny
    trimmed = [trimmed_features(processor.feature_extractor, speech_of(s)) for s in MIXED_SECONDS]
    feats, masks = map(list, zip(*trimmed, strict=True))
    with torch.no_grad():
        packed = encode_valid_frames(tower, projector, feats, masks, pack_positions=sys.maxsize)
        alone = [encode_valid_frames(tower, projector, [f], [m])[0] for f, m in trimmed]
    assert max((p - a).abs().max().item() for p, a in zip(packed, alone, strict=True)) < 1e-4


def test_vllms_encoder_attention_in_the_packed_forward_matches_stock(tiny: Any) -> None:
    """The attention the model plugin takes from vLLM where it has a varlen kernel (GPUs)."""
    from vllm.config import VllmConfig, set_current_vllm_config

    processor, tower, projector = tiny
    attn = tower.layers[0].self_attn
    with set_current_vllm_config(VllmConfig()):  # vLLM builds it in model init, as here
        attention = vllm_attention(VllmEncoderAttention.build(attn.num_heads, attn.head_dim))
    clips = [speech_of(s) for s in (0.5, 30.0, 3.1, 12.0, 3.1)]
    feats, mask = features(processor, clips)
    with torch.no_grad():
        ours = encode_valid_frames(
            tower, projector, feats, mask, attention=attention, pack_positions=sys.maxsize
        )
        stock = stock_embeddings(tower, projector, feats, mask)
    assert max((o - s).abs().max().item() for o, s in zip(ours, stock, strict=True)) < 1e-4


def test_in_bfloat16_the_packed_forward_is_as_close_to_float32_as_stock_is(tiny: Any) -> None:
    """bfloat16 (vLLM's default dtype on CPU) rounds differently on any path; ours must not
    stray further from the float32 embeddings than stock's own bfloat16 path does."""
    from transformers import Qwen2AudioForConditionalGeneration

    processor, tower, projector = tiny
    path = checkpoint.ensure_built("tiny")
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.bfloat16).eval()
    tower16, projector16 = model.model.audio_tower, model.model.multi_modal_projector
    clips = [speech_of(s) for s in (0.5, 30.0, 3.1, 12.0, 7.77)]
    feats, mask = features(processor, clips)
    with torch.no_grad():
        exact = stock_embeddings(tower, projector, feats, mask)
        ours = encode_valid_frames(tower16, projector16, feats, mask)
        stock = stock_embeddings(tower16, projector16, feats, mask)

    def error(embeddings: Any) -> float:
        pairs = zip(embeddings, exact, strict=True)
        return max((e.float() - x).abs().max().item() for e, x in pairs)

    assert all(o.dtype == torch.bfloat16 for o in ours)
    assert error(ours) <= 1.5 * error(stock)


def test_the_encoder_benchmarks_stock_path_is_vllms_without_vllm(tiny: Any) -> None:
    """`benchmarks/encoder.py` restates stock's path with torch alone, for GPU machines."""
    from audiotext.benchmarks.encoder import stock_padded

    processor, tower, projector = tiny
    feats, mask = features(processor, [speech_of(s) for s in (0.7, 4.2, 30.0, 12.5)])
    with torch.no_grad():
        restated = stock_padded(tower, projector, feats, mask)
        stock = stock_embeddings(tower, projector, feats, mask)
    assert len(restated) == len(stock) == 4
    assert all(torch.equal(a, b) for a, b in zip(restated, stock, strict=True))
