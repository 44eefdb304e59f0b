"""Requests the listening checkpoint is trained and scored on, drawn from `grammar.toml`.

A `Clip` says what is heard (a sentence in a voice, or a synthetic sound); a `Case` adds
what is asked and the expected answer. Everything follows from the grammar and a seed.
Held-out voices and held-out English sentences never appear in training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import tomllib
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

GRAMMAR = Path(__file__).with_name("grammar.toml")

Split = Literal["train", "held_out"]
# Question types, as scored: `chat` is the voice-chat mode (the audio is the question).
KINDS = ("transcribe", "colour", "count", "pitch", "language", "sound", "chat")
NON_SPEECH = ("beep", "noise", "tones", "silence")
# A spoken follow-up ("and plus four"): the second turn of a voice chat, answered from the
# first turn's answer. Drawn only when asked for (`dialogues`, training's `--mix`).
FOLLOW_UP = "follow_up"
# Sentences of a `long` clip, at least and at most, unless asked otherwise.
LONG_SENTENCES = (2, 4)


@cache
def grammar() -> dict[str, Any]:
    """The parsed grammar file."""
    with GRAMMAR.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class Clip:
    """What is heard: `text` in `voice` (espeak-ng), or a synthetic `sound`."""

    text: str | None
    voice: str | None
    rate: int = 165
    pitch: int = 50
    amplitude: int = 100
    snr_db: float | None = None
    telephone: bool = False  # heard through 8 kHz sampling (nothing above 4 kHz)
    sound: str = "speech"
    language: str = "English"
    colour: str | None = None
    number: str | None = None
    answer: str | None = None  # the spoken question's answer (voice chat)
    follows: tuple[str, int] | None = None  # a follow-up's operation and operand
    seed: int = 0
    # A recording of several sentences: `text` is the first; these follow after `gaps` s.
    more: tuple[str, ...] = ()
    gaps: tuple[float, ...] = ()

    @property
    def sentences(self) -> tuple[str, ...]:
        """Every sentence spoken, in order."""
        return () if self.text is None else (self.text, *self.more)


@dataclass(frozen=True)
class Case:
    """One request and its expected answer."""

    kind: str
    clip: Clip
    instruction: str | None
    answer: str

    def as_json(self) -> dict[str, Any]:
        """The public form: what to speak, in which voice, what to ask, what to expect."""
        return {
            "kind": self.kind,
            "text": self.clip.text,
            "voice": self.clip.voice,
            "rate": self.clip.rate,
            "pitch": self.clip.pitch,
            "sound": self.clip.sound,
            **(
                {"more": list(self.clip.more), "gaps": list(self.clip.gaps)}
                if self.clip.more
                else {}
            ),
            "instruction": self.instruction,
            "answer": self.answer,
        }


def written(text: str) -> str:
    """A spoken sentence as the model writes it: capitalised, `I`, final punctuation."""
    words = ["I" if w == "i" else w for w in text.split()]
    sentence = " ".join(words)
    end = "?" if words[0] in ("what", "where") else "."
    return sentence[0].upper() + sentence[1:] + end


def normalize(text: str) -> list[str]:
    """Words for scoring: lower case, punctuation dropped."""
    kept = "".join(c if c.isalnum() or c in " '" else " " for c in text.lower())
    return kept.split()


def is_held_out_sentence(text: str) -> bool:
    """Whether an English sentence is kept for evaluation (a fixed hash of its words)."""
    digest = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < float(grammar()["split"]["held_out_sentences"])


def voices(split: Split, accents: list[str], variants: list[str]) -> list[str]:
    """Voices (`accent+variant`) of a split."""
    held = set(grammar()["voices"]["held_out"])
    every = [f"{a}+{v}" if v else a for a in accents for v in variants]
    return [v for v in every if (v in held) == (split == "held_out")]


def english_sentence(rng: random.Random, split: Split) -> tuple[str, str | None, str | None]:
    """A sentence of the split with its colour and number words (None where absent)."""
    vocab = grammar()["vocabulary"]
    while True:
        template = rng.choice(grammar()["template"])["text"]
        singular, plural = rng.choice(vocab["object"])
        slots = {
            "colour": rng.choice(vocab["colour"]),
            "number": rng.choice(vocab["number"]),
            "object": singular,
            "objects": plural,
            "action": rng.choice(vocab["action"]),
            "place": rng.choice(vocab["place"]),
            "furniture": rng.choice(vocab["furniture"]),
            "preposition": rng.choice(vocab["preposition"]),
        }
        text = template.format(**slots)
        if is_held_out_sentence(text) == (split == "held_out"):
            colour = slots["colour"] if "{colour}" in template else None
            number = slots["number"] if "{number}" in template else None
            return text, colour, number


def _speech(rng: random.Random, text: str, voice: str, **fields: Any) -> Clip:
    noisy = rng.random() < 0.5
    return Clip(
        text=text,
        voice=voice,
        rate=rng.randint(140, 190),
        pitch=fields.pop("pitch", rng.randint(35, 65)),
        amplitude=rng.randint(60, 180),
        snr_db=rng.uniform(15.0, 40.0) if noisy else None,
        telephone=rng.random() < 0.15,
        seed=rng.getrandbits(31),
        **fields,
    )


def draw_recording(
    rng: random.Random, split: Split, sentences: int, gaps: tuple[float, float]
) -> Clip:
    """Several English sentences in one voice, with pauses of `gaps` seconds between."""
    g = grammar()
    voice = rng.choice(voices(split, g["voices"]["english"], g["voices"]["variants"]))
    texts = [english_sentence(rng, split)[0] for _ in range(sentences)]
    pauses = tuple(round(rng.uniform(*gaps), 2) for _ in texts[1:])
    clip = _speech(rng, texts[0], voice)
    return dataclasses.replace(clip, more=tuple(texts[1:]), gaps=pauses, snr_db=None)


def draw_clip(
    rng: random.Random, split: Split, kind: str, long_sentences: tuple[int, int] = LONG_SENTENCES
) -> Clip:
    """One clip fit for a question type (`long`: a recording of `long_sentences` sentences,
    at least and at most)."""
    g = grammar()
    english = voices(split, g["voices"]["english"], g["voices"]["variants"])
    if kind == "long":
        return draw_recording(rng, split, rng.randint(*long_sentences), (0.3, 6.0))
    if kind in ("transcribe", "colour", "count"):
        while True:
            text, colour, number = english_sentence(rng, split)
            if (kind == "colour" and colour is None) or (kind == "count" and number is None):
                continue
            return _speech(rng, text, rng.choice(english), colour=colour, number=number)
    if kind == "pitch":
        low = rng.random() < 0.5
        male = voices(split, g["voices"]["english"], g["voices"]["pitch_variants"])
        text, colour, number = english_sentence(rng, split)
        pitch = rng.randint(0, 15) if low else rng.randint(85, 99)
        clip = _speech(rng, text, rng.choice(male), pitch=pitch, colour=colour, number=number)
        return clip
    if kind == "chat":
        digits = g["vocabulary"]["digit"]
        a, b = rng.randrange(len(digits)), rng.randrange(len(digits))
        op = rng.choice(("plus", "minus"))
        if op == "minus" and b > a:
            a, b = b, a
        value = a + b if op == "plus" else a - b
        text = g["questions"][op].format(a=digits[a], b=digits[b])
        answer = g["vocabulary"]["answer_number"][value]
        return _speech(rng, text, rng.choice(english), answer=answer)
    if kind == FOLLOW_UP:
        operation = rng.choice(("plus", "minus"))
        operand = rng.randint(1, len(g["vocabulary"]["digit"]) - 1)
        text = g["follow_ups"][operation].format(b=g["vocabulary"]["digit"][operand])
        return _speech(rng, text, rng.choice(english), follows=(operation, operand))
    if kind == "language":
        language = rng.choice(["English", *g["languages"]])
        if language == "English":
            text, _, _ = english_sentence(rng, split)
            return _speech(rng, text, rng.choice(english))
        spec = g["languages"][language]
        voice = rng.choice(voices(split, [spec["voice"]], g["voices"]["variants"]))
        return _speech(rng, rng.choice(spec["phrases"]), voice, language=language)
    if kind == "sound":
        sound = rng.choice(NON_SPEECH)
        return Clip(text=None, voice=None, sound=sound, seed=rng.getrandbits(31))
    raise ValueError(f"unknown question type {kind!r}; choose one of {', '.join(KINDS)}")


def followed(answer: str, follows: tuple[str, int]) -> str | None:
    """The answer to a follow-up after `answer` (a number word), None where there is none
    (not a number of the grammar, or a result outside 0-20)."""
    numbers = grammar()["vocabulary"]["answer_number"]
    words = normalize(answer)
    if len(words) != 1 or words[0] not in numbers:
        return None
    operation, operand = follows
    value = numbers.index(words[0]) + (operand if operation == "plus" else -operand)
    return numbers[value] if 0 <= value < len(numbers) else None


@dataclass(frozen=True)
class Dialogue:
    """A voice chat of two turns: `opener` (a spoken question) with its right answer as the
    model's first reply, then the spoken `follow_up`, whose answer is `answer`."""

    opener: Case
    follow_up: Clip
    answer: str

    @property
    def case(self) -> Case:
        """The follow-up as a case of its own (what is heard, asked and expected)."""
        return Case(FOLLOW_UP, self.follow_up, None, self.answer)

    def as_json(self) -> dict[str, Any]:
        """The public form: the opener's case, then the follow-up's."""
        return {"kind": FOLLOW_UP, "turns": [self.opener.as_json(), self.case.as_json()]}


