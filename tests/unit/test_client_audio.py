"""Every audio source kind and format reaches the model as the same 16 kHz mono signal.

Checked by round trip: prepare the audio as the client would send it, decode the bytes
that would go on the wire, and compare with the reference signal.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr

from audiotext.client import InvalidAudioError, audio_token_count, load_audio
from audiotext.client.audio import PreparedAudio, prepare_audio
from tests.conftest import (
    SAMPLE_RATE,
    aligned_correlation,
    encode_with_pyav,
    load_clip,
    wav_bytes,
)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_clip("6s")


def sent_signal(prepared: PreparedAudio) -> np.ndarray:
    """Decode what the client would put on the wire."""
    part = prepared.part
    assert part["type"] == "input_audio"
    assert part["input_audio"]["format"] == "wav"
    data = base64.b64decode(part["input_audio"]["data"])
    samples, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    info = soundfile.info(io.BytesIO(data))
    assert (rate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    return samples


def stereo_44k(speech: np.ndarray) -> np.ndarray:
    up = soxr.resample(speech, SAMPLE_RATE, 44100)
    return np.stack([up, up], axis=1)


def assert_same_signal(got: np.ndarray, want: np.ndarray, min_snr_db: float) -> None:
    """Same length (to a sample) and the difference at least `min_snr_db` below the signal."""
    assert abs(len(got) - len(want)) <= 1
    n = min(len(got), len(want))
    noise = np.sqrt(np.mean((got[:n] - want[:n]) ** 2))
    signal = np.sqrt(np.mean(want[:n] ** 2))
    assert 20 * np.log10(signal / max(noise, 1e-12)) > min_snr_db


def test_wav_path_str_path_bytes_and_file_object(speech: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "clip.wav"
    path.write_bytes(wav_bytes(speech))
    for source in (str(path), path, path.read_bytes(), path.open("rb")):
        prepared = prepare_audio(source)
        assert prepared.seconds == pytest.approx(len(speech) / SAMPLE_RATE)
        assert_same_signal(sent_signal(prepared), speech, 70)  # 16-bit quantisation only


def test_data_url(speech: np.ndarray) -> None:
    url = "data:audio/wav;base64," + base64.b64encode(wav_bytes(speech)).decode()
    assert_same_signal(sent_signal(prepare_audio(url)), speech, 70)


def test_numpy_sources(speech: np.ndarray) -> None:
    stereo = stereo_44k(speech)
    for source in (
        speech,
        (stereo, 44100),
        (stereo.T, 44100),
        {"array": stereo, "sampling_rate": 44100},
    ):
        assert_same_signal(sent_signal(prepare_audio(source)), speech, 40)  # resampled up and down


def test_int16_array_is_scaled(speech: np.ndarray) -> None:
    pcm = (speech * 32767).astype(np.int16)
    assert_same_signal(sent_signal(prepare_audio((pcm, SAMPLE_RATE))), speech, 70)


def test_44k_stereo_wav_and_flac_are_downmixed_and_resampled(speech: np.ndarray) -> None:
    stereo = stereo_44k(speech)
    for fmt, subtype in (("WAV", "PCM_16"), ("FLAC", "PCM_16"), ("WAV", "FLOAT")):
        buf = io.BytesIO()
        soundfile.write(buf, stereo, 44100, format=fmt, subtype=subtype)
        assert_same_signal(sent_signal(prepare_audio(buf.getvalue())), speech, 40)


@pytest.mark.parametrize(
    ("container", "codec", "rate"),
    [("mp3", "libmp3lame", 44100), ("ogg", "libopus", 48000), ("mp4", "aac", 44100),
     ("webm", "libopus", 48000), ("ipod", "aac", 22050)],
)  # fmt: skip
def test_lossy_formats_decode_to_the_same_speech(
    speech: np.ndarray, container: str, codec: str, rate: int
) -> None:
    encoded = encode_with_pyav(soxr.resample(speech, SAMPLE_RATE, rate), rate, container, codec)
    got = sent_signal(prepare_audio(encoded))
    assert abs(len(got) - len(speech)) < 0.1 * SAMPLE_RATE  # codec padding only
    assert aligned_correlation(got, speech) > 0.95  # unrelated speech scores ~0.05


def test_remote_url_passes_through_unseen() -> None:
    prepared = prepare_audio("https://example.org/a.mp3")
    assert prepared.part == {"type": "audio_url", "audio_url": {"url": "https://example.org/a.mp3"}}
    assert prepared.seconds is None


def test_without_normalisation_the_original_bytes_go_as_a_data_url(tmp_path: Path) -> None:
    flac = (Path(__file__).parents[1] / "data" / "speech_short.flac").read_bytes()
    prepared = prepare_audio(flac, normalize=False)
    url = prepared.part["audio_url"]["url"]
    assert url.startswith("data:audio/flac;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == flac


def test_load_audio_matches_prepared_signal(speech: np.ndarray) -> None:
    assert_same_signal(load_audio(wav_bytes(speech)), speech, 120)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no/such/file.wav", "not found"),
        (b"", "empty"),
        (b"definitely not audio, just some bytes" * 10, "could not decode"),
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.zeros(160, dtype=np.float32), "too short"),  # 10 ms
        (np.array([0.0, np.nan] * 4000, dtype=np.float32), "NaN"),
        ((np.zeros(16000), -1), "sampling rate"),
        ({"array": np.zeros(16000)}, "sampling_rate"),
        ("data:audio/wav;base64,@@@", "base64"),
        (12345, "unsupported audio source"),
    ],
)
def test_bad_audio_raises_invalid_audio_error(source: object, message: str) -> None:
    with pytest.raises(InvalidAudioError, match=message):
        prepare_audio(source)  # type: ignore[arg-type]


def test_truncated_file_is_rejected(speech: np.ndarray) -> None:
    flac = io.BytesIO()
    soundfile.write(flac, speech, SAMPLE_RATE, format="FLAC")
    with pytest.raises(InvalidAudioError):
        prepare_audio(flac.getvalue()[:40])


def test_audio_token_count_matches_the_hf_processor() -> None:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=128)
    for n in (400, 480, 481, 1000, 16000, 16123, 160000, 480000):
        mask = extractor(
            np.zeros(n, dtype=np.float32), sampling_rate=SAMPLE_RATE, return_attention_mask=True,
            padding="max_length", return_tensors="np",
        )["attention_mask"]  # fmt: skip
        frames = int(mask.sum())
        expected = (((frames - 1) // 2 + 1) - 2) // 2 + 1  # Qwen2AudioProcessor's formula
        assert audio_token_count(n) == max(0, expected), n
