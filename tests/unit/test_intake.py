"""The audio door: windows, one decode per clip, admission before decoding, clear refusals."""

from __future__ import annotations

import contextvars
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr

from audiotext.client import audio_token_count
from audiotext.server import intake
from audiotext.server.connector import AudioTextMediaConnector, data_url_bytes
from audiotext.server.errors import AudioRequestError
from audiotext.server.intake import AudioQueue, RequestAudio, request_scope, take
from audiotext.server.windows import split_windows
from tests.conftest import SAMPLE_RATE, b64, speech_of, wav_bytes


@pytest.mark.parametrize("seconds", [30.5, 45, 60, 60.01, 95, 239])
def test_windows_cover_everything_and_fit_the_encoder(seconds: float) -> None:
    audio = speech_of(seconds)
    windows = split_windows(audio)
    assert len(windows) == np.ceil(seconds / 30)  # the fewest windows: 60 s is two
    assert all(len(w) <= 30 * SAMPLE_RATE for w in windows)
    assert all(audio_token_count(len(w)) >= 1 for w in windows)
    joined = np.concatenate(windows)
    assert np.array_equal(joined[: len(audio)], audio)  # in order, nothing dropped
    assert not joined[len(audio) :].any()  # at most a little silence padding at the end


def test_cuts_fall_on_quiet_points_where_the_rest_still_fits() -> None:
    audio = speech_of(50) + 0.01  # nowhere silent
    audio[int(29.3 * SAMPLE_RATE) : int(29.5 * SAMPLE_RATE)] = 0.0
    first, _ = split_windows(audio)
    assert 29.3 <= len(first) / SAMPLE_RATE < 29.5  # on the pause, not at 30 s
    # 60 s in two windows leaves no room to move the cut: it is at 30 s.
    audio = speech_of(60)
    audio[int(29.3 * SAMPLE_RATE) : int(29.5 * SAMPLE_RATE)] = 0.0
    assert [len(w) for w in split_windows(audio)] == [30 * SAMPLE_RATE] * 2


def test_short_audio_reaches_the_model_as_the_same_16khz_signal() -> None:
    audio = speech_of(10)
    assert np.array_equal(take(wav_bytes(audio), 240), audio)


def test_other_rates_and_channels_are_mixed_and_resampled_with_soxr() -> None:
    audio = speech_of(3)
    stereo = np.stack([soxr.resample(audio, SAMPLE_RATE, 44100)] * 2, axis=1)
    heard = take(wav_bytes(stereo, 44100), 240)
    expected = soxr.resample(stereo.mean(axis=1), 44100, SAMPLE_RATE)
    assert np.allclose(heard, expected, atol=1e-6)


def flac_of_silence(minutes: int) -> bytes:
    with soundfile.SoundFile(
        buf := io.BytesIO(), "w", samplerate=16000, channels=1, format="FLAC"
    ) as f:
        block = np.zeros(16000 * 60, dtype=np.float32)
        for _ in range(minutes):
            f.write(block)
    return buf.getvalue()


def test_a_bomb_is_refused_before_it_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ten hours of silence is a small FLAC file and 2.3 GB of float samples.
    bomb = flac_of_silence(600)
    assert len(bomb) < 20 * 2**20
    decodes = count_decodes(monkeypatch)
    with pytest.raises(AudioRequestError, match="--max-audio-seconds") as caught:
        take(bomb, 240)
    assert caught.value.status == 413
    assert decodes == []


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = intake.decode

    def counted(data: bytes, max_seconds: float | None = None) -> Any:
        calls.append(len(data))
        return real(data, max_seconds)

    monkeypatch.setattr(intake, "decode", counted)
    return calls


def test_a_request_counts_each_clip_once_and_reports_what_was_heard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decodes = count_decodes(monkeypatch)
    with request_scope(RequestAudio(max_seconds=240)) as heard:
        take(wav_bytes(speech_of(10)), 240)
        take(wav_bytes(speech_of(45)), 240)
    assert len(decodes) == 2
    assert heard.as_dict() == {"seconds": 55.0, "windows": 3}
    assert heard.headers() == {"X-Audio-Seconds": "55.000", "X-Audio-Windows": "3"}


