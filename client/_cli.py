"""`audiotext ask`: one question from the shell, or a batch with a progress bar.

audiotext ask AUDIO [TEXT] [--stream] [--json]
audiotext ask --batch FILE.jsonl|DIR [TEXT] [--output results.jsonl]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from audiotext.client._constants import DEFAULT_CONCURRENCY

AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4", ".aac", ".webm"}
)


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="?", help="audio file, http(s) URL or data: URL")
    parser.add_argument("text", nargs="?", help="instruction, e.g. 'What does the person say?'")
    parser.add_argument("--batch", type=Path, help="JSONL of {audio, text} lines, or a folder")
    parser.add_argument("--output", type=Path, help="batch results (JSONL); default stdout")
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--stream", action="store_true", help="print the answer as it comes")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.add_argument("--base-url", help="server's OpenAI base URL [env AUDIOTEXT_BASE_URL]")
    parser.add_argument("--api-key", help="[env AUDIOTEXT_API_KEY]")
    parser.add_argument("--model", help="[env AUDIOTEXT_MODEL; default: the server's model]")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--temperature", type=float)
    parser.add_argument(
        "--no-normalize", action="store_true", help="send local audio as is (server decodes)"
    )


def main(args: argparse.Namespace) -> int:
    from audiotext.client import AudioTextClient

    client = AudioTextClient(
        base_url=args.base_url,
        api_key=args.api_key,
        model=args.model,
        normalize=not args.no_normalize,
        system_prompt=args.system,
    )
    params = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    with client:
        if args.batch is not None:
            return _batch(client, args, params)
        if args.audio is None:
            raise ValueError("give an AUDIO file or URL, or --batch")
        request = {"audio": args.audio, "text": args.text}
        if args.stream:
            for delta in client.stream(request, **params):
                print(delta, end="", flush=True)
            print()
        elif args.json:
            print(json.dumps(asdict(client.generate_result(request, **params)), ensure_ascii=False))
        else:
            print(client.generate(request, **params)["generated_text"])
    return 0


def _batch(client: Any, args: argparse.Namespace, params: dict[str, Any]) -> int:
    # With --batch the first positional, if any, is the instruction.
    text = args.text if args.text is not None else args.audio
    requests = _read_batch(args.batch, text)
    results = client.generate_batch(requests, concurrency=args.concurrency, **params)
    out: TextIO = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
    failed = 0
    try:
        for i, (request, result) in enumerate(zip(requests, results, strict=True)):
            record: dict[str, Any] = {"index": i, "audio": str(request["audio"])}
            if isinstance(result, Exception):
                failed += 1
                record["error"] = {"type": type(result).__name__, "message": str(result)}
            else:
                record.update(result)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"{len(results) - failed} answered, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


def _read_batch(source: Path, text: str | None) -> list[dict[str, Any]]:
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {source}")
        return [{"audio": str(p), "text": text} for p in files]
    if not source.is_file():
        raise ValueError(f"batch file not found: {source}")
    requests = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}:{number}: not JSON ({e.msg})") from None
        if not isinstance(item, dict) or "audio" not in item:
            raise ValueError(f"{source}:{number}: each line needs an 'audio' key")
        audio = item["audio"]
        if isinstance(audio, str) and "://" not in audio and not audio.startswith("data:"):
            item["audio"] = str((source.parent / audio).resolve())
        item.setdefault("text", text)
        requests.append(item)
    return requests
