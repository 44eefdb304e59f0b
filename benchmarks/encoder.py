"""Audio-encoder micro-benchmark: stock vLLM (padded), per clip and packed, in one run.

    python -m audiotext.benchmarks.encoder [--size bench] [--batches 1,8,32] [--repeats 3]
    python -m audiotext.benchmarks.encoder --shape qwen2-audio-7b --device cuda \\
        --dtype bfloat16 --batches 1,4,16,64 --out encoder-cuda.json

Times the encoder + projector for batches of clips of 1 s, 2-10 s, 30 s and 1-30 s: stock
vLLM's path (every clip padded to 30 s, masked attention; restated here with torch alone,
`stock_padded`), the padding-free encoder called once per clip (the loop it replaced),
packed as served (clips' valid positions packed into forwards of up to
`CPU_PACK_POSITIONS` on CPU, block-diagonal attention) and, on CPU, the whole batch in
one packed forward (what packed is on CUDA). The systems take turns on each batch, so
load on the machine hits them alike. Prints one row per batch as it goes (wall-clock
medians, and the process's CPU time, which other programs on a busy machine do not
inflate with `--threads 1`; on CUDA the peak memory instead), then a JSON line.

The encoder is a built-in checkpoint's (`--size`) or, with `--shape qwen2-audio-7b`, the
real model's (Whisper-large-v3: d_model 1280, 32 layers, 20 heads, projector to 4096)
with random weights, as speed does not depend on them. Nothing here imports vLLM, so it
runs where only torch and transformers are installed (a GPU machine: README,
"Padding-free audio encoder").
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
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

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
# On CUDA packed is already the whole batch in one forward.
CUDA_SYSTEMS = ("stock", "per_clip", "packed")
# A system's later repeats in one cell are skipped once a call has taken this long.
CELL_BUDGET_S = 8.0
# The real Qwen2-Audio-7B: transformers' default encoder config is its Whisper-large-v3
# shape; the projector maps it to the language model's hidden size.
SHAPES = {"qwen2-audio-7b": {"text_hidden_size": 4096}}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=sorted(checkpoint.SIZES), default="bench")
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default=None,
        help="random weights in this model's encoder shape instead of --size's checkpoint",
    )
    parser.add_argument(
        "--layers", type=int, default=None, help="keep only this many encoder layers"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--batches", type=lambda s: [int(n) for n in s.split(",")], default=[1, 8, 32]
    )
    parser.add_argument(
        "--cases",
        type=lambda s: s.split(","),
        default=list(CASES),
        help=f"comma-separated clip-length cases, of: {', '.join(CASES)}",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")


def speech_like(seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.1 * (1 + np.sin(2 * np.pi * 3 * t)) * rng.standard_normal(t.size)).astype(np.float32)


def stock_padded(
    tower: Any, projector: nn.Module, input_features: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """vLLM 0.32's `Qwen2AudioForConditionalGeneration._process_audio_input`, with torch alone.

    Features padded to 30 s, a dense (clips, 1, 1500, 1500) mask with -inf on padded keys,
    the whole padded batch through the encoder, the padding's tokens dropped after the
    projector (`tests/unit/test_benchmarks.py` checks it against vLLM's own).
    """
    positions, tokens = tower._get_feat_extract_output_lengths(mask.sum(-1))
    batch, _, frames = input_features.shape
    longest = (frames - 2) // 2 + 1
    padding = torch.arange(longest, device=positions.device)[None, :] >= positions[:, None]
    dense = padding.view(batch, 1, 1, longest).expand(batch, 1, longest, longest)
    attention_mask = dense.to(dtype=tower.conv1.weight.dtype, device=tower.conv1.weight.device)
    attention_mask[dense] = float("-inf")
    hidden = tower(input_features, attention_mask=attention_mask).last_hidden_state
    features = projector(hidden)
    keep = torch.arange(features.shape[1], device=tokens.device)[None, :] < tokens[:, None]
    return torch.split(features[keep].view(-1, features.shape[-1]), tokens.tolist())


def shape_config(shape: str) -> Any:
    """transformers' `Qwen2AudioConfig` of a `SHAPES` model (its encoder and projector)."""
    from transformers import Qwen2AudioConfig

    return Qwen2AudioConfig(text_config=SHAPES[shape])


def load_encoder(args: argparse.Namespace) -> tuple[Any, nn.Module, Any, str]:
    """The encoder and projector to time, on `args.device` in `args.dtype`, the feature
    extractor that feeds them (the checkpoint's own), and their name."""
    from transformers import Qwen2AudioForConditionalGeneration, WhisperFeatureExtractor
    from transformers.models.qwen2_audio.modeling_qwen2_audio import (
        Qwen2AudioEncoder,
        Qwen2AudioMultiModalProjector,
    )

    dtype, device = DTYPES[args.dtype], torch.device(args.device)
    tower: Any
    projector: nn.Module
    if args.shape:
        config = shape_config(args.shape)
        if args.layers:
            config.audio_config.encoder_layers = args.layers
        with device:  # random initialisation where the weights will live
            tower = Qwen2AudioEncoder(config.audio_config)
            projector = Qwen2AudioMultiModalProjector(config)
        # Qwen2-Audio's features: Whisper's 128-bin log-mel, 16 kHz, 30 s windows.
        extractor = WhisperFeatureExtractor(feature_size=config.audio_config.num_mel_bins)
        name = f"{args.shape} shape, random weights"
    else:
        path = checkpoint.ensure_built(args.size)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=dtype)
        tower, projector = model.model.audio_tower, model.model.multi_modal_projector
        extractor = WhisperFeatureExtractor.from_pretrained(path)
        if args.layers:
            tower.layers = tower.layers[: args.layers]
        name = f"{args.size} checkpoint"
    if args.layers:
        name += f", first {args.layers} layers"
    tower = tower.to(device=device, dtype=dtype).eval()
    projector = projector.to(device=device, dtype=dtype).eval()
    return tower, projector, extractor, name


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_s(fn: Callable[[], Any], device: torch.device) -> tuple[float, float, float]:
    """Wall-clock and process CPU seconds of one call, and its peak device memory (MiB)."""
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    return wall, cpu, peak


