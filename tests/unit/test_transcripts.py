"""Transcript formats: SubRip and WebVTT clocks and cues, verbose_json's shape."""

from __future__ import annotations

from audiotext.server import transcripts


def segments() -> list[transcripts.Segment]:
    return [
        transcripts.segment(0, 0.0, 29.87, "First window.", [1, 2], [-0.5, -1.5], 0.0),
        transcripts.segment(1, 29.87, 29.9, "", [], [], 0.0),
        transcripts.segment(2, 29.9, 3725.5, "Last one.", [3], [-0.25], 0.0),
    ]


def test_srt_numbers_cues_and_uses_comma_milliseconds() -> None:
    assert transcripts.srt(segments()) == (
        "1\n00:00:00,000 --> 00:00:29,870\nFirst window.\n\n"
        "2\n00:00:29,900 --> 01:02:05,500\nLast one.\n\n"
    )


def test_vtt_has_its_header_and_dot_milliseconds() -> None:
    assert transcripts.vtt(segments()) == (
        "WEBVTT\n\n"
        "00:00:00.000 --> 00:00:29.870\nFirst window.\n\n"
        "00:00:29.900 --> 01:02:05.500\nLast one.\n\n"
    )


def test_verbose_json_joins_text_and_keeps_every_segment() -> None:
    body = transcripts.verbose_json("transcribe", "en", 3725.5, segments())
    assert body["text"] == "First window. Last one."
    assert [s["id"] for s in body["segments"]] == [0, 1, 2]
    first = body["segments"][0]
    assert (first["start"], first["end"], first["seek"]) == (0.0, 29.87, 0)
    assert first["avg_logprob"] == -1.0 and first["tokens"] == [1, 2]
    assert body["segments"][1]["avg_logprob"] is None
    assert body["segments"][2]["seek"] == 2990
