"""Shared test helpers: the committed speech clips, decoded the same way everywhere."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import soundfile
import soxr

DATA = Path(__file__).parent / "data"
PROBES = Path(__file__).parent / "probes"
SAMPLE_RATE = 16000
# name -> (file, seconds to keep or None for all): about 1 s, 6 s and 25 s of speech.
CLIPS = {
    "1s": ("speech_short.flac", 1.0),
    "6s": ("speech_demo.flac", None),
    "25s": ("speech_long.ogg", None),
}


def load_clip(name: str) -> np.ndarray:
    """A committed clip as 16 kHz mono float32, cut to its length."""
    file, seconds = CLIPS[name]
    samples, rate = soundfile.read(DATA / file, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE)
    if seconds is not None:
        mono = mono[: int(seconds * SAMPLE_RATE)]
    return np.ascontiguousarray(mono, dtype=np.float32)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "FLOAT") -> bytes:
    """Samples as a WAV file; float WAV keeps them bit for bit."""
    buf = io.BytesIO()
    soundfile.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def encode_with_pyav(samples: np.ndarray, rate: int, container: str, codec: str) -> bytes:
    """Encode mono float samples with FFmpeg (PyAV) into a container, e.g. ("mp4", "aac")."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            samples[None, :].astype(np.float32), format="flt", layout="mono"
        )
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def aligned_correlation(a: np.ndarray, b: np.ndarray, max_lag: int = 4000) -> float:
    """Normalised correlation of two signals at their best alignment within `max_lag`
    samples (lossy codecs add a little delay)."""
    from scipy.signal import correlate, correlation_lags

    xcorr = correlate(a, b, mode="full", method="fft")
    lags = correlation_lags(len(a), len(b), mode="full")
    window = np.abs(lags) <= max_lag
    lag = int(lags[window][np.argmax(xcorr[window])])
    x, y = (a[lag:], b) if lag >= 0 else (a, b[-lag:])
    n = min(len(x), len(y))
    return float(np.corrcoef(x[:n], y[:n])[0, 1])


def speech_of(seconds: float) -> np.ndarray:
    """Real speech of any length: the committed clips, repeated and cut."""
    speech = np.concatenate([load_clip("25s"), load_clip("6s")])
    repeats = int(np.ceil(seconds * SAMPLE_RATE / len(speech)))
    return np.tile(speech, repeats)[: int(seconds * SAMPLE_RATE)]


class DecodeLog:
    """The audio decodes of a server started with the decode probe, one process id each
    (`tests/probes/sitecustomize.py`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def processes(self) -> list[int]:
        return [int(line) for line in self.path.read_text().split()]

    def mark(self) -> int:
        return len(self.processes())

    def since(self, mark: int) -> list[int]:
        """The decoding process of every decode since `mark`, in order."""
        return self.processes()[mark:]


def process_tree(pid: int) -> list[Any]:
    """A process and all its descendants, as psutil processes (collect before signalling:
    a child whose parent exits first is no longer found through it)."""
    import psutil

    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def lower_priority(pid: int, by: int = 10) -> None:
    """Run a process tree, every thread of it, `by` below this test process's priority: a
    client on its own machine is never starved by the server's cores, as one sharing 2 is."""
    import psutil

    niceness = min(19, os.getpriority(os.PRIO_PROCESS, 0) + by)
    for process in process_tree(pid):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            for thread in process.threads():
                os.setpriority(os.PRIO_PROCESS, thread.id, niceness)


def left_alive(processes: list[Any], within: float = 10.0) -> list[Any]:
    """The processes still running after `within` seconds (zombies count as gone)."""
    import psutil

    _, alive = psutil.wait_procs(processes, timeout=within)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@contextlib.contextmanager
def running_server(config: Any, log_dir: Path, decodes: DecodeLog | None = None) -> Iterator[Any]:
    """A real `audiotext serve` child for `config`; its log is printed if it fails to start.

    With `decodes`, the server's processes run the decode probe and log there.
    """
    from audiotext.server.launcher import ServerProcess

    probe = {}
    if decodes is not None:
        path = [str(PROBES), *filter(None, [os.environ.get("PYTHONPATH")])]
        probe = {"PYTHONPATH": os.pathsep.join(path), "AUDIOTEXT_DECODE_LOG": str(decodes.path)}
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log:
        server = ServerProcess(config, log=log)
        try:
            with mock.patch.dict(os.environ, probe):  # the child's environment only
                server.start()
        except Exception:
            print(log_path.read_text(errors="replace")[-5000:])
            raise
        try:
            yield server
        finally:
            server.stop()


class Listener:
    """A TCP listener on loopback that counts connections: SSRF must never reach it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.sock.close()