def main(args: argparse.Namespace) -> dict[str, Any]:
    unknown = set(args.cases) - set(CASES)
    if unknown:
        raise SystemExit(f"unknown case(s) {sorted(unknown)}; cases: {', '.join(CASES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    tower, projector, extractor, encoder_name = load_encoder(args)
    names = CUDA_SYSTEMS if device.type == "cuda" else SYSTEMS
    rng = np.random.default_rng(0)

    def systems(lengths: list[float]) -> dict[str, Callable[[], Any]]:
        clips = [speech_like(s, rng) for s in lengths]
        out = extractor(clips, sampling_rate=16000, return_attention_mask=True,
                        padding="max_length", return_tensors="pt")  # fmt: skip
        # Features reach the model on its device in its dtype, as vLLM hands them over.
        padded = out["input_features"].to(device=device, dtype=dtype)
        padded_mask = out["attention_mask"].to(device)
        trimmed = [trimmed_features(extractor, clip) for clip in clips]
        feats = [f.to(device=device, dtype=dtype) for f, _ in trimmed]
        masks = [m.to(device) for _, m in trimmed]
        fns: dict[str, Callable[[], Any]] = {
            "stock": lambda: stock_padded(tower, projector, padded, padded_mask),
            "per_clip": lambda: [
                encode_valid_frames(tower, projector, [f], [m])
                for f, m in zip(feats, masks, strict=True)
            ],
            "packed": lambda: encode_valid_frames(tower, projector, feats, masks),
            "one_forward": lambda: encode_valid_frames(
                tower, projector, feats, masks, pack_positions=sys.maxsize
            ),
        }
        return {name: fns[name] for name in names}

    def measure(case: str, batch: int) -> dict[str, Any]:
        low, high = CASES[case]
        fns = systems(rng.uniform(low, high, batch).round(2).tolist())
        times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}
        for _ in range(args.repeats):
            for name in names:
                if not times[name] or max(run[0] for run in times[name]) < CELL_BUDGET_S:
                    times[name].append(timed_s(fns[name], device))
        row: dict[str, Any] = {"case": case, "batch": batch}
        for name, runs in times.items():
            row[f"{name}_ms"] = round(statistics.median(run[0] for run in runs) * 1000, 1)
            row[f"{name}_cpu_ms"] = round(statistics.median(run[1] for run in runs) * 1000, 1)
            if device.type == "cuda":
                row[f"{name}_peak_mib"] = round(max(run[2] for run in runs))
        row["runs"] = {name: len(runs) for name, runs in times.items()}
        return row

    with torch.no_grad():
        for fn in systems([1.0, 3.0]).values():  # warm-up: first-call allocations, kernels
            fn()
        load_before = os.getloadavg()[0]
        print(f"{encoder_name}, {args.dtype} on {device}")
        second = "peak MiB" if device.type == "cuda" else "process CPU ms"
        print(f"median wall-clock ms ({second}); packed's speed-up, wall-clock (CPU)")
        header = "".join(f"{name.replace('_', ' '):>18}" for name in names)
        print(f"{'clips':<8}{'batch':>6}{header}{'packed vs per clip':>24}{'vs stock':>16}")
        rows = []
        for batch in args.batches:
            for case in args.cases:
                row = measure(case, batch)
                rows.append(row)
                print(f"{case:<8}{batch:>6}" + "".join(cell(row, n) for n in names)
                      + f"{ratio(row, 'per_clip'):>24}{ratio(row, 'stock'):>16}",
                      flush=True)  # fmt: skip
    result = {
        "encoder": encoder_name, "dtype": args.dtype, "device": device_name(device),
        "attention": attention_name(tower, device), "repeats": args.repeats, "rows": rows,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        # A busy machine inflates wall-clock times; the load says how busy it was.
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }  # fmt: skip
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def cell(row: dict[str, Any], name: str) -> str:
    second = row.get(f"{name}_peak_mib", row[f"{name}_cpu_ms"])
    return f"{row[f'{name}_ms']:>9.0f} ({second:>6.0f})"


def ratio(row: dict[str, Any], baseline: str) -> str:
    """How many times faster packed is than `baseline`, wall-clock (CPU time)."""
    wall = row[f"{baseline}_ms"] / max(row["packed_ms"], 1e-3)
    cpu = row[f"{baseline}_cpu_ms"] / max(row["packed_cpu_ms"], 1e-3)
    return f"{wall:.2f}x ({cpu:.2f}x)"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    return str(device)


def attention_name(tower: Any, device: torch.device) -> dict[str, str]:
    """Which attention each path ran: transformers' for stock, ours for packed."""
    from audiotext.server.packed_attention import VarlenFlashAttention

    head_dim = tower.layers[0].self_attn.head_dim
    varlen = VarlenFlashAttention.supports(device, tower.conv1.weight.dtype, head_dim)
    return {
        "stock": f"transformers {tower.config._attn_implementation}, dense mask",
        "packed": "torch varlen_attn" if varlen else "length-bucketed SDPA",
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
