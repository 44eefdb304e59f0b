"""Offline `LLM.generate` on audiotext's model plugin hears long audio whole too.

The guarantee sits in the model's processor, which the offline engine uses as the server
does; the engine runs in a child process so that this one stays free of vLLM's state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from audiotext.client import audio_token_count
from audiotext.server.windows import split_windows
from tests.conftest import DATA, speech_of

PROBE = """
import json, sys
import numpy as np
from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig, to_vllm
import os
os.environ.update(to_vllm(ServerConfig(model="tiny")).env)
from vllm import LLM, SamplingParams
llm = LLM(model=str(checkpoint.ensure_built("tiny")), dtype="float32", max_model_len=8192,
          limit_mm_per_prompt={"audio": 10}, kv_cache_memory_bytes=2**30, enforce_eager=True)
prompt = ("<|im_start|>user\\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\nWhat?<|im_end|>\\n"
          "<|im_start|>assistant\\n")
counts = []
for path in sys.argv[1:]:
    audio = np.load(path)
    [out] = llm.generate({"prompt": prompt, "multi_modal_data": {"audio": [(audio, 16000)]}},
                         SamplingParams(max_tokens=2, temperature=0), use_tqdm=False)
    counts.append(len(out.prompt_token_ids))
print("PROMPT_TOKENS", json.dumps(counts))
"""


def test_offline_generate_hears_a_long_clip_whole(tmp_path: Path) -> None:
    short, long = speech_of(5), speech_of(59)
    paths = [tmp_path / "short.npy", tmp_path / "long.npy"]
    for path, audio in zip(paths, (short, long), strict=True):
        np.save(path, audio)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, paths)],
        capture_output=True, text=True, timeout=600, cwd=DATA.parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("PROMPT_TOKENS ")]
    short_tokens, long_tokens = json.loads(line.removeprefix("PROMPT_TOKENS "))
    windows = split_windows(long)
    assert len(windows) == 2
    text_tokens = short_tokens - audio_token_count(len(short))
    # Every window's audio tokens, with <|audio_eos|><|audio_bos|> between them.
    expected = text_tokens + sum(audio_token_count(len(w)) for w in windows) + 2
    assert long_tokens == expected
    assert long_tokens > 1400  # stock vLLM would stop at 750 audio tokens
