"""The systems a benchmark compares, each started and stopped by the harness.

- `audiotext`: `audiotext serve` with its defaults (plus any overrides being tuned);
- `vllm`: stock vLLM's OpenAI server with vLLM's own defaults, given only what it needs
  to start here (KV-cache size on CPU, a chat template that places audio);
- `transformers-serve`: `transformers serve` with the checkpoint preloaded;
- `raw`: the seed's loop, transformers processor + `generate`, one request at a time;
- `offline`: vLLM's `LLM.generate` with every request at once, on audiotext's engine
  configuration: the upper bound for any server on this engine.

Servers are loaded over HTTP by `loadgen`; the two in-process systems run in a child
process (`python -m audiotext.benchmarks.inprocess`) so their threads and memory are
their own, and return the same per-request records.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import IO, Any, Literal

import httpx
import numpy as np

from audiotext.benchmarks.loadgen import Record, Target, WorkItem, run_load
from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig, to_vllm
from audiotext.server.launcher import ServerProcess, free_port

KINDS = ("audiotext", "vllm", "transformers-serve", "raw", "offline")
# vLLM 0.32's own defaults for its OpenAI server on CPU where audiotext's differ: batching
# budgets (EngineArgs, UsageContext) and model threads on all cores but one.
VLLM_CPU_SERVER_DEFAULTS = {
    "max_num_seqs": 128,
    "max_num_batched_tokens": 2048,
    "cpu_cores": "auto",
}


@dataclass(frozen=True)
class Point:
    """One load level: `closed` (concurrency), `open` (Poisson rate, req/s),
    `sequential` (one at a time, in-process) or `offline` (all at once)."""

    mode: Literal["closed", "open", "sequential", "offline"]
    value: float = 0.0
    endpoint: Literal["chat", "task"] = "chat"

    @property
    def label(self) -> str:
        if self.mode == "closed":
            label = f"c={self.value:g}"
        elif self.mode == "open":
            label = f"rate={self.value:g}/s"
        else:
            label = self.mode
        return label if self.endpoint == "chat" else f"{label} task"


@dataclass
class Result:
    """A point's records and wall time, and for vLLM servers the engine's own timings."""

    workload: str
    point: Point
    records: list[Record]
    wall_s: float
    engine: dict[str, float] | None = None


# vLLM's per-request histograms (`/metrics`): waiting to be scheduled, prefill, decode.
ENGINE_PHASES = ("queue", "prefill", "decode")


# vLLM's histogram of tokens per engine step: `steps_le_N` counts steps of at most N tokens.
STEP_TOKENS = "vllm:iteration_tokens_total"


def engine_totals(base_url: str) -> dict[str, float]:
    """Sum and count of each phase's histogram on a vLLM server, since it started, and the
    cumulative step counts of its tokens-per-step histogram (`steps_le_N`)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(base_url.removesuffix("/v1") + "/metrics", timeout=10).text
    totals: dict[str, float] = {}
    phases = {f"vllm:request_{phase}_time_seconds": phase for phase in ENGINE_PHASES}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = None
            if family.name == STEP_TOKENS and sample.name.endswith("_bucket"):
                key = f"steps_le_{float(sample.labels['le']):g}"
            elif family.name in phases and sample.name.endswith(("_sum", "_count")):
                key = phases[family.name] + sample.name[sample.name.rindex("_") :]
            if key is not None:
                totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def engine_means(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Mean seconds per request in each phase between two `engine_totals`, and the step
    counts of the tokens-per-step histogram in between (`steps_le_N`, cumulative)."""
    means = {}
    for phase in ENGINE_PHASES:
        count = after.get(f"{phase}_count", 0.0) - before.get(f"{phase}_count", 0.0)
        if count:
            total = after.get(f"{phase}_sum", 0.0) - before.get(f"{phase}_sum", 0.0)
            means[f"{phase}_s"] = total / count
    for key, value in after.items():
        if key.startswith("steps_le_"):
            means[key] = value - before.get(key, 0.0)
    return means


@dataclass(frozen=True)
class SystemSpec:
    """A system to run: its kind, a display name and, for audiotext, flag overrides."""

    kind: str
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> SystemSpec:
        """`kind` or `kind:field=value,field=value` (audiotext's ServerConfig fields)."""
        kind, _, rest = text.partition(":")
        if kind not in KINDS:
            raise ValueError(f"unknown system {kind!r}; choose from {', '.join(KINDS)}")
        overrides: dict[str, Any] = {}
        if rest:
            if kind != "audiotext":
                raise ValueError(f"{kind} takes no overrides")
            known = {f.name: f for f in fields(ServerConfig)}
            for pair in rest.split(","):
                key, _, value = pair.partition("=")
                key = key.replace("-", "_")
                if key not in known:
                    raise ValueError(f"{key!r} is not an audiotext setting")
                overrides[key] = _value(value)
        return cls(kind, text, overrides)


def _value(text: str) -> Any:
    """`16` -> 16, `true` -> True, `[1, 2]` -> [1, 2], anything else stays a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class System:
    """Runs workloads at load points; started on enter, stopped on exit."""

    def __init__(self, spec: SystemSpec, *, size: str, dtype: str, log_dir: Path) -> None:
        self.spec = spec
        self.size = size
        self.dtype = dtype
        self.log_dir = log_dir
        self.started_in_s = 0.0
        self.invocation: dict[str, Any] = {}

    @property
    def effective_dtype(self) -> str:
        """The dtype this system computes in: `auto` as this system resolves it."""
        if self.dtype != "auto":
            return self.dtype
        saved = checkpoint_dtype(self.size)
        if self.spec.kind in ("raw", "transformers-serve"):
            return saved  # transformers' auto: the checkpoint's
        ours = ServerConfig(model=self.size, stock=self.spec.kind == "vllm").resolved_dtype
        if ours != "auto":
            return ours
        return "bfloat16" if saved == "float32" else saved  # vLLM's auto on CPU

    def __enter__(self) -> System:
        start = time.perf_counter()
        self.start()
        self.started_in_s = time.perf_counter() - start
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def points(self, requested: Sequence[Point]) -> list[Point]:
        """The load points this system can run out of the requested ones."""
        return [p for p in requested if p.mode in ("closed", "open") and p.endpoint == "chat"]

    def run(
        self, workloads: dict[str, list[WorkItem]], plan: list[tuple[str, Point]]
    ) -> list[Result]:
        raise NotImplementedError


class ServerSystem(System):
    """An OpenAI-compatible server child process, loaded by `loadgen`."""

    target: Target

    def warm_up(self, items: list[WorkItem]) -> None:
        records, _ = asyncio.run(run_load(self.target, items, concurrency=4, progress=False))
        errors = [r.error for r in records if r.error]
        if errors:
            raise RuntimeError(f"{self.spec.name}: warm-up failed: {errors[0]}")

    def run(
        self, workloads: dict[str, list[WorkItem]], plan: list[tuple[str, Point]]
    ) -> list[Result]:
        results = []
        for workload, point in plan:
            target = replace(self.target, endpoint=point.endpoint)
            load = (
                {"concurrency": int(point.value)}
                if point.mode == "closed"
                else {"rate": point.value}
            )
            before = self.engine_totals()
            records, wall = asyncio.run(run_load(target, workloads[workload], **load))
            after = self.engine_totals()
            engine = engine_means(before, after) if before is not None and after else None
            results.append(Result(workload, point, records, wall, engine))
        return results

    def engine_totals(self) -> dict[str, float] | None:
        return None


class VllmServer(ServerSystem):
    """`audiotext serve`, or with `stock` stock vLLM behind the same launcher."""

    def __init__(self, spec: SystemSpec, *, stock: bool, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        settings: dict[str, Any] = {"model": self.size, "dtype": self.dtype, "port": free_port()}
        settings |= {"stock": True, **VLLM_CPU_SERVER_DEFAULTS} if stock else spec.overrides
        self.config = ServerConfig(**settings)
        self.target = Target(self.config.base_url, self.size)
        self.invocation = {"vllm_argv": list(to_vllm(self.config).argv), "stock": stock}
        self.server: ServerProcess | None = None
        self.log: IO[bytes] | None = None

    def points(self, requested: Sequence[Point]) -> list[Point]:
        if self.config.stock:
            return super().points(requested)
        return [p for p in requested if p.mode in ("closed", "open")]

    def engine_totals(self) -> dict[str, float] | None:
        return engine_totals(self.target.base_url)

    def start(self) -> None:
        self.log = open(self.log_dir / f"{self.spec.name.replace('/', '_')}.log", "wb")  # noqa: SIM115
        self.server = ServerProcess(self.config, log=self.log)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.log is not None:
            self.log.close()


class TransformersServe(ServerSystem):
    """`transformers serve` with the checkpoint preloaded (it batches nothing for this model)."""

    def __init__(self, spec: SystemSpec, **kwargs: Any) -> None:
        super().__init__(spec, **kwargs)
        self.port = free_port()
        path = str(checkpoint.ensure_built(self.size))
        # Requests must name the model exactly as it was given on the command line.
        self.target = Target(
            f"http://127.0.0.1:{self.port}/v1", path, length_control="min_new_tokens"
        )
        self.command = [
            str(Path(sys.executable).with_name("transformers")), "serve", path,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--device", "cpu", "--dtype", self.dtype, "--log-level", "warning",
        ]  # fmt: skip
        self.invocation = {"command": self.command}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
        with open(self.log_dir / "transformers-serve.log", "wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        health = f"http://127.0.0.1:{self.port}/health"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with code {self.proc.returncode}")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError("transformers serve was not ready within 300 s")

    def stop(self) -> None:
        # It waits for in-flight streams without a limit: SIGTERM, then SIGKILL.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class InProcess(System):
    """`raw` or `offline`, run by `audiotext.benchmarks.inprocess` in a child process."""

    def points(self, requested: Sequence[Point]) -> list[Point]:
        return [Point("sequential" if self.spec.kind == "raw" else "offline")]

    def run(
        self, workloads: dict[str, list[WorkItem]], plan: list[tuple[str, Point]]
    ) -> list[Result]:
        names = list(dict.fromkeys(workload for workload, _ in plan))
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                save_items(Path(tmp) / f"{name}.npz", workloads[name])
            out = Path(tmp) / "records.json"
            base = [
                sys.executable, "-m", "audiotext.benchmarks.inprocess", self.spec.kind,
                "--size", self.size, "--dtype", self.dtype,
            ]  # fmt: skip
            self.invocation = {"command": base}
            files = [str(Path(tmp) / f"{name}.npz") for name in names]
            env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "TQDM_DISABLE": "1"}
            subprocess.run([*base, "--out", str(out), *files], check=True, env=env)
            done = json.loads(out.read_text())
        point = self.points([])[0]
        return [
            Result(name, point, [Record(**r) for r in done[name]["records"]], done[name]["wall_s"])
            for name in names
        ]


def checkpoint_dtype(size: str) -> str:
    """The dtype a built-in checkpoint's weights are saved in."""
    config = json.loads((checkpoint.ensure_built(size) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def make_system(spec: SystemSpec, *, size: str, dtype: str, log_dir: Path) -> System:
    common: dict[str, Any] = {"size": size, "dtype": dtype, "log_dir": log_dir}
    if spec.kind in ("audiotext", "vllm"):
        return VllmServer(spec, stock=spec.kind == "vllm", **common)
    if spec.kind == "transformers-serve":
        return TransformersServe(spec, **common)
    return InProcess(spec, **common)


def save_items(path: Path, items: Sequence[WorkItem]) -> None:
    arrays = {f"audio{i}": item.samples for i, item in enumerate(items)}
    meta = json.dumps([{"text": item.text, "max_tokens": item.max_tokens} for item in items])
    np.savez(path, meta=np.array(meta), **arrays)  # type: ignore[arg-type]


def load_items(path: Path) -> list[WorkItem]:
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
        return [WorkItem(data[f"audio{i}"], m["text"], m["max_tokens"]) for i, m in enumerate(meta)]
