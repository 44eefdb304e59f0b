"""Built-in checkpoints: deterministic, official key layout, loadable by transformers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors import safe_open

from audiotext.server import checkpoint

OFFICIAL_PREFIXES = (
    "audio_tower.",
    "multi_modal_projector.",
    "language_model.model.",
    "language_model.lm_head.",
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoint.build("tiny", tmp_path_factory.mktemp("a") / "tiny")


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def weight_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return list(f.keys())


def test_same_seed_gives_the_same_files(tiny: Path, tmp_path: Path) -> None:
    again = checkpoint.build("tiny", tmp_path / "again")
    assert files(again) == files(tiny)


def test_other_seed_gives_other_weights(tiny: Path, tmp_path: Path) -> None:
    other = checkpoint.build("tiny", tmp_path / "other", seed=1)
    assert files(other)["model.safetensors"] != files(tiny)["model.safetensors"]
    assert files(other)["tokenizer.json"] == files(tiny)["tokenizer.json"]


def test_weights_use_the_official_key_layout(tiny: Path) -> None:
    keys = weight_keys(tiny)
    assert all(k.startswith(OFFICIAL_PREFIXES) for k in keys)
    assert "language_model.lm_head.weight" in keys
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in keys
    assert "audio_tower.conv1.weight" in keys
    assert "multi_modal_projector.linear.weight" in keys
    assert not any(k.startswith("language_model.model.model.") for k in keys)


def test_config_meets_vllm_cpu_constraints(tiny: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    text = config["text_config"]
    assert text["head_dim"] >= 64
    assert text["hidden_size"] == text["head_dim"] * text["num_attention_heads"]
    assert config["audio_config"]["num_mel_bins"] == 128
    assert config["architectures"] == ["Qwen2AudioForConditionalGeneration"]


def test_tokenizer_has_qwen2_audio_special_tokens_and_template(tiny: Path) -> None:
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny)
    tokenizer = processor.tokenizer
    for token in checkpoint.SPECIAL_TOKENS:
        assert tokenizer.tokenize(f"a {token} b").count(token) == 1
    config = json.loads((tiny / "config.json").read_text())
    assert config["audio_token_index"] == tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    assert processor.feature_extractor.sampling_rate == 16000
    # Both message styles put one audio placeholder in the prompt.
    for part in ({"type": "audio", "audio_url": "x.wav"}, {"type": "audio"}):
        messages = [{"role": "user", "content": [part, {"type": "text", "text": "Hi"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\nHi<|im_end|>" in prompt
        assert prompt.endswith("<|im_start|>assistant\n")


def test_transformers_loads_every_weight(tiny: Path) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    _, info = Qwen2AudioForConditionalGeneration.from_pretrained(tiny, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]


@pytest.mark.parametrize(("size", "low", "high"), [("tiny", 1e6, 10e6), ("bench", 100e6, 250e6)])
def test_sizes_have_the_intended_parameter_counts(size: str, low: float, high: float) -> None:
    shapes = checkpoint.parameter_shapes(size)
    total = sum(math.prod(s) for s in shapes.values())
    assert low <= total <= high
    if size == "bench":
        assert shapes["audio_tower.conv1.weight"][0] == 512  # whisper-base width


def test_unknown_size_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown checkpoint size"):
        checkpoint.build("huge", tmp_path / "x")
