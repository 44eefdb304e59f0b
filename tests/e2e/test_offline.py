"""Offline vLLM on audiotext's plugins: long audio heard whole, URLs through the one door.

The guarantees sit in the model's processor and vLLM's media connector, which the offline
engine uses as the server does; the engine runs in a child process so that this one stays
free of vLLM's state.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from audiotext.client import audio_token_count
from audiotext.server.windows import split_windows
from tests.conftest import DATA, Listener, b64, speech_of

LONG_S = 60
PROBE = """
import json, os, sys
import numpy as np
from audiotext.server import checkpoint
from audiotext.server.config import ServerConfig, to_vllm
os.environ.update(to_vllm(ServerConfig(model="tiny")).env)
from vllm import LLM, SamplingParams
llm = LLM(model=str(checkpoint.ensure_built("tiny")), dtype="float32", max_model_len=8192,
          limit_mm_per_prompt={"audio": 10}, kv_cache_memory_bytes=2**30, enforce_eager=True)
greedy = SamplingParams(max_tokens=2, temperature=0)
prompt = ("<|im_start|>user\\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\nWhat?<|im_end|>\\n"
          "<|im_start|>assistant\\n")
short_npy, long_npy, short_url, long_url, bait_url = sys.argv[1:]
report = {"generate": [], "chat": []}
for path in (short_npy, long_npy):
    audio = np.load(path)
    [out] = llm.generate({"prompt": prompt, "multi_modal_data": {"audio": [(audio, 16000)]}},
                         greedy, use_tqdm=False)
    report["generate"].append(len(out.prompt_token_ids))
def chat(url):
    content = [{"type": "audio_url", "audio_url": {"url": url}}, {"type": "text", "text": "What?"}]
    [out] = llm.chat([{"role": "user", "content": content}], greedy, use_tqdm=False,
                     chat_template=checkpoint.CHAT_TEMPLATE.read_text())
    return len(out.prompt_token_ids)
for url in (open(short_url).read(), open(long_url).read()):
    report["chat"].append(chat(url))
try:
    chat(bait_url)
    report["bait"] = "fetched"
except Exception as e:
    report["bait"] = f"{type(e).__name__}: {e}"
print("REPORT", json.dumps(report))
"""


def flac_url(samples: np.ndarray) -> str:
    buf = io.BytesIO()
    soundfile.write(buf, samples, 16000, format="FLAC")
    return "data:audio/flac;base64," + b64(buf.getvalue())


def run_offline(tmp_path: Path, short: np.ndarray, long: np.ndarray, bait: str) -> Any:
    args = []
    for name, audio in (("short", short), ("long", long)):
        np.save(tmp_path / f"{name}.npy", audio)
        args.append(str(tmp_path / f"{name}.npy"))
    for name, audio in (("short", short), ("long", long)):
        (tmp_path / f"{name}.url").write_text(flac_url(audio))
        args.append(str(tmp_path / f"{name}.url"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args, bait],
        capture_output=True, text=True, timeout=600, cwd=DATA.parent.parent,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [x for x in done.stdout.splitlines() if x.startswith("REPORT ")]
    return json.loads(line.removeprefix("REPORT "))


def test_offline_engine_hears_60_s_whole_and_fetches_through_the_guarded_connector(
    tmp_path: Path,
) -> None:
    short, long = speech_of(5), speech_of(LONG_S)
    windows = split_windows(long)
    assert len(windows) == 2
    # Every window's audio tokens, with <|audio_eos|><|audio_bos|> between them.
    extra = sum(audio_token_count(len(w)) for w in windows) + 2 - audio_token_count(len(short))
    listener = Listener()
    try:
        report = run_offline(tmp_path, short, long, f"http://127.0.0.1:{listener.port}/a.wav")
    finally:
        listener.close()
    for api in ("generate", "chat"):  # LLM.generate with samples, LLM.chat with data: URLs
        short_tokens, long_tokens = report[api]
        assert long_tokens - short_tokens == extra, api
        assert long_tokens > 1400, api  # stock vLLM would stop at 750 audio tokens
    # The offline engine's URLs go through audiotext's SSRF-guarded fetcher too.
    assert "loopback address; refused" in report["bait"]
    assert listener.connections == 0
