"""The client commands of `audiotext`: ask, transcribe, translate, models, health.

audiotext ask AUDIO|- [TEXT] [--stream] [--json]
audiotext ask --batch FILE.jsonl|DIR [TEXT] --output results.jsonl [--resume]
audiotext transcribe AUDIO|- [--language en] [--format json|text|verbose_json|srt|vtt]
audiotext models | health [--base-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from audiotext.client._exceptions import APIConnectionError, AudioTextError

# Exit codes: 1 a request failed, 2 the command line cannot run, 128 + N stopped by signal N.
FAILED, USAGE = 1, 2


class CommandError(Exception):
    """A command that cannot run as given; `audiotext` prints it in one line, exit code 2."""


def run(command: str, args: argparse.Namespace) -> int:
    """Run a client command; errors a user can act on are printed in one line."""
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "ask": ask,
        "transcribe": lambda a: transcribe(a, "transcribe"),
        "translate": lambda a: transcribe(a, "translate"),
        "models": models,
        "health": health,
    }
    try:
        return commands[command](args)
    except CommandError as e:
        print(f"audiotext {command}: error: {e}", file=sys.stderr)
        return USAGE
    except APIConnectionError as e:
        print(f"audiotext {command}: error: {unreachable(e)}", file=sys.stderr)
        return FAILED
    except AudioTextError as e:
        print(f"audiotext {command}: error: {e}", file=sys.stderr)
        return FAILED


def unreachable(error: APIConnectionError) -> str:
    return (
        f"cannot reach the server at {error.url} ({error.reason}). Is it running "
        "(audiotext serve)? Give its address with --base-url URL or AUDIOTEXT_BASE_URL"
    )


def _client(args: argparse.Namespace, *, asynchronous: bool = False) -> Any:
    from audiotext.client import AsyncAudioTextClient, AudioTextClient

    api_key = args.api_key
    if getattr(args, "api_key_file", None) is not None:
        try:
            api_key = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise CommandError(f"cannot read --api-key-file {args.api_key_file}: {e}") from e
    cls = AsyncAudioTextClient if asynchronous else AudioTextClient
    return cls(
        base_url=args.base_url,
        api_key=api_key,
        model=getattr(args, "model", None),
        timeout=args.timeout,
        normalize=not getattr(args, "no_normalize", False),
        system_prompt=getattr(args, "system", None),
    )


def _audio(source: str) -> Any:
    """The audio argument: `-` reads stdin; a folder is a mistake worth naming."""
    if source == "-":
        if sys.stdin.isatty():
            raise CommandError("AUDIO is - (stdin), but stdin is a terminal: pipe a file in")
        data = sys.stdin.buffer.read()
        if not data:
            raise CommandError("AUDIO is - (stdin), but stdin was empty")
        return data
    if Path(source).is_dir():
        raise CommandError(
            f"{source} is a folder; to ask about every audio file in it: "
            f"audiotext ask --batch {source} [TEXT] --output results.jsonl"
        )
    return source


def _params(args: argparse.Namespace) -> dict[str, Any]:
    params = {
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": args.stop,
    }
    return {k: v for k, v in params.items() if v is not None}


def ask(args: argparse.Namespace) -> int:
    if args.batch is not None:
        return batch(args)
    if args.audio is None:
        raise CommandError("give an AUDIO file (- for stdin) or URL, or --batch")
    if args.output or args.resume:
        raise CommandError("--output and --resume go with --batch")
    request = {"audio": _audio(args.audio), "text": args.text}
    params = _params(args)
    with _client(args) as client:
        if args.stream:
            for delta in client.stream(request, **params):
                print(delta, end="", flush=True)
            print()
        elif args.json:
            result = client.generate_result(request, **params)
            print(json.dumps(asdict(result), ensure_ascii=False))
        else:
            print(client.generate(request, **params)["generated_text"])
    return 0


def batch(args: argparse.Namespace) -> int:
    """`ask --batch`: see `_batch`. Interrupted, it says how much is written and exits 130."""
    from audiotext.client import _batch

    # With --batch the first positional, if any, is the instruction.
    text = args.text if args.text is not None else args.audio
    items = _batch.read_batch(args.batch, text, _params(args))
    done: set[int] = set()
    output: Path | None = args.output
    if output is None:
        if args.resume:
            raise CommandError("--resume needs --output: the file to resume")
    elif args.resume:
        done = _batch.answered_in(output, items)
        print(f"resuming: {len(done)} of {len(items)} already in {output}", file=sys.stderr)
    elif output.exists() and output.stat().st_size and not args.overwrite:
        raise CommandError(
            f"{output} already holds results: --resume to finish that batch, or "
            "--overwrite to start again"
        )
    todo = [item for item in items if item.index not in done]
    out: TextIO = (
        output.open("a" if args.resume else "w", encoding="utf-8") if output else sys.stdout
    )
    writer = _batch.OrderedWriter(out, written=len(done))
    where = str(output) if output else "stdout"
    try:
        stopped = asyncio.run(_run_batch(args, todo, writer, len(items)))
    except KeyboardInterrupt:
        stopped = signal.SIGINT
    finally:
        if out is not sys.stdout:
            out.close()
    if stopped is not None:
        hint = "; run it again with --resume to finish" if output else ""
        print(f"interrupted: {writer.written} of {len(items)} written to {where}{hint}",
              file=sys.stderr)  # fmt: skip
        return 128 + stopped
    answered = writer.written - writer.failed
    print(f"{answered} answered, {writer.failed} failed, written to {where}", file=sys.stderr)
    return FAILED if writer.failed else 0


async def _run_batch(
    args: argparse.Namespace, todo: list[Any], writer: Any, total: int
) -> signal.Signals | None:
    """Run the batch; on SIGTERM (SIGINT: asyncio's own handler) cancel it and say which."""
    from audiotext.client import _batch

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    stopped: list[signal.Signals] = []

    def stop(sig: signal.Signals) -> None:
        stopped.append(sig)
        main.cancel()

    loop.add_signal_handler(signal.SIGTERM, stop, signal.SIGTERM)
    try:
        async with _client(args, asynchronous=True) as client:
            await _batch.run_batch(
                client.generate,
                todo,
                writer,
                concurrency=args.concurrency,
                progress=True,
                total=total,
            )
    except asyncio.CancelledError:
        if not stopped:
            raise  # SIGINT: asyncio.run turns it into KeyboardInterrupt
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
    return stopped[0] if stopped else None


def transcribe(args: argparse.Namespace, task: str) -> int:
    audio = _audio(args.audio)
    with _client(args) as client:
        method = client.transcribe if task == "transcribe" else client.translate
        result = method(
            audio,
            language=args.language,
            prompt=args.prompt,
            response_format=args.format,
            temperature=args.temperature,
        )
    if isinstance(result, str):
        print(result.rstrip("\n"))
    else:
        print(json.dumps(asdict(result), ensure_ascii=False))
    return 0


def models(args: argparse.Namespace) -> int:
    import openai

    from audiotext.client._exceptions import from_openai

    with _client(args) as client:
        try:
            listed = client.openai.models.list()
        except openai.OpenAIError as e:
            raise from_openai(e, client.base_url) from e
    if args.json:
        print(json.dumps([m.model_dump() for m in listed.data], ensure_ascii=False))
    else:
        for model in listed.data:
            print(model.id)
    return 0


def health(args: argparse.Namespace) -> int:
    """GET /health: exit 0 when the server answers 200, 1 otherwise."""
    import httpx

    from audiotext.client._core import default_base_url
    from audiotext.client._exceptions import connection_failure

    base_url = (args.base_url or default_base_url(os.environ)).rstrip("/")
    url = base_url.removesuffix("/v1") + "/health"
    try:
        reply = httpx.get(url, timeout=min(args.timeout, 10.0))
    except httpx.HTTPError as e:
        raise APIConnectionError(str(e), url=base_url, reason=connection_failure(e)) from e
    if reply.status_code == 200:
        print(f"ok: {url}")
        return 0
    print(f"unhealthy: {url} answered {reply.status_code} {reply.text.strip()[:200]}")
    return FAILED