def test_a_request_over_its_limit_is_413_across_clips() -> None:
    with request_scope(RequestAudio(max_seconds=60)), pytest.raises(AudioRequestError) as caught:
        take(wav_bytes(speech_of(40)), 60)
        take(wav_bytes(speech_of(40)), 60)
    assert caught.value.status == 413
    assert "at most 60 s per request (--max-audio-seconds)" in str(caught.value)


def test_a_full_queue_refuses_with_503_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    queue = AudioQueue(max_seconds=50)
    with request_scope(RequestAudio(240, queue)):
        take(wav_bytes(speech_of(40)), 240)
        assert queue.seconds == pytest.approx(40)
        decodes = count_decodes(monkeypatch)
        with request_scope(RequestAudio(240, queue)), pytest.raises(AudioRequestError) as caught:
            take(wav_bytes(speech_of(20)), 240)
        assert caught.value.status == 503
        assert "--max-queued-audio-s" in str(caught.value)
        assert decodes == []
    assert queue.seconds == 0  # released when the requests ended


def test_one_request_alone_runs_whatever_its_clips_add_up_to_under_its_limit() -> None:
    queue = AudioQueue(max_seconds=50)
    with request_scope(RequestAudio(240, queue)) as heard:
        take(wav_bytes(speech_of(40)), 240)
        take(wav_bytes(speech_of(20)), 240)  # over the queue, but only its own audio is there
        assert queue.seconds == pytest.approx(60)
    assert heard.seconds == pytest.approx(60) and queue.seconds == 0


def test_clips_admitted_before_any_is_heard_count_together() -> None:
    # vLLM fetches a request's clips in parallel: each is admitted before the others decode.
    request = RequestAudio(max_seconds=60, queue=AudioQueue(max_seconds=50))
    request.admit(40)
    with pytest.raises(AudioRequestError) as caught:
        request.admit(40)
    assert caught.value.status == 413  # over the request's limit: not a retryable 503
    assert request.admitted == pytest.approx(40)


def test_clips_taken_in_parallel_threads_are_refused_once_over_the_limit() -> None:
    clip = wav_bytes(speech_of(40))
    with request_scope(RequestAudio(60, AudioQueue(max_seconds=50))) as heard:
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = [pool.submit(contextvars.copy_context().run, take, clip, 60) for _ in "ab"]
        errors = [job.exception() for job in jobs]
    refusals = [e for e in errors if e is not None]
    assert len(refusals) == 1 and isinstance(refusals[0], AudioRequestError)
    assert refusals[0].status == 413
    assert heard.seconds == pytest.approx(40)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:audio/wav;base64,@@not base64@@", "not valid base64"),
        ("data:audio/wav;base64,", "empty"),
        ("data:audio/wav,plain", "must be base64"),
        ("data:audio/exe;base64,AAAA", "'exe' is not supported"),
    ],
)
def test_bad_data_urls_are_a_400(url: str, message: str) -> None:
    with pytest.raises(AudioRequestError, match=message) as caught:
        data_url_bytes(url)
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not audio" * 50, "decode"),
        (wav_bytes(np.zeros(0, dtype=np.float32)), "empty"),
        (wav_bytes(speech_of(1)[:160]), "too short"),
    ],
)
def test_undecodable_empty_or_too_short_audio_is_a_400(data: bytes, message: str) -> None:
    with pytest.raises(AudioRequestError, match=message) as caught:
        take(data, 240)
    assert caught.value.status == 400


def test_the_connector_hears_data_urls_and_refuses_other_schemes() -> None:
    connector = AudioTextMediaConnector()
    audio = speech_of(2)
    samples, rate = connector.fetch_audio(f"data:audio/wav;base64,{b64(wav_bytes(audio))}")
    assert rate == SAMPLE_RATE and np.array_equal(samples, audio)
    for url in ("ftp://example.org/a.wav", "gopher://127.0.0.1/", "file:///etc/passwd"):
        with pytest.raises(AudioRequestError) as caught:
            connector.fetch_audio(url)
        assert caught.value.status in (400, 403)


def test_the_connector_guards_every_kind_of_media() -> None:
    from vllm.multimodal.media import ImageMediaIO

    connector = AudioTextMediaConnector()
    for url in ("http://127.0.0.1:9/a.png", "http://[::1]:9/a.png", "http://10.0.0.1/a.png"):
        with pytest.raises(AudioRequestError, match="refused") as caught:
            connector.load_from_url(url, ImageMediaIO())
        assert caught.value.status == 403
