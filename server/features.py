"""Log-mel features over the real samples only, equal to the padded computation.

Stock vLLM asks the Whisper feature extractor for 30 s of features per clip (3000
frames), computing the spectrogram over the zero padding too. Every frame whose window
lies in the clip or in zeros after it is the same whether the zeros run to 30 s or
stop a few frames past the clip, and the padding frames sit at the log floor, so they
never set the normalisation maximum. Computing over the clip plus a short zero tail
therefore gives stock's frames exactly, as far as the encoder reads them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# Frames kept past the last valid one: the encoder's two convolutions read up to two
# frames past it (`encoder.encode_valid_frames`); one more keeps the STFT's reflected
# edge in zeros.
TAIL_FRAMES = 3


def valid_frames(num_samples: int, hop_length: int, max_samples: int) -> int:
    """Mel frames stock marks valid for a clip of `num_samples` (cut at `max_samples`)."""
    return -(-min(num_samples, max_samples) // hop_length)


def trimmed_features(extractor: Any, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """One clip's (mel bins, frames) features and (frames,) mask, without the 30 s padding.

    Args:
        extractor: transformers' `WhisperFeatureExtractor` of the checkpoint.
        audio: mono samples at the extractor's sampling rate.
    """
    hop, max_samples = extractor.hop_length, extractor.n_samples
    valid = valid_frames(len(audio), hop, max_samples)
    padded = np.zeros(min(max_samples, (valid + TAIL_FRAMES) * hop), dtype=np.float32)
    clip = audio[: len(padded)]
    padded[: len(clip)] = clip
    out = extractor(
        padded,
        sampling_rate=extractor.sampling_rate,
        padding="do_not_pad",
        truncation=False,
        return_attention_mask=False,
        return_tensors="pt",
    )
    features: torch.Tensor = out["input_features"][0]
    mask = torch.zeros(features.shape[-1], dtype=torch.int32)
    mask[:valid] = 1
    return features, mask