def dialogues(split: Split, count: int, seed: int) -> list[Dialogue]:
    """`count` two-turn voice chats of a split, one voice each, each follow-up's answer in
    0-20."""
    rng = random.Random(f"{split}-dialogue-{seed}")
    out: list[Dialogue] = []
    while len(out) < count:
        opener = draw_clip(rng, split, "chat")
        # One speaker asks both (training pairs follow-ups with any speaker's question).
        follow_up = dataclasses.replace(draw_clip(rng, split, FOLLOW_UP), voice=opener.voice)
        assert opener.answer is not None and follow_up.follows is not None
        answer = followed(opener.answer, follow_up.follows)
        if answer is not None:
            out.append(Dialogue(Case("chat", opener, None, opener.answer), follow_up, answer))
    return out


def tasks(clip: Clip) -> list[tuple[str, str | None, str]]:
    """Every (question type, instruction, answer) this clip can be asked in training."""
    g = grammar()
    ask = g["instructions"]
    if clip.sound != "speech":
        return [("sound", i, g["sounds"][clip.sound]) for i in ask["sound"]]
    if clip.language != "English":
        return [("language", i, clip.language) for i in ask["language"]]
    said = " ".join(written(t) for t in clip.sentences)
    out = [("transcribe", i, said) for i in ask["transcribe"]]
    if clip.more:
        return [*out, ("transcribe", None, said)]
    if clip.follows is not None:  # heard alone it asks nothing: only its transcript
        return out
    if clip.answer is not None:
        return [*out, ("chat", None, clip.answer)]
    out.append(("transcribe", None, said))
    out += [("sound", i, g["sounds"]["speech"]) for i in ask["sound"]]
    out += [("language", i, "English") for i in ask["language"]]
    if clip.colour is not None:
        out += [("colour", i, clip.colour) for i in ask["colour"]]
    if clip.number is not None:
        out += [("count", i, clip.number) for i in ask["count"]]
    if clip.pitch <= 15 or clip.pitch >= 85:
        out += [("pitch", i, "low" if clip.pitch <= 15 else "high") for i in ask["pitch"]]
    return out


def cases(split: Split, count: int, seed: int, kinds: tuple[str, ...] = KINDS) -> list[Case]:
    """`count` cases of a split, question types in turn, each with its first instruction."""
    rng = random.Random(f"{split}-{seed}")
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        clip = draw_clip(rng, split, kind)
        instruction, answer = next((i, a) for k, i, a in tasks(clip) if k == kind)
        out.append(Case(kind, clip, instruction, answer))
    return out


def clip_json(clip: Clip) -> dict[str, Any]:
    """A clip as plain data."""
    return asdict(clip)
