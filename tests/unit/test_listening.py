"""The listening checkpoint's world, its training encoder and its committed files."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from audiotext.server import checkpoint
from audiotext.server.encoder import encode_valid_frames
from audiotext.server.features import trimmed_features
from audiotext.server.listening import cases, score, train
from audiotext.server.listening.speech import SAMPLE_RATE, render

COMMITTED = checkpoint.TRAINED["listening"]
# The committed checkpoint's processor, a fresh float32 copy of its model, its prompts.
Committed = tuple[Any, Any, train.Prompts]


@pytest.fixture()
def committed() -> Committed:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    processor = AutoProcessor.from_pretrained(COMMITTED)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(COMMITTED, dtype=torch.float32)
    return (
        processor,
        model,
        train.Prompts(processor.tokenizer, checkpoint.CHAT_TEMPLATE.read_text()),
    )


def test_cases_are_reproducible_and_cover_every_question_type() -> None:
    first = cases.cases("held_out", 21, seed=3)
    assert first == cases.cases("held_out", 21, seed=3)
    assert first != cases.cases("held_out", 21, seed=4)
    assert {c.kind for c in first} == set(cases.KINDS)
    assert all(c.instruction is None for c in first if c.kind == "chat")


def test_sentences_command_prints_the_public_case_form() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "audiotext.server.cli",
            "model",
            "sentences",
            "--size",
            "listening",
            "--held-out",
            "--count",
            "7",
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 7
    assert lines == [c.as_json() for c in cases.cases("held_out", 7, seed=1)]
    assert {"text", "voice", "instruction", "answer"} <= set(lines[0])
    held_voices = set(cases.grammar()["voices"]["held_out"])
    assert all(line["voice"] in held_voices for line in lines if line["voice"])


def test_chat_answers_are_the_arithmetic_spoken() -> None:
    words = cases.grammar()["vocabulary"]["answer_number"]
    for case in cases.cases("train", 40, seed=0, kinds=("chat",)):
        assert case.clip.text is not None
        _, _, a, op, b = case.clip.text.split()
        value = words.index(a) + words.index(b) if op == "plus" else words.index(a) - words.index(b)
        assert case.answer == words[value]


def test_scoring_counts_word_errors_and_order() -> None:
    assert score.edit_distance(["a", "b", "c"], ["a", "x", "c", "d"]) == 2
    assert score.words_in_order(["a", "b", "c", "d"], ["a", "c", "b", "d"]) == 0.75
    held = cases.cases("held_out", 2, seed=0, kinds=("transcribe", "colour"))
    perfect = score.score(held, [c.answer for c in held])
    assert perfect == {"wer": 0.0, "colour": 1.0}
    wrong = score.score(held, ["", "nothing"])
    assert wrong == {"wer": 1.0, "colour": 0.0}


def test_training_encoder_equals_the_served_padding_free_encoder(committed: Committed) -> None:
    processor, model, _ = committed
    clips = [c.clip for c in cases.cases("held_out", 4, seed=9)]
    audio = [render(c) for c in clips]
    # and whole 30 s windows (3000 and 2999 valid frames: one encoder position past 1500
    # before the cut), as the windows of long recordings are.
    window = processor.feature_extractor.n_samples
    audio += [np.resize(np.concatenate(audio), n) for n in (window, window - 300)]
    pairs = [trimmed_features(processor.feature_extractor, a) for a in audio]
    assert [int(m.sum()) for _, m in pairs][-2:] == [3000, 2999]
    served = encode_valid_frames(
        model.model.audio_tower,
        model.model.multi_modal_projector,
        [f for f, _ in pairs],
        [m for _, m in pairs],
    )
    with torch.no_grad():
        trained = train.encode_batch(model, [f for f, _ in pairs], [int(m.sum()) for _, m in pairs])
    for a, b in zip(served, trained, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_stage_one_trains_the_audio_side_alone_and_spells_with_ctc(
    caplog: pytest.LogCaptureFixture,
    committed: Committed,
) -> None:
    import logging
    import random

    processor, model, prompts = committed
    recipe = train.Recipe(ctc_steps=2, ctc_batch=2, eval_every=2)
    clips = [c.clip for c in cases.cases("train", 6, seed=3, kinds=("transcribe",))]
    examples = train.speak_all(clips, processor.feature_extractor, workers=2)
    run = train.Run(model, train.CTCHead(model.lm_head), prompts, recipe, random.Random(0), 0.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger=train.__name__):
        train.audio_stage(run, examples, examples[:2])
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ctc step")]
    assert [m.split(" ctc ")[0] for m in progress] == ["ctc step 0/2", "ctc step 1/2"]
    assert all(" lr " in m and m.endswith(" s)") for m in progress)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("model.audio_tower.layers.") for k in changed)
    assert "lm_head.weight" in changed  # CTC spells through the model's output layer
    assert not any(k.startswith("model.language_model.") for k in changed)


def test_spoken_clips_are_cached_under_what_decides_them() -> None:
    recipe = train.Recipe()
    assert recipe.spoken_key() == train.Recipe(steps=10, ctc_steps=5, lr=1.0).spoken_key()
    other_mix = (("transcribe", 0.5), *recipe.mix[1:])
    others = [
        train.Recipe(seed=1),
        train.Recipe(clips=100),
        train.Recipe(mix=other_mix),
        train.Recipe(long_sentences=(5, 7)),
    ]
    keys = {recipe.spoken_key(), *(r.spoken_key() for r in others)}
    assert len(keys) == 5
    # The default sentence counts keep the key the committed recipe's clips were cached under.
    mix = hashlib.sha256(repr(recipe.mix).encode()).hexdigest()[:12]
    assert recipe.spoken_key() == f"0-12000-{mix}"


def test_recordings_hold_the_sentences_asked_and_are_cut_to_one_window() -> None:
    import random

    recipe = train.Recipe(clips=400, long_sentences=(5, 7))
    default = train.Recipe(clips=400)
    # The default draw is the one before sentence counts could be chosen.
    rng = random.Random("train-clips-0")
    kinds, weights = zip(*default.mix, strict=True)
    assert train.draw_clips(default) == [
        cases.draw_clip(rng, "train", rng.choices(kinds, weights)[0]) for _ in range(400)
    ]
    recordings = [c for c in train.draw_clips(recipe) if c.more]
    assert recordings
    assert {1 + len(c.more) for c in recordings} == {5, 6, 7}
    # A recording longer than a window loses its last sentences, not their words' audio.
    long = max(recordings, key=lambda c: sum(c.gaps))
    window = SAMPLE_RATE * 30
    assert len(render(long)) > window
    fitted, audio = train.fit_window(long, window)
    assert len(audio) <= window and len(fitted.more) < len(long.more)
    assert (fitted.text, *fitted.more) == (long.text, *long.more)[: 1 + len(fitted.more)]
    assert fitted.gaps == long.gaps[: len(fitted.more)]
    short = next(c for c in recordings if len(render(c)) <= window)
    assert train.fit_window(short, window)[0] == short


def test_question_types_are_drawn_by_weight_or_every_task_alike() -> None:
    import collections
    import random

    clip = next(c.clip for c in cases.cases("train", 40, seed=2) if c.kind == "pitch")
    tasks = cases.tasks(clip)
    kinds = {kind for kind, _, _ in tasks}
    assert {"transcribe", "pitch", "sound", "language"} <= kinds

    def shares(weights: dict[str, float] | None) -> dict[str, float]:
        rng = random.Random(0)
        drawn = collections.Counter(train.draw_task(rng, tasks, weights)[0] for _ in range(6000))
        return {k: n / 6000 for k, n in drawn.items()}

    # Unweighted, the committed recipe's draw: a task uniformly (so its rng use is unchanged).
    rng, same = random.Random(5), random.Random(5)
    assert [train.draw_task(rng, tasks, None) for _ in range(50)] == [
        same.choice(tasks) for _ in range(50)
    ]
    alike = shares(None)
    per_task = collections.Counter(kind for kind, _, _ in tasks)
    for kind in kinds:
        assert abs(alike[kind] - per_task[kind] / len(tasks)) < 0.03
    # Weighted: the type by weight among the clip's types, unnamed types weighing 1.
    weights = {"pitch": 6.0, "sound": 0.0}
    weighted = shares(weights)
    total = sum(weights.get(k, 1.0) for k in kinds)
    assert "sound" not in weighted
    for kind in kinds - {"sound"}:
        assert abs(weighted[kind] - weights.get(kind, 1.0) / total) < 0.03
    # and an instruction of that type, each of them in turn.
    pitch_asked = {train.draw_task(rng, tasks, weights)[1] for _ in range(300)}
    assert pitch_asked >= set(cases.grammar()["instructions"]["pitch"])


@pytest.mark.parametrize(("native", "expected"), [(True, True), (False, False), (None, False)])
def test_bfloat16_autocast_follows_the_cpu_unless_asked(
    monkeypatch: pytest.MonkeyPatch, native: bool | None, expected: bool
) -> None:
    monkeypatch.setattr(train, "cpu_has_bfloat16", lambda: native)
    assert train.with_autocast_decided(train.Recipe()).bf16 is expected
    for asked in (True, False):
        assert train.with_autocast_decided(train.Recipe(bf16=asked)).bf16 is asked


def test_long_batches_hear_recordings_as_the_windows_of_one_clip() -> None:
    import random

    pool = [
        train.Example(torch.zeros(1, 1), frames=1000, tasks=[], transcript="a", long=True)
        for _ in range(40)
    ]
    for windows, sizes in ((2, [2, 2, 2, 1, 1, 1, 1, 1, 1]), (3, [3, 2, 1, 3, 2, 1])):
        recipe = train.Recipe(long_windows=windows, long_frames=12000 if windows == 2 else 12500)
        samples = train.draw_batch(random.Random(0), recipe, pool)
        assert [len(s) for s in samples] == sizes
        heard = [e for s in samples for e in s]
        assert len({id(e) for e in heard}) == len(heard)  # each recording once
        assert sum(e.frames for e in heard) <= recipe.long_frames


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--task-weights", "pitch=x", "write TYPE=WEIGHT"),
        ("--task-weights", "tone=2", "unknown question type"),
        ("--task-weights", "chat=-1", ">= 0"),
        ("--mix", "long=x", "write TYPE=WEIGHT"),
        ("--mix", "music=0.1", "unknown kind of clip"),
        ("--mix", "pitch=-0.1", ">= 0"),
        ("--long-sentences", "1-3", "2 <= MIN"),
        ("--long-sentences", "x-7", "write MIN-MAX"),
        ("--long-sentences", "6-5", "2 <= MIN"),
        ("--lead-silence", "x", "write seconds"),
        ("--lead-silence", "-1", "between 0 and 30"),
        ("--lead-silence", "31", "between 0 and 30"),
    ],
)
def test_train_refuses_bad_question_type_weights_and_sentence_counts(
    flag: str, value: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from audiotext.server import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["model", "train", "--out", "/nonexistent/x", flag, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_train_mix_changes_the_named_kinds_and_keeps_the_rest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from audiotext.server import cli

    trained: list[train.Recipe] = []
    monkeypatch.setattr(train, "train", lambda out, recipe, init: trained.append(recipe) or out)
    cli.main(["model", "train", "--out", str(tmp_path / "x"), "--mix", "pitch=0.2,colour=0.05"])
    mix = dict(trained[0].mix)
    assert mix == {**dict(train.Recipe().mix), "pitch": 0.2, "colour": 0.05}
    # and clips are drawn in it: colour clips now, more pitch clips than the recipe's.
    drawn = collections.Counter(
        "pitch" if c.pitch <= 15 or c.pitch >= 85 else "other"
        for c in train.draw_clips(dataclasses.replace(trained[0], clips=2000))
    )
    assert drawn["pitch"] > 2000 * 0.15


def test_train_takes_each_stages_learning_rate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from audiotext.server import cli

    trained: list[train.Recipe] = []
    monkeypatch.setattr(train, "train", lambda out, recipe, init: trained.append(recipe) or out)
    cli.main(["model", "train", "--out", str(tmp_path / "x")])
    cli.main(["model", "train", "--out", str(tmp_path / "x"), "--ctc-lr", "1e-3", "--lr", "2e-4"])
    assert [(r.ctc_lr, r.lr) for r in trained] == [
        (train.Recipe().ctc_lr, train.Recipe().lr), (1e-3, 2e-4),
    ]  # fmt: skip
    assert train.Recipe().ctc_lr != 1e-3 and train.Recipe().lr != 2e-4


def test_lead_silence_is_what_the_extractor_makes_of_zeros_before_the_clip() -> None:
    import random

    extractor = _extractor()
    # A noisy clip: its quietest frames are the noise, louder than digital silence.
    clip = next(
        c
        for i in range(50)
        if (c := cases.draw_clip(random.Random(i), "held_out", "transcribe")).snr_db is not None
    )
    audio = render(clip)
    features, mask = trimmed_features(extractor, audio)
    frames = int(mask.sum())
    lead = 150  # 1.5 s
    heard, valid = train.with_lead_silence(features, frames, lead, train.silence_level(features))
    expected, expected_mask = trimmed_features(
        extractor, np.concatenate([np.zeros(lead * 160, np.float32), audio])
    )
    assert valid == int(expected_mask.sum()) == frames + lead
    # The same columns, but for the STFT's window across the join (two frames either side).
    same = torch.isclose(heard[:, :valid], expected[:, :valid], atol=1e-4).all(dim=0)
    assert same[: lead - 2].all() and same[lead + 2 :].all()
    # Kept within one 30 s window; none asked, nothing changed.
    assert train.with_lead_silence(features, frames, 5000, 0.0)[1] == train.MAX_FRAMES
    assert train.with_lead_silence(features, frames, 0, 0.0)[0] is features


def test_lead_silence_draws_nothing_unless_asked_so_earlier_runs_reproduce() -> None:
    import random

    clips = [cases.draw_clip(random.Random(i), "train", "transcribe") for i in range(4)]
    examples = train.speak_all(clips, _extractor(), workers=2)
    plain, leading = random.Random(7), random.Random(7)
    first = train._augmented(examples, plain)
    assert [frames for _, frames in first] == [e.frames for e in examples]
    reference = random.Random(7)
    for e in examples:
        train.spec_augment(e.features, e.frames, reference)
    assert plain.getstate() == reference.getstate()
    longer = train._augmented(examples, leading, lead=300)
    added = [f - e.frames for (_, f), e in zip(longer, examples, strict=True)]
    assert all(0 <= n <= 300 for n in added) and len(set(added)) > 1


def test_train_takes_a_lead_silence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from audiotext.server import cli

    trained: list[train.Recipe] = []
    monkeypatch.setattr(train, "train", lambda out, recipe, init: trained.append(recipe) or out)
    cli.main(["model", "train", "--out", str(tmp_path / "x"), "--lead-silence", "12.5"])
    cli.main(["model", "train", "--out", str(tmp_path / "x"), "--lead-share", "0.6"])
    assert (trained[0].lead_silence, trained[0].lead_share) == (12.5, train.Recipe().lead_share)
    assert (trained[1].lead_silence, trained[1].lead_share) == (0, 0.6)
    assert train.Recipe().lead_silence == 0


def test_a_share_of_steps_hears_lead_silence_and_none_draws_nothing() -> None:
    import random

    recipe = dataclasses.replace(train.Recipe(), lead_silence=12.5, lead_share=0.25)
    rng = random.Random(0)
    leads = [train.lead_for_step(rng, recipe) for _ in range(400)]
    assert set(leads) == {0, 1250} and 60 < leads.count(1250) < 140
    untouched = random.Random(0)
    assert train.lead_for_step(untouched, train.Recipe()) == 0
    assert untouched.getstate() == random.Random(0).getstate()


def _extractor() -> Any:
    from transformers import WhisperFeatureExtractor

    return WhisperFeatureExtractor.from_pretrained(COMMITTED)


def test_the_pitch_probe_reads_every_depth_and_the_features_carry_pitch() -> None:
    from audiotext.server.listening.probe import pitch_probe

    layers = json.loads((COMMITTED / "config.json").read_text())["audio_config"]["encoder_layers"]
    result = pitch_probe(COMMITTED, count=60)
    expected = ["mel", "conv", *(f"layer {i}" for i in range(1, layers + 1)), "projected"]
    assert list(result) == expected
    assert all(0.0 <= accuracy <= 1.0 for accuracy in result.values())
    # espeak-ng's pitch 0-15 and 85-99 are about an octave apart: the mel features tell them.
    assert result["mel"] >= 0.9, result


def test_the_probe_refuses_too_few_clips(capsys: pytest.CaptureFixture[str]) -> None:
    from audiotext.server import cli

    assert cli.main(["model", "probe", "--count", "5"]) == 2
    assert "at least 20 clips" in capsys.readouterr().err


def test_ctc_pitch_spells_the_voice_class_before_the_words(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import random

    from audiotext.server import cli

    rng = random.Random(0)
    clips = [cases.draw_clip(rng, "train", kind) for kind in ("pitch", "pitch", "transcribe")]
    examples = [
        train.Example(
            features=torch.zeros(1, 1),
            frames=1,
            tasks=cases.tasks(clip),
            transcript=" ".join(cases.normalize(" ".join(clip.sentences))),
        )
        for clip in clips
    ]
    for clip, example in zip(clips[:2], examples[:2], strict=True):
        pitch = "low" if clip.pitch <= 15 else "high"
        assert train.with_pitch_spelt(example).transcript == f"{pitch} {example.transcript}"
    assert train.with_pitch_spelt(examples[2]) is examples[2]  # no pitch asked: words only
    assert (
        train.with_pitch_spelt(dataclasses.replace(examples[0], transcript=None)).transcript is None
    )

    trained: list[train.Recipe] = []
    monkeypatch.setattr(train, "train", lambda out, recipe, init: trained.append(recipe) or out)
    cli.main(["model", "train", "--out", str(tmp_path / "x")])
    cli.main(["model", "train", "--out", str(tmp_path / "x"), "--ctc-pitch"])
    assert [r.ctc_pitch for r in trained] == [False, True]


def test_ctc_spelling_collapses_repeats_and_drops_blanks() -> None:
    blank = 9
    assert train.ctc_collapse([9, 4, 4, 9, 4, 7, 7, 9, 9, 2], blank) == [4, 4, 7, 2]
    assert train.ctc_collapse([3, 3, 3], blank) == [3]
    assert train.ctc_collapse([9, 9], blank) == []


def test_committed_checkpoint_is_small_official_and_bfloat16() -> None:
    weights = COMMITTED / "model.safetensors"
    assert weights.stat().st_size <= 25 * 1024 * 1024
    with safe_open(str(weights), framework="pt") as f:
        keys = list(f.keys())
        assert {f.get_tensor(k).dtype for k in keys} == {torch.bfloat16}
    assert "language_model.lm_head.weight" in keys
    assert not any(k.startswith("language_model.model.model.") for k in keys)
    config = json.loads((COMMITTED / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    assert config["text_config"]["head_dim"] >= 64


def test_building_listening_copies_the_committed_checkpoint(tmp_path: Path) -> None:
    out = checkpoint.build("listening", tmp_path / "listening")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (out / name).read_bytes() == (COMMITTED / name).read_bytes()
    assert checkpoint.builtin_path("listening").name.startswith("listening-")


@pytest.mark.parametrize("word", ["red", "kitchen", "twelve", "bottles"])
def test_grammar_words_are_single_tokens(word: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(COMMITTED)
    assert len(tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1


def test_follow_ups_are_answered_from_the_first_reply() -> None:
    assert cases.followed("seven", ("plus", 2)) == "nine"
    assert cases.followed("Seven.", ("minus", 7)) == "zero"  # as the model writes it
    assert cases.followed("nineteen", ("plus", 5)) is None  # past twenty
    assert cases.followed("three", ("minus", 4)) is None
    assert cases.followed("seven apples", ("plus", 1)) is None
    drawn = cases.dialogues("held_out", 30, seed=1)
    assert drawn == cases.dialogues("held_out", 30, seed=1)
    held_voices = set(cases.grammar()["voices"]["held_out"])
    for dialogue in drawn:
        assert dialogue.follow_up.follows is not None and dialogue.follow_up.text is not None
        operation, operand = dialogue.follow_up.follows
        assert dialogue.follow_up.text.split()[:2] == ["and", operation]
        assert dialogue.answer == cases.followed(dialogue.opener.answer, (operation, operand))
        assert dialogue.follow_up.voice == dialogue.opener.clip.voice in held_voices
    # Heard alone a follow-up asks nothing: it is only ever transcribed when asked to.
    kinds = {(kind, i is None) for kind, i, _ in cases.tasks(drawn[0].follow_up)}
    assert kinds == {("transcribe", False)}


def test_sentences_command_prints_follow_ups_in_the_public_form(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from audiotext.server import cli

    cli.main(["model", "sentences", "--held-out", "--follow-ups", "--count", "3", "--seed", "4"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == [d.as_json() for d in cases.dialogues("held_out", 3, seed=4)]
    opener, then = lines[0]["turns"]
    assert opener["kind"] == "chat" and then["kind"] == cases.FOLLOW_UP
    assert then["instruction"] is None and then["text"].startswith("and ")


def test_a_spoken_conversation_trains_on_the_prompt_the_server_builds(committed: Committed) -> None:
    processor, model, prompts = committed
    dialogue = cases.dialogues("held_out", 1, seed=2)[0]
    audio = [render(dialogue.opener.clip), render(dialogue.follow_up)]
    messages = [
        {"role": "user", "content": [train.AUDIO_PART]},
        {"role": "assistant", "content": dialogue.opener.answer},
        {"role": "user", "content": [train.AUDIO_PART]},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    served = processor(text=text, audio=audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    pairs = [trimmed_features(processor.feature_extractor, a) for a in audio]
    with torch.no_grad():
        first, second = train.encode_batch(
            model, [f for f, _ in pairs], [int(m.sum()) for _, m in pairs]
        )
    history = [(len(first), dialogue.opener.answer)]
    assert prompts.prompt(None, [len(second)], history) == served["input_ids"][0].tolist()


def test_a_follow_up_asked_as_one_is_the_second_turn_of_a_voice_chat(
    monkeypatch: pytest.MonkeyPatch,
    committed: Committed,
) -> None:
    import random

    processor, model, prompts = committed
    dialogues = cases.dialogues("train", 3, seed=0)
    follow_ups = train.speak_all([d.follow_up for d in dialogues], processor.feature_extractor)
    openers = train.speak_all([d.opener.clip for d in dialogues], processor.feature_extractor)
    built: list[tuple[Any, ...]] = []
    sequences = train.sequences
    monkeypatch.setattr(train, "sequences", lambda *a: built.append(a) or sequences(*a))
    loss, aux = train.batch_loss(
        model, train.CTCHead(model.lm_head), torch.nn.CTCLoss(blank=0), prompts,
        [[e] for e in follow_ups], random.Random(0), {"transcribe": 0.0}, openers,
    )  # fmt: skip
    assert torch.isfinite(loss) and aux is not None
    _, chosen, _, histories = built[0]
    for example, (instruction, answer), history in zip(follow_ups, chosen, histories, strict=True):
        assert instruction is None and len(history) == 1
        ((_, reply),) = history
        assert example.follows is not None and answer == cases.followed(reply, example.follows)
    # Without an opener it can follow, a follow-up is only transcribed: with none at all,
    # and after a question answered "twenty" (nothing is left to add).
    twenty = dataclasses.replace(openers[0], tasks=[("chat", None, "twenty")])
    adding = [[e] for e in follow_ups if e.follows and e.follows[0] == "plus"]
    assert adding and not train.fits(twenty, ("plus", 1)) and train.fits(twenty, ("minus", 1))
    for fitting in ([], [twenty]):
        built.clear()
        train.batch_loss(
            model, train.CTCHead(model.lm_head), torch.nn.CTCLoss(blank=0), prompts,
            adding, random.Random(0), {"transcribe": 1.0, cases.FOLLOW_UP: 1e9}, fitting,
        )  # fmt: skip
        assert all(instruction is not None for instruction, _ in built[0][1])


def test_training_evaluates_follow_ups_as_transformers_answers_the_conversation(
    committed: Committed,
) -> None:
    processor, model, prompts = committed
    dialogues = cases.dialogues("held_out", 2, seed=3)
    expected = []
    for dialogue in dialogues:
        messages = [
            {"role": "user", "content": [train.AUDIO_PART]},
            {"role": "assistant", "content": dialogue.opener.answer},
            {"role": "user", "content": [train.AUDIO_PART]},
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        audio = [render(dialogue.opener.clip), render(dialogue.follow_up)]
        inputs = processor(text=text, audio=audio, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
        start = inputs["input_ids"].shape[1]
        expected.append(processor.batch_decode(out[:, start:], skip_special_tokens=True)[0])
    spoken = train.speak_all(
        [c for d in dialogues for c in (d.opener.clip, d.follow_up)], processor.feature_extractor
    )
    held = [train.HeldDialogue(d, *spoken[2 * i : 2 * i + 2]) for i, d in enumerate(dialogues)]
    answers = train.greedy(
        model.eval(),
        prompts,
        [(None, h.follow_up) for h in held],
        histories=[[(h.opener, h.dialogue.opener.answer)] for h in held],
    )
    assert answers == expected
    scores = train.evaluate(model, prompts, [], [], held)
    right = sum(cases.normalize(a) == [d.answer] for a, d in zip(answers, dialogues, strict=True))
    assert scores[cases.FOLLOW_UP] == right / 2
