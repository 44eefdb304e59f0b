"""The client commands' options (`audiotext ask`, `transcribe`, `translate`, `models`,
`health`), apart from the code that runs them, so the `audiotext` parser (every command,
`serve` included) is built without importing the OpenAI SDK."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from audiotext.client._constants import DEFAULT_CONCURRENCY, DEFAULT_TIMEOUT_S, RESPONSE_FORMATS


def _number(
    kind: type, low: float | None, high: float | None = None, *, open_low: bool = False
) -> Any:
    """An argparse type: a number in a range, with the range in the error."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        below = low is not None and (value <= low if open_low else value < low)
        if below or (high is not None and value > high):
            bounds = f"{'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high else "")
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def add_connection_args(parser: argparse.ArgumentParser) -> None:
    """Where the server is and how to talk to it (every client command)."""
    group = parser.add_argument_group("server")
    group.add_argument(
        "--base-url",
        help="the server's OpenAI base URL [env AUDIOTEXT_BASE_URL, else "
        "http://$AUDIOTEXT_HOST:$AUDIOTEXT_PORT/v1 as `audiotext serve` reads them; "
        "default http://localhost:8000/v1]",
    )
    group.add_argument(
        "--api-key",
        help="bearer token. Visible to other users of this machine in `ps`: prefer "
        "AUDIOTEXT_API_KEY or --api-key-file [env AUDIOTEXT_API_KEY]",
    )
    group.add_argument("--api-key-file", type=Path, help="read the bearer token from this file")
    group.add_argument(
        "--timeout",
        type=_number(float, 0, open_low=True),
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per request (default {DEFAULT_TIMEOUT_S:g})",
    )


def add_ask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="?", help="audio file, - for stdin, http(s) or data: URL")
    parser.add_argument("text", nargs="?", help="instruction, e.g. 'What does the person say?'")
    parser.add_argument("--stream", action="store_true", help="print the answer as it comes")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument(
        "--no-normalize", action="store_true", help="send local audio as is (server decodes)"
    )
    parser.add_argument("--model", help="[env AUDIOTEXT_MODEL; default: the server's model]")
    batch = parser.add_argument_group("batch")
    batch.add_argument("--batch", type=Path, help="JSONL of task requests, or a folder of audio")
    batch.add_argument("--output", type=Path, help="results (JSONL), written as they complete")
    batch.add_argument("--resume", action="store_true", help="skip what --output already holds")
    batch.add_argument(
        "--overwrite", action="store_true", help="replace an --output that holds results"
    )
    batch.add_argument(
        "--concurrency", type=_number(int, 1), default=DEFAULT_CONCURRENCY, help="in flight"
    )
    sampling = parser.add_argument_group("generation")
    sampling.add_argument(
        "--max-new-tokens", "--max-tokens", dest="max_new_tokens", type=_number(int, 1)
    )
    sampling.add_argument("--temperature", type=_number(float, 0), help="0 is greedy")
    sampling.add_argument("--top-p", type=_number(float, 0, 1, open_low=True))
    sampling.add_argument("--seed", type=int)
    sampling.add_argument(
        "--stop", action="append", metavar="TEXT", help="stop at this text (repeatable)"
    )
    add_connection_args(parser)


def add_transcribe_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", help="audio file, - for stdin, or an http(s) URL")
    parser.add_argument("--language", help="language of the speech, e.g. en")
    parser.add_argument("--prompt", help="context: earlier text, names, spelling")
    parser.add_argument("--format", choices=RESPONSE_FORMATS, default="text", help="default text")
    parser.add_argument("--temperature", type=_number(float, 0), default=0.0)
    parser.add_argument("--model", help="[env AUDIOTEXT_MODEL; default: the server's model]")
    parser.add_argument(
        "--no-normalize", action="store_true", help="send local audio as is (server decodes)"
    )
    add_connection_args(parser)


def add_models_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the server's list as JSON")
    add_connection_args(parser)


def add_health_args(parser: argparse.ArgumentParser) -> None:
    add_connection_args(parser)
