"""Start-up: seconds from `audiotext serve` to `/health` 200, and where they go.

    python -m audiotext.benchmarks.startup [--size tiny] [--systems audiotext vllm] [--warm 2]

Per system, one cold start (empty compile caches: a fresh `VLLM_CACHE_ROOT` and
`TORCHINDUCTOR_CACHE_DIR` of its own) and `--warm` warm starts on the caches the cold one
filled; the systems take turns (cold, cold, warm, warm, ...) so that load on the machine
hits them alike. `vllm` is stock vLLM behind the same launcher (`--stock`: no plugins,
vLLM's own environment); `audiotext@DIR` is audiotext's server and client from the source
folder DIR (a checkout of another commit, e.g. `git worktree add DIR COMMIT`), to measure
a change side by side with what it changed; `audiotext:field=value,...` changes settings
as in `audiotext bench` (e.g. `audiotext:worker_process=true`, the flag `--worker-process`).
The server's output is read line by line as
it comes; each phase ends at the first line that marks it (`PHASES`), the last at
`/health` 200 (polled every 0.5 s). "Cold" means the compile caches only: Python's
bytecode and the OS page cache stay warm. Prints a table and writes the records as JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Any
from unittest import mock

from audiotext.benchmarks.bench import machine, versions
from audiotext.benchmarks.systems import VLLM_CPU_SERVER_DEFAULTS, SystemSpec
from audiotext.server import supervisor
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port

# (phase, the line that ends it): the phases of one start, in order.
PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # The supervisor and the API server process (`audiotext serve` imports vLLM's server).
    ("api_server_imports", re.compile("Starting vLLM:")),
    # vLLM reads the model's config and inspects its class: for a class registered lazily
    # (stock vLLM's own), in a subprocess that imports vLLM again when the cache misses.
    ("model_inspection", re.compile("Resolved architecture:")),
    # vLLM spawns the engine core process, which imports vLLM again.
    ("engine_process", re.compile("Initializing a V1 LLM engine")),
    # The engine sets up its worker: on CPU, by default in the engine process; with
    # `--worker-process` (and in stock vLLM) a process of its own, importing vLLM again.
    ("worker_process", supervisor.LOADING),
    ("weights", supervisor.LOADED),
    # torch.compile (or its cache), the encoder's profiling run and the warm-up pass.
    ("compile_and_warm_up", re.compile("Warming up done")),
    ("kv_cache", supervisor.ENGINE_READY),
)
READY_PHASE = "api_server_up"  # the engine is ready -> `/health` answers 200
AOT_LOAD_FAILURE = "Compiling model again due to a load failure"


@dataclass
class Start:
    system: str
    kind: str  # cold | warm
    ready_s: float
    phases: dict[str, float]
    aot_load_failed: bool


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="tiny", help="built-in checkpoint")
    parser.add_argument(
        "--systems", nargs="+", default=["audiotext", "vllm"], metavar="SYSTEM",
        help="audiotext, vllm, audiotext@DIR (the source folder DIR); "
        "audiotext:field=value,... changes a setting",
    )  # fmt: skip
    parser.add_argument("--warm", type=int, default=2, help="warm starts per system")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", type=Path, help="write the records and medians here (JSON)")
    parser.add_argument("--log-dir", type=Path, help="keep each start's server output here")


@dataclass(frozen=True)
class StartSystem:
    """One entry of `--systems`: `audiotext` or `vllm` as `audiotext bench` takes them
    (`audiotext:field=value,...`), and `audiotext@DIR` for DIR's server."""

    spec: SystemSpec
    source: Path | None  # audiotext@DIR: the source folder

    @classmethod
    def parse(cls, text: str) -> StartSystem:
        head, colon, changes = text.partition(":")
        kind, at, folder = head.partition("@")
        if kind not in ("audiotext", "vllm") or (at and kind != "audiotext"):
            raise SystemExit(f"unknown system {text!r} (audiotext, vllm, audiotext@DIR)")
        try:
            spec = SystemSpec.parse(kind + colon + changes)
        except ValueError as e:
            raise SystemExit(f"{text!r}: {e}") from None
        return cls(replace(spec, name=text), Path(folder).resolve() if at else None)


def source_path(system: StartSystem, tmp: Path) -> str | None:
    """For `audiotext@DIR`: a PYTHONPATH whose `audiotext` is DIR's server and client (and
    this benchmark), so the server started is DIR's; None for the installed one."""
    source = system.source
    if source is None:
        return None
    if not (source / "server" / "cli.py").is_file():
        raise SystemExit(f"{system.spec.name}: {source} is not an audiotext source folder")
    package = Path(tempfile.mkdtemp(prefix="source-", dir=tmp)) / "audiotext"
    package.mkdir()
    (package / "server").symlink_to(source / "server")
    (package / "client").symlink_to(source / "client")
    (package / "benchmarks").symlink_to(Path(__file__).resolve().parent)
    return os.pathsep.join(filter(None, [str(package.parent), os.environ.get("PYTHONPATH")]))


