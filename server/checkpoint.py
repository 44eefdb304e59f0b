"""Built-in Qwen2-Audio checkpoints: the real architecture, scaled down.

`tiny` and `bench` have random weights: they let the whole serving path (audio decoding,
features, encoder, batching, API) run on a machine that cannot download the real model.
Their words are meaningless. The same size and seed always give the same files, laid out
as the official checkpoint (`audio_tower.*`, `multi_modal_projector.*`,
`language_model.model.*`, `language_model.lm_head.*`), so vLLM and transformers both load
them. `listening` was trained here on synthetic speech (`audiotext.server.listening`) and
is committed whole; building it copies it to the cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bump when the recipe changes, so cached builds are not reused.
RECIPE_VERSION = 1
DEFAULT_SEED = 0
VOCAB_SIZE = 4096
CACHE_ENV = "AUDIOTEXT_CACHE_DIR"
CORPUS = Path(__file__).with_name("tokenizer_corpus.txt")

# Qwen2-Audio's special tokens, in the official order (ids follow the learned vocabulary).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
)

# Qwen2-Audio-7B-Instruct's chat template, plus one condition (`content['type'] == 'audio'`)
# so that vLLM's typed content parts render too; the launcher passes it to vLLM as well.
CHAT_TEMPLATE = Path(__file__).with_name("qwen2_audio_chat_template.jinja")

# Qwen2's pre-tokenizer split pattern.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class Size:
    """Dimensions of one built-in checkpoint."""

    audio_d_model: int
    audio_layers: int
    audio_heads: int
    audio_ffn: int
    hidden: int
    layers: int
    heads: int
    intermediate: int


SIZES: dict[str, Size] = {
    # Tests and the demo: a few million parameters.
    "tiny": Size(64, 2, 4, 256, hidden=256, layers=2, heads=4, intermediate=512),
    # Benchmarks: whisper-base-wide encoder, ~150 M-parameter language model.
    "bench": Size(512, 6, 8, 2048, hidden=1024, layers=12, heads=16, intermediate=2816),
}


# Trained built-in checkpoints, committed whole (weights, tokenizer, configs).
TRAINED: dict[str, Path] = {"listening": Path(__file__).parent / "listening" / "checkpoint"}
# Every name `--model` accepts as a built-in checkpoint.
BUILTIN = (*SIZES, *TRAINED)


def cache_dir() -> Path:
    """Where built checkpoints live: `$AUDIOTEXT_CACHE_DIR` or `~/.cache/audiotext`."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "audiotext"
    return Path(os.environ.get(CACHE_ENV, default))


def builtin_path(size: str, seed: int = DEFAULT_SEED) -> Path:
    """The folder a built-in checkpoint is (or will be) built into."""
    if size in TRAINED:
        # Named after the committed weights, so a retrained checkpoint is copied anew.
        digest = hashlib.sha256((TRAINED[size] / "model.safetensors").read_bytes()).hexdigest()
        return cache_dir() / "checkpoints" / f"{size}-{digest[:12]}"
    return cache_dir() / "checkpoints" / f"{size}-seed{seed}-v{RECIPE_VERSION}"


def is_built(size: str, seed: int = DEFAULT_SEED) -> bool:
    """Whether the built-in checkpoint is in the cache (a build appears whole or not)."""
    return (builtin_path(size, seed) / "config.json").exists()


def ensure_built(size: str, seed: int = DEFAULT_SEED) -> Path:
    """Build the checkpoint into the cache unless it is already there."""
    out = builtin_path(size, seed)
    if not is_built(size, seed):
        logger.info("Building the %s checkpoint into %s", size, out)
        build(size, out, seed=seed)
    return out


