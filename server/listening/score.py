"""Score a server on held-out listening cases: WER for transcription, accuracy per type.

Works against any OpenAI-compatible server serving the listening checkpoint; the cases
come from `cases.cases`, the two-turn voice chats from `cases.dialogues`, and both are
spoken here with espeak-ng.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from audiotext.client import AudioTextClient, AudioTextError
from audiotext.server.listening import cases
from audiotext.server.listening.speech import SAMPLE_RATE, render

# Long enough for every answer of the grammar (a transcript is at most ~12 tokens).
MAX_NEW_TOKENS = 40


def heard(clip: cases.Clip, lead_silence: float = 0.0) -> tuple[np.ndarray, int]:
    """A clip's samples and rate as sent: after `lead_silence` seconds of digital silence."""
    lead = np.zeros(round(lead_silence * SAMPLE_RATE), np.float32)
    return np.concatenate([lead, render(clip)]), SAMPLE_RATE


def ask(
    client: AudioTextClient,
    held: Sequence[cases.Case],
    concurrency: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    lead_silence: float = 0.0,
) -> list[str]:
    """The server's greedy answers to `held`, in order (an error's text in its slot), each
    clip heard after `lead_silence` seconds of silence."""
    requests = [{"audio": heard(c.clip, lead_silence), "text": c.instruction} for c in held]
    results = client.generate_batch(
        requests,
        concurrency=concurrency,
        progress=False,
        max_new_tokens=max_new_tokens,
        do_sample=False,
    )
    return [r["generated_text"] if isinstance(r, dict) else f"<error: {r}>" for r in results]


def ask_follow_ups(
    client: AudioTextClient,
    dialogues: Sequence[cases.Dialogue],
    concurrency: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    replies: Sequence[str] | None = None,
    lead_silence: float = 0.0,
) -> list[str]:
    """The server's greedy answers to each dialogue's follow-up (an error's text in its
    slot), asked as the second turn of a chat after the spoken opener and a first reply:
    the opener's right answer, or the dialogue's entry of `replies`; each turn heard after
    `lead_silence` seconds of silence."""
    replies = replies or [d.opener.answer for d in dialogues]
    if len(replies) != len(dialogues):
        raise ValueError(f"{len(replies)} replies for {len(dialogues)} dialogues")

    def spoken(clip: cases.Clip) -> dict[str, Any]:
        audio = heard(clip, lead_silence)
        return {"role": "user", "content": [{"type": "audio", "audio": audio}]}

    def one(dialogue: cases.Dialogue, reply: str) -> str:
        messages = [
            spoken(dialogue.opener.clip),
            {"role": "assistant", "content": reply},
            spoken(dialogue.follow_up),
        ]
        try:
            answer = client.chat(messages, max_new_tokens=max_new_tokens, do_sample=False)
        except AudioTextError as e:
            return f"<error: {e}>"
        return answer.generated_text

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, dialogues, replies))


def score(held: Sequence[cases.Case], answers: Sequence[str]) -> dict[str, float]:
    """WER over transcription cases, exact-match accuracy over the other types."""
    errors = words = 0
    right: dict[str, list[bool]] = {}
    for case, answer in zip(held, answers, strict=True):
        if case.kind == "transcribe":
            reference = cases.normalize(case.answer)
            errors += edit_distance(reference, cases.normalize(answer))
            words += len(reference)
        else:
            same = cases.normalize(answer) == cases.normalize(case.answer)
            right.setdefault(case.kind, []).append(same)
    out = {"wer": errors / max(words, 1)}
    out.update({kind: sum(v) / len(v) for kind, v in sorted(right.items())})
    return {k: round(v, 3) for k, v in out.items()}


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """Word-level Levenshtein distance."""
    row = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


def words_in_order(reference: Sequence[str], hypothesis: Sequence[str]) -> float:
    """Share of the reference's words that come back in order (longest common subsequence)."""
    row = [0] * (len(hypothesis) + 1)
    for r in reference:
        previous = 0
        for j, h in enumerate(hypothesis, 1):
            previous, row[j] = row[j], previous + 1 if r == h else max(row[j], row[j - 1])
    return row[-1] / max(len(reference), 1)


def score_server(
    base_url: str,
    count: int,
    seed: int,
    model: str | None = None,
    api_key: str | None = None,
    concurrency: int = 8,
    lead_silence: float = 0.0,
) -> dict[str, Any]:
    """Speak `count` fresh held-out cases, ask the server, score its answers; and as many
    two-turn voice chats as there are cases of one type (`follow_up`: the second turn's
    accuracy). Every clip is heard after `lead_silence` seconds of silence."""
    held = cases.cases("held_out", count, seed)
    dialogues = cases.dialogues("held_out", max(1, count // len(cases.KINDS)), seed)
    with AudioTextClient(base_url=base_url, model=model, api_key=api_key) as client:
        answers = ask(client, held, concurrency, lead_silence=lead_silence)
        follow_ups = ask_follow_ups(client, dialogues, concurrency, lead_silence=lead_silence)
    asked = [*held, *(d.case for d in dialogues)]
    public = [*(c.as_json() for c in held), *(d.as_json() for d in dialogues)]
    answers += follow_ups
    misses = [
        {**shown, "got": a}
        for c, shown, a in zip(asked, public, answers, strict=True)
        if cases.normalize(a) != cases.normalize(c.answer)
    ]
    scores = score(asked, answers)
    return {"cases": len(held), "dialogues": len(dialogues), "seed": seed,
            "lead_silence": lead_silence, "scores": scores, "misses": misses}  # fmt: skip
