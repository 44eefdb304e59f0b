"""The API server process's lifecycle: draining on shutdown, and engine death.

- Drain: vLLM begins every shutdown (SIGTERM or SIGINT, one API server or several) by
  shutting its engine client down, which shuts audiotext's renderer down first
  (`renderer.GuardedHfRenderer.on_shutdown`). The server then turns `/health` and new
  requests away with 503 and `Retry-After`, and waits up to `--drain-timeout-s` for the
  requests in flight to finish before vLLM stops the engine. vLLM alone would keep
  `/health` at 200 and, with several API servers, cut the requests in flight.
- Engine death: the engine client's public `errored` turning true while no shutdown was
  asked for. vLLM's single API server then returns normally; the launcher reads
  `engine_died` and exits 1, so that an orchestrator restarts the server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


class Lifecycle:
    """Whether this API server is draining, how many requests it is serving, and whether
    its engine died."""

    def __init__(self) -> None:
        self.draining = threading.Event()
        self.in_flight = 0
        self.engine_died = False

    def drain(self, timeout_s: float) -> None:
        """Refuse new requests and wait (blocking) until those in flight are done."""
        self.draining.set()
        deadline = time.monotonic() + timeout_s
        if self.in_flight:
            logger.info("draining: %d request(s) in flight", self.in_flight)
        while self.in_flight > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.in_flight:
            logger.warning("drain timeout: %d request(s) still in flight", self.in_flight)

    async def watch_engine(self, engine_client: Any) -> None:
        """Mark the engine dead when vLLM's engine client errs without a shutdown."""
        while not self.draining.is_set():
            if engine_client.errored:
                self.engine_died = True
                logger.error("the engine died; the server will exit with code 1")
                return
            await asyncio.sleep(WATCH_INTERVAL_S)


# This process's lifecycle: the endpoint plugin feeds it, the launcher reads it.
PROCESS = Lifecycle()
