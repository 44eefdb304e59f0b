"""Audio-encoder micro-benchmark: stock vLLM (padded to 30 s) vs padding-free, same run.

    python -m audiotext.benchmarks.encoder [--size bench] [--repeats 5]

Times the encoder + projector on the built-in checkpoint for 1, 5, 10 and 30 s clips and
a mixed batch, prints a table and a JSON line. float32, this machine's CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from audiotext.server import checkpoint
from audiotext.server.encoder import encode_valid_frames

CASES: dict[str, list[float]] = {
    "1 s": [1.0],
    "5 s": [5.0],
    "10 s": [10.0],
    "30 s": [30.0],
    "mixed 2+5+8+10+30 s": [2.0, 5.0, 8.0, 10.0, 30.0],
}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(checkpoint.SIZES), default="bench")
    parser.add_argument("--repeats", type=int, default=5)


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * (1 + np.sin(2 * np.pi * 3 * t)) * rng.standard_normal(t.size)).astype(np.float32)


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from vllm.model_executor.models.qwen2_audio import Qwen2AudioForConditionalGeneration as Stock

    path = checkpoint.ensure_built(args.size)
    model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    tower, projector = model.model.audio_tower, model.model.multi_modal_projector
    extractor = AutoProcessor.from_pretrained(path).feature_extractor
    stock_self: Any = SimpleNamespace(audio_tower=tower, multi_modal_projector=projector)

    def stock_encode(audio_input: Any) -> Any:
        """vLLM's own Qwen2-Audio encoding path, on the same modules."""
        return Stock._process_audio_input(stock_self, audio_input)

    rng = np.random.default_rng(0)

    def measure(name: str, lengths: list[float]) -> dict[str, Any]:
        clips = [speech_like(s, rng) for s in lengths]
        out = extractor(clips, sampling_rate=16000, return_attention_mask=True,
                        padding="max_length", return_tensors="pt")  # fmt: skip
        feats, mask = out["input_features"], out["attention_mask"]
        audio_input = {
            "type": "audio_features",
            "input_features": feats,
            "feature_attention_mask": mask,
        }
        with torch.no_grad():
            stock = median_s(lambda: stock_encode(audio_input), args.repeats)
            ours = median_s(
                lambda: encode_valid_frames(tower, projector, feats, mask), args.repeats
            )
        return {"case": name, "stock_ms": round(stock * 1000, 1),
                "padding_free_ms": round(ours * 1000, 1), "speedup": round(stock / ours, 2)}  # fmt: skip

    rows = [measure(name, lengths) for name, lengths in CASES.items()]
    print(f"{'case':<22}{'stock ms':>10}{'padding-free ms':>17}{'speedup':>9}")
    for row in rows:
        print(
            f"{row['case']:<22}{row['stock_ms']:>10}{row['padding_free_ms']:>17}{row['speedup']:>8}x"
        )
    result = {
        "checkpoint": args.size, "dtype": "float32", "repeats": args.repeats, "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
    }  # fmt: skip
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
