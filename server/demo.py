"""`audiotext demo`: the task's example request against a real server on the tiny checkpoint."""

from __future__ import annotations

import base64
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import openai
import soundfile
from openai.types.chat import ChatCompletionContentPartParam

from audiotext.server.config import ServerConfig
from audiotext.server.launcher import LaunchError, ServerProcess, free_port

logger = logging.getLogger(__name__)


def run_demo(audio: Path, text: str | None, model: str = "tiny") -> dict[str, str]:
    """Start a server, send `{"audio": audio, "text": text}`, stop it; return the answer."""
    if not audio.is_file():
        raise ValueError(f"audio file not found: {audio}")
    config = ServerConfig(model=model, port=free_port())
    with tempfile.NamedTemporaryFile(prefix="audiotext-demo-", suffix=".log") as log:
        print(f"Starting the server on {config.base_url} (about a minute) ...", file=sys.stderr)
        started = time.monotonic()
        try:
            with ServerProcess(config, log=log) as server:
                print(f"Ready in {time.monotonic() - started:.0f} s.", file=sys.stderr)
                return ask(server.base_url, model, audio, text)
        except LaunchError:
            log.flush()
            tail = Path(log.name).read_text(errors="replace").splitlines()[-30:]
            print("\n".join(tail), file=sys.stderr)
            raise


def ask(base_url: str, model: str, audio: Path, text: str | None) -> dict[str, str]:
    """One task request as OpenAI audio chat: audio (as WAV) first, then the instruction."""
    samples, rate = soundfile.read(audio, dtype="int16")
    wav = io.BytesIO()
    soundfile.write(wav, samples, rate, format="WAV", subtype="PCM_16")
    data = base64.b64encode(wav.getvalue()).decode("ascii")
    content: list[ChatCompletionContentPartParam] = [
        {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}
    ]
    if text:
        content.append({"type": "text", "text": text})
    client = openai.OpenAI(base_url=base_url, api_key="EMPTY")
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": content}],
        max_tokens=48,
        temperature=0.0,
    )
    return {"generated_text": response.choices[0].message.content or ""}