def build(size: str, out: Path, seed: int = DEFAULT_SEED) -> Path:
    """Write a complete checkpoint folder (config, weights, tokenizer, processor) to `out`.

    The folder appears whole or not at all: it is built beside `out` and renamed.
    """
    if size not in BUILTIN:
        raise ValueError(f"unknown checkpoint size {size!r}; choose one of {', '.join(BUILTIN)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if size in TRAINED:
            shutil.copytree(TRAINED[size], staging, dirs_exist_ok=True)
        else:
            _build_random(size, staging, seed)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _build_random(size: str, staging: Path, seed: int) -> None:
    tokenizer = train_tokenizer()
    save_processor(tokenizer, staging)
    config = model_config(SIZES[size], tokenizer)
    save_configs(config, staging)
    _save_weights(config, seed, staging)


def train_tokenizer(lines: list[str] | None = None, vocab_size: int = VOCAB_SIZE) -> Any:
    """Qwen2-style byte-level BPE with Qwen2-Audio's special tokens, trained on `lines`."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_QWEN2_SPLIT), behavior="isolated"), byte_level]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if lines is None:
        lines = CORPUS.read_text(encoding="utf-8").splitlines()
    tok.train_from_iterator(lines, trainer)
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )


def save_processor(tokenizer: Any, out: Path) -> None:
    """Write the tokenizer, the Whisper feature extractor and the chat template."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    features = WhisperFeatureExtractor(
        feature_size=128, sampling_rate=16000, hop_length=160, chunk_length=30, n_fft=400
    )
    processor = Qwen2AudioProcessor(
        feature_extractor=features,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE.read_text(encoding="utf-8"),
    )
    processor.save_pretrained(out)


def model_config(size: Size, tokenizer: Any, vocab_size: int = VOCAB_SIZE) -> Any:
    """The Qwen2-Audio configuration of a size, with the tokenizer's special-token ids."""
    from transformers import Qwen2AudioConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    config = Qwen2AudioConfig(
        audio_config={
            "d_model": size.audio_d_model,
            "encoder_layers": size.audio_layers,
            "encoder_attention_heads": size.audio_heads,
            "encoder_ffn_dim": size.audio_ffn,
            "num_mel_bins": 128,
            "max_source_positions": 1500,
        },
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": size.hidden,
            "num_hidden_layers": size.layers,
            "num_attention_heads": size.heads,
            "num_key_value_heads": size.heads,
            "head_dim": size.hidden // size.heads,
            "intermediate_size": size.intermediate,
            "max_position_embeddings": 8192,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        audio_token_index=ids["<|AUDIO|>"],
    )
    config.architectures = ["Qwen2AudioForConditionalGeneration"]
    config.dtype = "float32"
    return config


def save_configs(config: Any, out: Path, dtype: str = "float32") -> None:
    """Write config.json (weights stored as `dtype`) and generation_config.json."""
    config.dtype = dtype
    config.save_pretrained(out)
    eos = [config.text_config.eos_token_id, config.text_config.bos_token_id]
    generation = {
        "bos_token_id": config.text_config.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": config.text_config.bos_token_id,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def parameter_shapes(size: str) -> dict[str, tuple[int, ...]]:
    """Parameter names (official layout) and shapes of a built-in size, without building it."""
    return _official_shapes(model_config(SIZES[size], train_tokenizer()))


def _save_weights(config: Any, seed: int, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    shapes = _official_shapes(config)
    generator = torch.Generator().manual_seed(seed)
    std = 0.02
    tensors: dict[str, torch.Tensor] = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("embed_positions.weight"):
            tensors[name] = sinusoids(*shape)
        elif "norm" in name:
            tensors[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        else:
            tensors[name] = torch.randn(shape, generator=generator) * std
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def save_trained_weights(model: Any, out: Path, dtype: Any) -> None:
    """Write a transformers Qwen2-Audio model's weights in the official layout as `dtype`."""
    from safetensors.torch import save_file

    tensors = {
        official_key(k): v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()
    }
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def _official_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Parameter shapes under the official checkpoint's key names."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration

    with torch.device("meta"):
        model = Qwen2AudioForConditionalGeneration(config)
    return {official_key(k): tuple(v.shape) for k, v in model.state_dict().items()}


def official_key(key: str) -> str:
    """The official checkpoint's name for a transformers 5 parameter name."""
    # transformers 5 nests the language model as `model.language_model.*`.
    for prefix, official in (
        ("model.audio_tower.", "audio_tower."),
        ("model.multi_modal_projector.", "multi_modal_projector."),
        ("model.language_model.", "language_model.model."),
        ("lm_head.", "language_model.lm_head."),
    ):
        if key.startswith(prefix):
            return official + key[len(prefix) :]
    raise ValueError(f"unexpected parameter {key}")


def sinusoids(length: int, channels: int) -> Any:
    """Whisper's fixed sinusoidal position embeddings."""
    import torch

    increment = math.log(10000) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)
