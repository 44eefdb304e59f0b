"""The benchmark's FLOP count against torch's own FLOP counter on the real model.

Eager attention, because torch's counter does not count the CPU's fused attention kernel.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from audiotext.benchmarks import flops
from audiotext.server import checkpoint


@pytest.fixture(scope="module")
def tiny() -> tuple[Path, flops.Shape]:
    path = checkpoint.ensure_built("tiny")
    return path, flops.Shape.of_checkpoint(path)


def counted(fn: object, *args: object, **kwargs: object) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*args, **kwargs)  # type: ignore[operator]
    return int(counter.get_total_flops())


def test_encoder_flops_match_torch_count_on_a_30_s_clip(tiny: tuple[Path, flops.Shape]) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    path, shape = tiny
    model = Qwen2AudioForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    features = torch.randn(1, shape.mel_bins, 3000)  # the encoder's fixed 30 s input

    def encode() -> None:
        hidden = model.model.audio_tower(features).last_hidden_state
        model.model.multi_modal_projector(hidden)

    assert flops.encoder_flops(shape, 30.0) == pytest.approx(counted(encode), rel=0.01)


def test_language_model_flops_match_torch_count(tiny: tuple[Path, flops.Shape]) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    path, shape = tiny
    model = Qwen2AudioForConditionalGeneration.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens = torch.randint(0, 200, (1, 48))

    # One forward over a 48-token prompt, logits for the last position only: what a prefill
    # producing the first answer token costs. torch counts causal attention in full, so the
    # bound leaves room for the masked half (a few percent here).
    def prefill() -> None:
        hidden = model.model.language_model(input_ids=tokens).last_hidden_state
        model.lm_head(hidden[:, -1:])

    torch_count = counted(prefill)
    ours = flops.language_model_flops(shape, prompt_tokens=48, output_tokens=1)
    assert ours == pytest.approx(torch_count, rel=0.05)
    assert ours <= torch_count


def test_padding_is_not_useful_work(tiny: tuple[Path, flops.Shape]) -> None:
    _, shape = tiny
    assert flops.encoder_flops(shape, 3.0) < flops.encoder_flops(shape, 30.0) / 9


def test_peak_is_a_positive_rate() -> None:
    assert flops.peak_flops("float32", size=256, seconds=0.2) > 1e8
