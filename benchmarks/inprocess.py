"""The in-process systems of a benchmark, run in their own process by `systems.InProcess`.

    python -m audiotext.benchmarks.inprocess raw|offline --size bench --dtype float32 \
        --out records.json short.npz [long.npz ...]

`raw` is the seed's loop: transformers' processor and `generate`, one request at a time,
with a streamer marking the first token. `offline` is vLLM's `LLM.generate` with every
request of a workload at once, on audiotext's engine configuration and model plugin.
Writes `{workload: {"records": [...], "wall_s": ...}}`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audiotext.benchmarks.loadgen import Record, WorkItem, records_as_dicts
from audiotext.benchmarks.systems import load_items
from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig, to_vllm

SAMPLE_RATE = 16000


def conversation(item: WorkItem) -> list[dict[str, Any]]:
    content = [{"type": "audio", "audio_url": "clip.wav"}, {"type": "text", "text": item.text}]
    return [{"role": "user", "content": content}]


def warm_up_items(workloads: dict[str, list[WorkItem]]) -> list[WorkItem]:
    """Clips like the workload's but not in it (the engine would cache them)."""
    return [
        WorkItem(item.samples[::-1].copy(), item.text, item.max_tokens)
        for items in workloads.values()
        for item in items[:2]
    ]


def run_raw(size: str, dtype: str, workloads: dict[str, list[WorkItem]]) -> dict[str, Any]:
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration
    from transformers.generation.streamers import BaseStreamer

    path = checkpoint.ensure_built(size)
    processor = AutoProcessor.from_pretrained(path)
    model: Any = Qwen2AudioForConditionalGeneration.from_pretrained(
        path, dtype=dtype if dtype == "auto" else getattr(torch, dtype)
    )
    model.eval()

    class FirstToken(BaseStreamer):
        """`generate` puts the prompt first, then each new token."""

        def __init__(self) -> None:
            self.puts: list[float] = []

        def put(self, value: Any) -> None:
            self.puts.append(time.perf_counter())

        def end(self) -> None:
            pass

    def one(item: WorkItem, t0: float) -> Record:
        sent = time.perf_counter()
        record = Record(start_s=sent - t0, audio_seconds=item.audio_seconds)
        prompt = processor.apply_chat_template(
            conversation(item), add_generation_prompt=True, tokenize=False
        )
        inputs = processor(
            text=prompt, audio=[item.samples], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        )
        streamer = FirstToken()
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=item.max_tokens,
                min_new_tokens=item.max_tokens,
                do_sample=False,
                streamer=streamer,
            )
        done = time.perf_counter()
        tokens = streamer.puts[1:]
        record.ttft_s = tokens[0] - sent if tokens else None
        record.itl_s = [b - a for a, b in itertools.pairwise(tokens)]
        record.e2e_s = done - sent
        record.prompt_tokens = int(inputs["input_ids"].shape[1])
        record.output_tokens = int(out.shape[1] - inputs["input_ids"].shape[1])
        return record

    for item in warm_up_items(workloads)[:1]:
        one(item, time.perf_counter())
    results = {}
    for name, items in workloads.items():
        start = time.perf_counter()
        records = [one(item, start) for item in items]
        results[name] = {"records": records, "wall_s": time.perf_counter() - start}
    return results


def run_offline(size: str, dtype: str, workloads: dict[str, list[WorkItem]]) -> dict[str, Any]:
    config = ServerConfig(model=size, dtype=dtype)
    os.environ.update(to_vllm(config).env)  # audiotext's model plugin, as in the server
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    path = str(checkpoint.ensure_built(size))
    llm = LLM(
        model=path,
        dtype=config.resolved_dtype,  # type: ignore[arg-type]
        max_model_len=config.max_model_len,
        max_num_seqs=config.max_num_seqs,
        max_num_batched_tokens=config.max_num_batched_tokens,
        limit_mm_per_prompt={"audio": config.max_audios_per_prompt},
        kv_cache_memory_bytes=int(config.kv_cache_gib * 2**30),
        enable_prefix_caching=config.enable_prefix_caching,
        enable_chunked_prefill=config.enable_chunked_prefill,
        mm_processor_cache_gb=config.mm_processor_cache_gb,
        enforce_eager=config.enforce_eager,
    )
    tokenizer = AutoTokenizer.from_pretrained(path)
    template = Path(config.chat_template).read_text()

    def generate(items: Sequence[WorkItem]) -> list[Any]:
        prompts: Any = [
            {
                "prompt": tokenizer.apply_chat_template(
                    conversation(item),
                    chat_template=template,
                    add_generation_prompt=True,
                    tokenize=False,
                ),
                "multi_modal_data": {"audio": [(item.samples, SAMPLE_RATE)]},
            }
            for item in items
        ]
        params = [
            SamplingParams(max_tokens=item.max_tokens, temperature=0, ignore_eos=True)
            for item in items
        ]
        return llm.generate(prompts, params, use_tqdm=False)

    generate(warm_up_items(workloads))
    results = {}
    for name, items in workloads.items():
        start = time.perf_counter()
        outputs = generate(items)
        wall = time.perf_counter() - start
        records = [
            Record(
                start_s=0.0,
                audio_seconds=item.audio_seconds,
                prompt_tokens=len(out.prompt_token_ids or []),
                output_tokens=len(out.outputs[0].token_ids),
            )
            for item, out in zip(items, outputs, strict=True)
        ]
        results[name] = {"records": records, "wall_s": wall}
    return results


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", choices=["raw", "offline"])
    parser.add_argument("workloads", nargs="+", type=Path, help="workload .npz files")
    parser.add_argument("--size", choices=sorted(checkpoint.SIZES), default="bench")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--out", type=Path, required=True)


def main(args: argparse.Namespace) -> None:
    workloads = {path.stem: load_items(path) for path in args.workloads}
    run = run_raw if args.system == "raw" else run_offline
    results = run(args.size, args.dtype, workloads)
    for result in results.values():
        result["records"] = records_as_dicts(result["records"])
    args.out.write_text(json.dumps(results))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_args(parser)
    main(parser.parse_args())
