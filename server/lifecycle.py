"""Shutdown state shared by the launcher and the guards: set on SIGTERM/SIGINT.

vLLM drains in-flight requests on SIGTERM (`--shutdown-timeout`) but keeps answering
`/health` 200 and lets new requests fail with 500 meanwhile. The launcher runs vLLM on an
event loop that also sets `DRAINING` when vLLM's own signal handler fires; the guards
then answer `/health` and new requests 503 with `Retry-After`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

DRAINING = threading.Event()


def drain_aware_loop() -> Any:
    """A uvloop loop whose SIGTERM/SIGINT handlers first mark the server as draining."""
    import uvloop

    class DrainAwareLoop(uvloop.Loop):
        def add_signal_handler(  # type: ignore[override]
            self, sig: int, callback: Callable[..., Any], *args: Any
        ) -> None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                inner = callback

                def callback(*cb_args: Any) -> None:
                    DRAINING.set()
                    inner(*cb_args)

            super().add_signal_handler(sig, callback, *args)

    return DrainAwareLoop()
