"""Audio-encoder micro-benchmark: stock vLLM (padded), per clip and packed, in one run.

    python -m audiotext.benchmarks.encoder [--size bench] [--batches 1,8,32] [--repeats 3]

Times the encoder + projector on the built-in checkpoint for batches of clips of 1 s,
2-10 s, 30 s and 1-30 s: stock vLLM's path (every clip padded to 30 s, masked attention),
the padding-free encoder called once per clip (the loop it replaced), packed as served
(clips' valid positions packed into forwards of up to `CPU_PACK_POSITIONS` on CPU,
block-diagonal attention) and the whole batch in one packed forward (the GPU default). The
systems take turns on each batch, so load on the machine hits them alike. float32; prints
one row per batch as it goes (wall-clock medians, and the process's CPU time, which
other programs on a busy machine do not inflate with `--threads 1`), then a JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from audiotext.server import checkpoint
from audiotext.server.encoder import encode_valid_frames
from audiotext.server.features import trimmed_features

# Clip lengths of each case: a uniform draw between the two bounds (seconds).
CASES: dict[str, tuple[float, float]] = {
    "1 s": (1.0, 1.0),
    "2-10 s": (2.0, 10.0),
    "30 s": (30.0, 30.0),
    "1-30 s": (1.0, 30.0),
}
SYSTEMS = ("stock", "per_clip", "packed", "one_forward")
# A system's later repeats in one cell are skipped once a call has taken this long.
CELL_BUDGET_S = 8.0


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(checkpoint.SIZES), default="bench")
    parser.add_argument(
        "--batches", type=lambda s: [int(n) for n in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * (1 + np.sin(2 * np.pi * 3 * t)) * rng.standard_normal(t.size)).astype(np.float32)


def timed_s(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def main(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from vllm.model_executor.models.qwen2_audio import Qwen2AudioForConditionalGeneration as Stock

    if args.threads:
        torch.set_num_threads(args.threads)
    path = checkpoint.ensure_built(args.size)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tower, projector = model.model.audio_tower, model.model.multi_modal_projector
    extractor = AutoProcessor.from_pretrained(path).feature_extractor
    stock_self: Any = SimpleNamespace(audio_tower=tower, multi_modal_projector=projector)
    rng = np.random.default_rng(0)

    def systems(lengths: list[float]) -> dict[str, Callable[[], Any]]:
        clips = [speech_like(s, rng) for s in lengths]
        out = extractor(clips, sampling_rate=16000, return_attention_mask=True,
                        padding="max_length", return_tensors="pt")  # fmt: skip
        padded = {"type": "audio_features", "input_features": out["input_features"],
                  "feature_attention_mask": out["attention_mask"]}  # fmt: skip
        feats, masks = zip(*(trimmed_features(extractor, clip) for clip in clips), strict=True)
        return {
            # vLLM's own Qwen2-Audio encoding path, on the same modules.
            "stock": lambda: Stock._process_audio_input(stock_self, padded),  # type: ignore[arg-type]
            "per_clip": lambda: [
                encode_valid_frames(tower, projector, [f], [m])
                for f, m in zip(feats, masks, strict=True)
            ],
            "packed": lambda: encode_valid_frames(tower, projector, feats, masks),
            "one_forward": lambda: encode_valid_frames(
                tower, projector, feats, masks, pack_positions=sys.maxsize
            ),
        }

    def measure(case: str, batch: int) -> dict[str, Any]:
        low, high = CASES[case]
        fns = systems(rng.uniform(low, high, batch).round(2).tolist())
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in SYSTEMS}
        for _ in range(args.repeats):
            for name in SYSTEMS:
                if not times[name] or max(w for w, _ in times[name]) < CELL_BUDGET_S:
                    times[name].append(timed_s(fns[name]))
        row: dict[str, Any] = {"case": case, "batch": batch}
        for name, runs in times.items():
            row[f"{name}_ms"] = round(statistics.median(w for w, _ in runs) * 1000, 1)
            row[f"{name}_cpu_ms"] = round(statistics.median(c for _, c in runs) * 1000, 1)
        row["runs"] = {name: len(runs) for name, runs in times.items()}
        return row

    with torch.no_grad():
        for fn in systems([1.0, 3.0]).values():  # warm-up: first-call allocations
            fn()
        load_before = os.getloadavg()[0]
        print("median wall-clock ms (process CPU ms); packed's speed-up, wall-clock (CPU)")
        names = "".join(f"{name.replace('_', ' '):>18}" for name in SYSTEMS)
        print(f"{'clips':<8}{'batch':>6}{names}{'packed vs per clip':>24}{'vs stock':>16}")
        rows = []
        for batch in args.batches:
            for case in CASES:
                row = measure(case, batch)
                rows.append(row)
                print(f"{case:<8}{batch:>6}" + "".join(
                    f"{row[f'{n}_ms']:>9.0f} ({row[f'{n}_cpu_ms']:>6.0f})" for n in SYSTEMS
                ) + f"{ratio(row, 'per_clip'):>24}{ratio(row, 'stock'):>16}", flush=True)  # fmt: skip
    result = {
        "checkpoint": args.size, "dtype": "float32", "repeats": args.repeats, "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        # A busy machine inflates wall-clock times; the load says how busy it was.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }  # fmt: skip
    print(json.dumps(result))
    return result


def ratio(row: dict[str, Any], baseline: str) -> str:
    """How many times faster packed is than `baseline`, wall-clock (CPU time)."""
    wall = row[f"{baseline}_ms"] / row["packed_ms"]
    cpu = row[f"{baseline}_cpu_ms"] / max(row["packed_cpu_ms"], 1e-3)
    return f"{wall:.2f}x ({cpu:.2f}x)"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