def server_config(system: StartSystem, size: str, dtype: str) -> ServerConfig:
    """audiotext's defaults, or stock vLLM's as `audiotext bench` runs it; then the
    system's own settings."""
    settings: dict[str, Any] = {"model": size, "dtype": dtype, "port": free_port()}
    if system.spec.kind == "vllm":
        settings |= {"stock": True, **VLLM_CPU_SERVER_DEFAULTS}
    return ServerConfig(**settings | system.spec.overrides)


def phases_of(lines: list[tuple[float, str]], ready_s: float) -> dict[str, float]:
    """Each phase's seconds from the times its end markers arrived; absent markers merge
    their phase into the next."""
    phases: dict[str, float] = {}
    previous = 0.0
    for name, marker in PHASES:
        at = next((t for t, line in lines if marker.search(line)), None)
        if at is not None and at >= previous:
            phases[name] = at - previous
            previous = at
    phases[READY_PHASE] = ready_s - previous
    return phases


def start_once(
    config: ServerConfig, caches: Path, log_path: Path | None, python_path: str | None = None
) -> tuple[float, list[tuple[float, str]]]:
    """Start the server with `caches` as its compile caches (and `python_path` as its
    PYTHONPATH); its ready time and its output's lines, timed."""
    read_fd, write_fd = os.pipe()
    lines: list[tuple[float, str]] = []
    log: IO[str] | None = log_path.open("w") if log_path else None
    t0 = time.perf_counter()

    def read() -> None:
        with os.fdopen(read_fd, "rb") as stream:
            for raw in stream:
                line = raw.decode(errors="replace")
                lines.append((time.perf_counter() - t0, line))
                if log:
                    log.write(f"{lines[-1][0]:8.2f} {line}")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    env = {
        "VLLM_CACHE_ROOT": str(caches / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(caches / "inductor"),
    }
    if python_path:
        env["PYTHONPATH"] = python_path
    with mock.patch.dict(os.environ, env), os.fdopen(write_fd, "wb") as writer:
        server = ServerProcess(config, log=writer)
        try:
            server.start()
            ready_s = time.perf_counter() - t0
        finally:
            writer.close()  # the server's processes hold their own ends
            server.stop()
    reader.join(timeout=30)
    if log:
        log.close()
    return ready_s, lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    systems = [StartSystem.parse(text) for text in args.systems]
    if args.log_dir:
        args.log_dir.mkdir(parents=True, exist_ok=True)
    starts: list[Start] = []
    with tempfile.TemporaryDirectory(prefix="audiotext-startup-") as tmp:
        sources = [source_path(system, Path(tmp)) for system in systems]
        for round_ in range(1 + args.warm):
            kind = "cold" if round_ == 0 else "warm"
            for n, system in enumerate(systems):
                config = server_config(system, args.size, args.dtype)
                label = f"{n}-{system.spec.kind}-{round_}"
                log_path = args.log_dir / f"{label}.log" if args.log_dir else None
                print(
                    f"{system.spec.name}: {kind} start" + (f" {round_}" if round_ else ""),
                    flush=True,
                )
                caches = Path(tmp) / f"caches-{n}"
                ready_s, lines = start_once(config, caches, log_path, sources[n])
                start = Start(
                    system.spec.name, kind, ready_s, phases_of(lines, ready_s),
                    any(AOT_LOAD_FAILURE in line for _, line in lines),
                )  # fmt: skip
                print(f"  ready in {ready_s:.1f} s: {_phases_text(start.phases)}", flush=True)
                starts.append(start)
    result = {
        "size": args.size,
        "dtype": args.dtype,
        "machine": machine(),
        "versions": versions(),
        "medians": medians(starts),
        "starts": [asdict(s) for s in starts],
    }
    print_table(result["medians"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["medians"]))
    return result


def medians(starts: list[Start]) -> dict[str, dict[str, Any]]:
    """Per `system kind`: the median ready time and phases, and whether AOT loads failed."""
    out: dict[str, dict[str, Any]] = {}
    for key in dict.fromkeys(f"{s.system} {s.kind}" for s in starts):
        group = [s for s in starts if f"{s.system} {s.kind}" == key]
        names = dict.fromkeys(n for s in group for n in s.phases)
        out[key] = {
            "starts": len(group),
            "ready_s": statistics.median(s.ready_s for s in group),
            "phases": {n: statistics.median(s.phases.get(n, 0.0) for s in group) for n in names},
            "aot_load_failed": any(s.aot_load_failed for s in group),
        }
    return out


def _phases_text(phases: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.1f}" for name, seconds in phases.items())


def print_table(rows: dict[str, dict[str, Any]]) -> None:
    names = [n for n, _ in PHASES] + [READY_PHASE]
    print("| start | ready | " + " | ".join(n.replace("_", " ") for n in names) + " |")
    print("| --- | ---: |" + " ---: |" * len(names))
    for key, row in rows.items():
        cells = [f"{row['phases'].get(n, 0.0):.1f}" for n in names]
        print(f"| {key} | {row['ready_s']:.1f} s | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_cli_args(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
