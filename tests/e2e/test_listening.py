"""The trained listening checkpoint through the served endpoint: is the audio heard right?

Held-out voices and sentences (never in training) are spoken with espeak-ng here, sent to a
real server, and scored: this checks the serving path (decoding, resampling, features,
encoder) by what the model heard, and its greedy answers against transformers'.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import soxr

from audiotext.client import AudioTextClient
from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port
from audiotext.server.listening import cases, score
from audiotext.server.listening.speech import SAMPLE_RATE, render
from tests.conftest import running_server, wav_bytes
from tests.metrics import scrape

MODEL = "listening"
# Held-out transcription cases scored per run.
PER_TYPE = 20


@pytest.fixture(scope="module")
def listening_path() -> Path:
    return checkpoint.ensure_built(MODEL)


@pytest.fixture(scope="module")
def listening_server(
    listening_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # float32 so that outputs can be compared exactly with transformers.
    config = ServerConfig(model=MODEL, port=free_port(), dtype="float32")
    with running_server(config, tmp_path_factory.mktemp("listening")) as proc:
        yield proc


@pytest.fixture(scope="module")
def listener(listening_server: ServerProcess) -> Iterator[AudioTextClient]:
    with AudioTextClient(base_url=listening_server.base_url, model=MODEL) as client:
        yield client


@pytest.fixture(scope="module")
def held_out_answers(listener: AudioTextClient) -> tuple[list[cases.Case], list[str]]:
    held = cases.cases("held_out", PER_TYPE, seed=2026, kinds=("transcribe",))
    return held, score.ask(listener, held)


def test_held_out_cases_are_neither_in_training_voices_nor_sentences() -> None:
    held = cases.cases("held_out", 140, seed=2026)
    training = cases.cases("train", 2000, seed=0)
    assert {c.clip.voice for c in held if c.clip.voice} <= set(
        cases.grammar()["voices"]["held_out"]
    )
    assert not {c.clip.voice for c in training} & set(cases.grammar()["voices"]["held_out"])
    english = [c.clip.text for c in held if c.kind in ("transcribe", "colour", "count")]
    assert english and all(cases.is_held_out_sentence(t) for t in english if t)
    assert not any(
        cases.is_held_out_sentence(c.clip.text)
        for c in training
        if c.kind == "transcribe" and c.clip.text
    )


# The targets (WER <= 10 %, >= 90 % per question type, long audio >= 90 %) are not
# all reached by the committed checkpoint (README "The listening checkpoint": WER 0.039 on
# these cases, 0.067 on a larger draw); these bounds sit just above what it measures, so a
# serving path that mishears (random weights, wrong resampling, lost audio) fails them.
WER_BOUND = 0.06
# One sentence's errors in any of the three file formats (6-10 words: at most one wrong).
CLIP_ERROR_BOUND = 0.19


def test_transcription_wer_on_held_out_voices_and_sentences(
    held_out_answers: tuple[list[cases.Case], list[str]],
) -> None:
    held, answers = held_out_answers
    scores = score.score(held, answers)
    assert scores["wer"] <= WER_BOUND, scores


def _flac_44k(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, soxr.resample(samples, SAMPLE_RATE, 44100), 44100, format="FLAC")
    return buf.getvalue()


def _mp3_8k_stereo(samples: np.ndarray) -> bytes:
    buf = io.BytesIO()
    narrow = soxr.resample(samples, SAMPLE_RATE, 8000)
    stereo = np.stack([narrow, narrow], axis=1)
    soundfile.write(buf, stereo, 8000, format="MP3", subtype="MPEG_LAYER_III")
    return buf.getvalue()


def test_the_same_clip_as_wav_flac_and_mp3_gives_the_same_transcript(
    listener: AudioTextClient,
) -> None:
    case = cases.cases("held_out", 1, seed=7, kinds=("transcribe",))[0]
    samples = render(case.clip)
    files = {
        "16 kHz WAV": wav_bytes(samples, subtype="PCM_16"),
        "44.1 kHz FLAC": _flac_44k(samples),
        "8 kHz stereo MP3": _mp3_8k_stereo(samples),
    }
    heard = {}
    for name, data in files.items():
        # normalize=False: the server decodes, resamples and mixes down the file as sent.
        with AudioTextClient(base_url=listener.base_url, model=MODEL, normalize=False) as raw:
            answer = raw.generate(
                {"audio": data, "text": case.instruction}, max_new_tokens=40, do_sample=False
            )
        heard[name] = answer["generated_text"]
    # WAV and FLAC carry the same 16 kHz speech: the same transcript. The 8 kHz MP3 has lost
    # everything above 4 kHz; it is heard about as well, not always word for word the same.
    assert heard["16 kHz WAV"] == heard["44.1 kHz FLAC"], heard
    reference = cases.normalize(case.answer)
    for name, text in heard.items():
        errors = score.edit_distance(reference, cases.normalize(text))
        assert errors / len(reference) <= CLIP_ERROR_BOUND, (name, heard)


def test_greedy_parity_with_transformers_generate(
    listener: AudioTextClient, listening_path: Path
) -> None:
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(listening_path)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(
        listening_path, dtype=torch.float32
    ).eval()
    for case in cases.cases("held_out", 4, seed=5, kinds=("transcribe", "chat", "colour", "sound")):
        samples = render(case.clip)
        content: list[dict[str, Any]] = [{"type": "audio", "audio_url": "clip"}]
        if case.instruction:
            content.append({"type": "text", "text": case.instruction})
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
        inputs = processor(
            text=prompt, audio=[samples], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=40, do_sample=False)
        expected = processor.batch_decode(
            out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )[0]
        served = listener.generate(
            {"audio": (samples, SAMPLE_RATE), "text": case.instruction},
            max_new_tokens=40,
            do_sample=False,
        )
        assert served["generated_text"] == expected


# Per question type: the bound sits just under what the committed checkpoint measures
# (README "The listening checkpoint"), so a serving path that mishears fails it.
# Pitch (high or low) was near chance until a pitch-heavy continuation (0.35-0.75 before it,
# 1.0 on these cases after).
ACCURACY_BOUND = {
    "colour": 0.9,
    "count": 0.95,
    "pitch": 0.85,
    "language": 0.95,
    "sound": 0.9,
    "chat": 0.9,
}


def test_accuracy_per_question_type_on_held_out_voices(listener: AudioTextClient) -> None:
    kinds = tuple(ACCURACY_BOUND)
    held = cases.cases("held_out", PER_TYPE * len(kinds), seed=2027, kinds=kinds)
    scores = score.score(held, score.ask(listener, held))
    low = {k: scores[k] for k, bound in ACCURACY_BOUND.items() if scores[k] < bound}
    assert not low, scores


def test_score_hears_every_clip_after_the_silence_asked(listener: AudioTextClient) -> None:
    import httpx

    with httpx.Client(base_url=listener.base_url.removesuffix("/v1")) as http:
        before = scrape(http).total("audiotext_audio_seconds_total")
        result = score.score_server(listener.base_url, 7, seed=11, model=MODEL, lead_silence=2.5)
        heard = scrape(http).total("audiotext_audio_seconds_total") - before
    held = cases.cases("held_out", 7, 11)
    dialogues = cases.dialogues("held_out", 1, 11)
    clips = [c.clip for c in held] + [c for d in dialogues for c in (d.opener.clip, d.follow_up)]
    spoken = sum(len(render(c)) / SAMPLE_RATE for c in clips)
    assert result["lead_silence"] == 2.5 and set(result["scores"]) >= {"wer", "chat"}
    assert heard == pytest.approx(spoken + 2.5 * len(clips), abs=0.01 * len(clips))


# Words of a 70-90 s recording that come back in order, on every route that hears it.
LONG_BOUND = 0.12


def test_a_long_recording_comes_back_in_order_on_chat_task_and_transcription_routes(
    listener: AudioTextClient,
) -> None:
    import random

    rng = random.Random("long-recording")
    for _ in range(20):  # 16 sentences with pauses: the first draw is 72 s
        clip = cases.draw_recording(rng, "held_out", 16, gaps=(1.5, 3.0))
        samples = render(clip)
        if 70 <= len(samples) / SAMPLE_RATE <= 90:
            break
    else:
        raise AssertionError("no 70-90 s recording in 20 draws")
    reference = cases.normalize(" ".join(clip.sentences))
    audio = wav_bytes(samples, subtype="PCM_16")
    instruction = cases.grammar()["instructions"]["transcribe"][0]
    task = listener.generate_result(
        {"audio": audio, "text": instruction}, max_new_tokens=400, do_sample=False
    )
    chat = listener.chat(
        [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                      {"type": "text", "text": instruction}]}],
        max_new_tokens=400,
        do_sample=False,
    )  # fmt: skip
    # Heard whole: more audio tokens than two full 30 s windows (750 each), not one window's.
    assert task.prompt_tokens is not None and task.prompt_tokens > 2 * 750, task
    transcription = listener.transcribe(audio)
    assert not isinstance(transcription, str)
    heard = {
        "task": task.generated_text,
        "chat": chat.generated_text,
        "transcription": transcription.text,
    }
    in_order = {
        route: score.words_in_order(reference, cases.normalize(text))
        for route, text in heard.items()
    }
    assert min(in_order.values()) >= LONG_BOUND, (in_order, heard)


# Two-turn voice chats: the spoken follow-up ("and plus four") is answered from the first
# reply. The bound sits just under what the committed checkpoint measures (1.0 after the
# right reply, 0.90 after another; the weights of the first follow-up training: 0.30 and
# 0.20; the weights before, never trained on them: 0.05).
FOLLOW_UP_BOUND = 0.8


def test_a_spoken_follow_up_is_answered_from_the_first_reply(listener: AudioTextClient) -> None:
    dialogues = cases.dialogues("held_out", PER_TYPE, seed=2029)
    follows = [d.follow_up.follows for d in dialogues if d.follow_up.follows]
    assert len(follows) == len(dialogues)
    # The same follow-ups after another first reply must be answered from that reply: the
    # answer comes from the conversation, not from the follow-up's audio alone.
    numbers = cases.grammar()["vocabulary"]["answer_number"]
    others = []
    for dialogue, f in zip(dialogues, follows, strict=True):
        value = numbers.index(dialogue.opener.answer)
        others.append(
            next(
                numbers[v]
                for v in (value + 3, value - 3, value + 5, value - 5)
                if 0 <= v < len(numbers) and cases.followed(numbers[v], f)
            )
        )
    for replies in ([d.opener.answer for d in dialogues], others):
        answers = score.ask_follow_ups(listener, dialogues, replies=replies)
        right = [
            cases.normalize(a) == [cases.followed(r, f)]
            for a, r, f in zip(answers, replies, follows, strict=True)
        ]
        assert sum(right) / len(right) >= FOLLOW_UP_BOUND, list(zip(replies, answers, strict=True))
