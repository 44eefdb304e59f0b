"""API-process CPU per request: what the server's frontend spends besides the engine.

    python -m audiotext.benchmarks.frontend [--size tiny] [--requests 192] [--concurrency 32]

Starts `audiotext serve` on a built-in checkpoint, sends short clips (2-10 s, as the
benchmark's `short` workload, 16 kHz WAV as the client SDK sends them) through the chat
endpoint, and reads the CPU time of the API server process (vLLM's process behind
`audiotext serve`: with one API server, vLLM serves HTTP in it) before and after. Prints
CPU milliseconds per request as JSON. The engine runs in other processes and is not
counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform

import psutil

from audiotext.benchmarks.loadgen import Target, run_load
from audiotext.benchmarks.workloads import WORKLOADS, make_items
from audiotext.server.config import ServerConfig
from audiotext.server.launcher import ServerProcess, free_port


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", default="tiny", help="built-in checkpoint")
    parser.add_argument("--requests", type=int, default=192)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output-tokens", type=int, default=32)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main(args: argparse.Namespace) -> dict[str, object]:
    workload = WORKLOADS["short"]
    warm = make_items(workload, 8, output_tokens=args.output_tokens, seed=1)
    items = make_items(workload, args.requests, output_tokens=args.output_tokens, seed=2)
    config = ServerConfig(model=args.size, port=free_port())
    with ServerProcess(config) as server:
        assert server.proc is not None
        api = psutil.Process(server.api_server_pid)
        target = Target(base_url=server.base_url, model=args.size)
        asyncio.run(run_load(target, warm, concurrency=args.concurrency, progress=False))
        before = cpu_seconds(api)
        records, wall = asyncio.run(run_load(target, items, concurrency=args.concurrency))
        used = cpu_seconds(api) - before
    errors = sum(1 for r in records if r.error)
    result: dict[str, object] = {
        "size": args.size,
        "requests": len(records),
        "errors": errors,
        "concurrency": args.concurrency,
        "wall_s": round(wall, 2),
        "api_cpu_s": round(used, 3),
        "api_cpu_ms_per_request": round(1000 * used / len(records), 2),
        "machine": f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} cores",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_cli_args(parser)
    main(parser.parse_args())
