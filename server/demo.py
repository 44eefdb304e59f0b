"""`audiotext demo`: the task's example request to a real server on the listening checkpoint."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from audiotext.client import AudioTextClient
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import LaunchError, ServerProcess, free_port

logger = logging.getLogger(__name__)


def run_demo(audio: Path, text: str | None, model: str = "listening") -> dict[str, Any]:
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


def ask(base_url: str, model: str, audio: Path, text: str | None) -> dict[str, Any]:
    """The task request, through audiotext's client (greedy, short answer)."""
    with AudioTextClient(base_url=base_url, model=model) as client:
        return client.generate({"audio": audio, "text": text}, max_new_tokens=48, do_sample=False)
