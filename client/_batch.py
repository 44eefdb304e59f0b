"""`audiotext ask --batch`: a batch that never loses a finished answer.

Requests run `concurrency` at a time; results are written in input order, one JSON line
each, and each line is flushed as soon as it and every line before it are done. An
interrupted run (Ctrl-C, SIGTERM) cancels what is in flight and keeps every line
written; `--resume` reads the output back and sends only what it lacks.

A line of the output is `{"index", "audio", "generated_text"}` or `{"index", "audio",
"error": {"type", "message"}}`; `index` is the request's place in the batch.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from audiotext.client._client import _progress
from audiotext.client._exceptions import AudioTextError, InvalidRequestError
from audiotext.client.task import canonical_params, parse_task

AUDIO_SUFFIXES = frozenset(
    {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".mp4", ".aac", ".webm"}
)


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch and how the output names it."""

    index: int
    request: dict[str, Any]
    audio: str


def read_batch(
    source: Path, text: str | None, defaults: Mapping[str, Any] | None = None
) -> list[BatchItem]:
    """A folder (every audio file in it, in name order) or a JSONL file of task requests.

    Args:
        source: the folder or the JSONL file; relative paths in it are relative to it.
        text: the instruction for lines (or files) that have none.
        defaults: generation parameters for every request; a line's own `parameters`
            win over them.
    """
    defaults = canonical_params(defaults or {})
    if source.is_dir():
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
        if not files:
            raise InvalidRequestError(
                f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {source}"
            )
        lines: list[tuple[int, dict[str, Any]]] = [
            (n, {"audio": str(p)}) for n, p in enumerate(files, 1)
        ]
        base = None
    elif source.is_file():
        lines, base = list(_jsonl(source)), source.parent
    else:
        raise InvalidRequestError(f"batch file or folder not found: {source}")
    items: list[BatchItem] = []
    for number, line in lines:
        request = dict(line)
        if "inputs" not in request:
            request.setdefault("text", text)
        parameters = request.get("parameters", {})
        if not isinstance(parameters, Mapping):
            raise InvalidRequestError(f"{source}:{number}: 'parameters' must be an object")
        request["parameters"] = {**defaults, **canonical_params(parameters)}
        try:
            inputs = parse_task(request).task_inputs()
        except InvalidRequestError as e:
            raise InvalidRequestError(f"{source}:{number}: {e}") from None
        audio = inputs.audio if base is None else _relative_to(base, inputs.audio)
        if "inputs" in request:
            request["inputs"] = {**request["inputs"], "audio": audio}
        else:
            request["audio"] = audio
        shown = audio if isinstance(audio, str) else json.dumps(audio)
        items.append(BatchItem(index=len(items), request=request, audio=shown))
    return items


def _jsonl(source: Path) -> Any:
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidRequestError(f"{source}:{number}: not JSON ({e.msg})") from None
        if not isinstance(item, dict):
            raise InvalidRequestError(f"{source}:{number}: each line is a JSON object")
        yield number, item


def _relative_to(base: Path, audio: Any) -> Any:
    """Local paths of a JSONL file's line, relative to the file's folder."""
    if isinstance(audio, list):
        return [_relative_to(base, a) for a in audio]
    if isinstance(audio, str) and "://" not in audio and not audio.startswith("data:"):
        path = Path(audio).expanduser()
        return str(path if path.is_absolute() else (base / path).resolve())
    return audio


def answered_in(output: Path, items: Sequence[BatchItem]) -> set[int]:
    """The batch items `output` already answers; it is rewritten to hold only those.

    Lines with an error, a cut-off last line (a run killed mid-write) and lines of
    another batch are dropped, so that their requests run again.
    """
    if not output.exists():
        return set()
    kept: list[str] = []
    done: set[int] = set()
    for line in output.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        index = record.get("index") if isinstance(record, dict) else None
        if not isinstance(index, int) or not 0 <= index < len(items):
            continue
        if record.get("audio") != items[index].audio:
            raise InvalidRequestError(
                f"{output} line {len(kept) + 1} is for {record.get('audio')!r}, but item "
                f"{index} of this batch is {items[index].audio!r}: it holds another batch's "
                "results; write to a new --output"
            )
        if "generated_text" in record and index not in done:
            done.add(index)
            kept.append(line)
    _replace(output, kept)
    return done


def _replace(path: Path, lines: Sequence[str]) -> None:
    """Rewrite `path` atomically: a crash leaves the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)
    os.replace(tmp, path)


class OrderedWriter:
    """Writes results as JSON lines in batch order, flushing each as soon as it can."""

    def __init__(self, out: IO[str], written: int = 0) -> None:
        self.out = out
        self.written = written
        self.failed = 0

    def write(self, item: BatchItem, result: dict[str, Any] | AudioTextError) -> None:
        record: dict[str, Any] = {"index": item.index, "audio": item.audio}
        if isinstance(result, AudioTextError):
            self.failed += 1
            record["error"] = {"type": type(result).__name__, "message": str(result)}
        else:
            record.update(result)
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()
        self.written += 1


Generate = Callable[[Mapping[str, Any]], Any]


async def run_batch(
    generate: Generate,
    items: Sequence[BatchItem],
    writer: OrderedWriter,
    *,
    concurrency: int,
    progress: bool,
    total: int | None = None,
) -> None:
    """Send `items` through `generate` (an async client's `generate`) and write each result
    in order. Cancelled (Ctrl-C), it cancels the requests in flight and writes every
    answer that had come in.
    """
    gate = asyncio.Semaphore(max(1, concurrency))
    total = len(items) if total is None else total
    with _progress(total, progress, initial=total - len(items)) as bar:

        async def one(item: BatchItem) -> dict[str, Any] | AudioTextError:
            async with gate:
                try:
                    result: dict[str, Any] | AudioTextError = dict(await generate(item.request))
                except AudioTextError as e:
                    result = e
            bar.update(1)
            return result

        tasks = [asyncio.create_task(one(item)) for item in items]
        written = 0
        try:
            for item, task in zip(items, tasks, strict=True):
                writer.write(item, await task)
                written += 1
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # Interrupted: answers that came in behind one still in flight are kept too,
            # out of order (each line carries its index).
            for item, task in zip(items[written:], tasks[written:], strict=True):
                if not task.cancelled() and task.exception() is None:
                    writer.write(item, task.result())
