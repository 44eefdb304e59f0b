"""ServerConfig -> vLLM arguments, flag/environment resolution, and the CLI's fast paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from audiotext.server import checkpoint
from audiotext.server import config as config_module
from audiotext.server.cli import parse_args
from audiotext.server.config import (
    CONFIG_ENV,
    ServerConfig,
    config_from_args,
    from_json,
    to_cli_args,
    to_vllm,
)


def parse(argv: list[str], environ: dict[str, str] | None = None) -> ServerConfig:
    args, extra = parse_args(["serve", *argv])
    return config_from_args(args, extra, environ={} if environ is None else environ)


def flag_value(argv: tuple[str, ...], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_defaults_are_tuned_for_qwen2_audio_on_cpu() -> None:
    inv = to_vllm(ServerConfig(device="cpu"))
    argv = inv.argv
    assert flag_value(argv, "--model") == "Qwen/Qwen2-Audio-7B-Instruct"
    assert flag_value(argv, "--served-model-name") == "Qwen/Qwen2-Audio-7B-Instruct"
    assert flag_value(argv, "--max-model-len") == "8192"
    assert json.loads(flag_value(argv, "--limit-mm-per-prompt")) == {"audio": 10}
    assert flag_value(argv, "--kv-cache-memory-bytes") == str(4 * 2**30)
    assert flag_value(argv, "--chat-template") == str(checkpoint.CHAT_TEMPLATE)
    assert "--enable-prefix-caching" in argv
    assert "--enable-chunked-prefill" in argv
    assert "--gpu-memory-utilization" not in argv
    assert "--enforce-eager" not in argv
    assert inv.env["VLLM_PLUGINS"] == "audiotext_model,audiotext_routes"
    assert flag_value(argv, "--shutdown-timeout") == "30"
    allowed = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    assert inv.env["VLLM_CPU_OMP_THREADS_BIND"] == allowed


def test_plugins_read_the_configuration_back_from_the_environment() -> None:
    config = ServerConfig(
        model="tiny", max_audio_seconds=90, media_domains="a.test,b.test", api_key="k",
        enforce_eager=True,
    )  # fmt: skip
    env = to_vllm(config).env
    assert json.loads(env["AUDIOTEXT_SERVER_CONFIG"])["max_audio_seconds"] == 90
    assert from_json(env["AUDIOTEXT_SERVER_CONFIG"]) == config
    assert env["VLLM_MEDIA_CONNECTOR"] == "audiotext"
    # vLLM's own media policy flags say the same as audiotext's.
    argv = to_vllm(config).argv
    assert argv[argv.index("--allowed-media-domains") + 1 :][:2] == ("a.test", "b.test")


def test_ray_workers_get_the_configuration_too(monkeypatch: pytest.MonkeyPatch) -> None:
    assert to_vllm(ServerConfig()).env["VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"] == CONFIG_ENV
    monkeypatch.setenv("VLLM_RAY_EXTRA_ENV_VARS_TO_COPY", "MY_TOKEN")
    assert (
        to_vllm(ServerConfig()).env["VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"] == f"MY_TOKEN,{CONFIG_ENV}"
    )


def test_stock_loads_no_plugin_and_no_connector() -> None:
    env = to_vllm(ServerConfig(stock=True)).env
    assert env["VLLM_PLUGINS"] == ""
    assert "VLLM_MEDIA_CONNECTOR" not in env and "AUDIOTEXT_SERVER_CONFIG" not in env
    assert "VLLM_HTTP_TIMEOUT_KEEP_ALIVE" not in env  # stock keeps vLLM's 5 s


def test_idle_connections_outlive_the_clients_pools() -> None:
    assert to_vllm(ServerConfig()).env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "75"
    assert to_vllm(ServerConfig(keep_alive_s=120)).env["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "120"


def test_cpu_warm_starts_reuse_the_compile_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VLLM_USE_AOT_COMPILE", raising=False)
    assert to_vllm(ServerConfig(device="cpu")).env["VLLM_USE_AOT_COMPILE"] == "0"
    assert "VLLM_USE_AOT_COMPILE" not in to_vllm(ServerConfig(device="cuda")).env
    assert "VLLM_USE_AOT_COMPILE" not in to_vllm(ServerConfig(device="cpu", stock=True)).env
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    assert "VLLM_USE_AOT_COMPILE" not in to_vllm(ServerConfig(device="cpu")).env


def test_cpu_runs_the_model_inside_the_engine_core_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    assert to_vllm(ServerConfig(device="cpu")).env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    for other in [
        ServerConfig(device="cpu", worker_process=True),
        ServerConfig(device="cuda"),
        ServerConfig(device="cpu", stock=True),
    ]:
        assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in to_vllm(other).env
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in to_vllm(ServerConfig(device="cpu")).env


def test_cpu_forks_the_engine_core_when_the_model_runs_in_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in (
        "VLLM_ENABLE_V1_MULTIPROCESSING",
        "VLLM_WORKER_MULTIPROC_METHOD",
        "LD_PRELOAD",
        "TORCHINDUCTOR_COMPILE_THREADS",
    ):
        monkeypatch.delenv(name, raising=False)
    forked = to_vllm(ServerConfig(device="cpu")).env
    assert forked["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    assert "libgomp" in forked["LD_PRELOAD"] and forked["TORCHINDUCTOR_COMPILE_THREADS"] == "1"
    for other in [
        ServerConfig(device="cpu", worker_process=True),
        ServerConfig(device="cuda"),
        ServerConfig(device="cpu", stock=True),
    ]:
        env = to_vllm(other).env
        assert not {"VLLM_WORKER_MULTIPROC_METHOD", "LD_PRELOAD"} & set(env), env
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # worker processes: vLLM's way
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in to_vllm(ServerConfig(device="cpu")).env
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # the user's choice is kept
    assert "VLLM_WORKER_MULTIPROC_METHOD" not in to_vllm(ServerConfig(device="cpu")).env


def test_headless_is_read_from_the_flags_passed_to_vllm() -> None:
    assert ServerConfig(extra_args=("--data-parallel-size", "2", "--headless")).headless
    assert not ServerConfig().headless


def test_cuda_uses_memory_fraction_not_kv_bytes() -> None:
    argv = to_vllm(ServerConfig(device="cuda", gpu_memory_utilization=0.8)).argv
    assert flag_value(argv, "--gpu-memory-utilization") == "0.8"
    assert "--kv-cache-memory-bytes" not in argv


def test_cpu_cores_choose_the_model_threads_binding() -> None:
    allowed = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    assert (
        to_vllm(ServerConfig(device="cpu", cpu_cores="all")).env["VLLM_CPU_OMP_THREADS_BIND"]
        == allowed
    )
    assert (
        to_vllm(ServerConfig(device="cpu", cpu_cores="0-3")).env["VLLM_CPU_OMP_THREADS_BIND"]
        == "0-3"
    )
    assert (
        "VLLM_CPU_OMP_THREADS_BIND" not in to_vllm(ServerConfig(device="cpu", cpu_cores="auto")).env
    )
    assert (
        "VLLM_CPU_OMP_THREADS_BIND" not in to_vllm(ServerConfig(device="cuda", cpu_cores="all")).env
    )


def test_builtin_model_resolves_to_cache_folder_and_keeps_its_name() -> None:
    argv = to_vllm(ServerConfig(model="tiny")).argv
    assert flag_value(argv, "--model") == str(checkpoint.builtin_path("tiny"))
    assert flag_value(argv, "--served-model-name") == "tiny"


def test_stock_loads_no_plugin_and_switches_turn_off() -> None:
    config = ServerConfig(stock=True, enable_prefix_caching=False, enforce_eager=True)
    inv = to_vllm(config)
    assert inv.env["VLLM_PLUGINS"] == ""
    assert "--no-enable-prefix-caching" in inv.argv
    assert "--enforce-eager" in inv.argv


def test_unknown_flags_pass_through_last() -> None:
    config = parse(["--port", "9000", "--swap-space", "2", "--", "--seed", "7"])
    assert config.port == 9000
    assert config.extra_args == ("--swap-space", "2", "--seed", "7")
    assert to_vllm(config).argv[-4:] == ("--swap-space", "2", "--seed", "7")


def test_flag_beats_environment_beats_default() -> None:
    env = {"AUDIOTEXT_PORT": "9100", "AUDIOTEXT_MAX_NUM_SEQS": "16", "AUDIOTEXT_STOCK": "yes"}
    config = parse(["--port", "9200"], env)
    assert config.port == 9200
    assert config.max_num_seqs == 16
    assert config.stock is True
    assert parse([], {}).max_num_seqs == ServerConfig().max_num_seqs


@pytest.mark.parametrize(
    ("name", "value"), [("AUDIOTEXT_PORT", "eighty"), ("AUDIOTEXT_STOCK", "maybe")]
)
def test_bad_environment_value_is_a_clear_error(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        parse([], {name: value})


def test_cli_args_reproduce_the_config_and_keep_the_key_out_of_argv() -> None:
    config = ServerConfig(
        model="tiny", port=1234, dtype="float32", enforce_eager=True,
        enable_prefix_caching=False, api_key="sk-secret", extra_args=("--seed", "3"),
    )  # fmt: skip
    argv, env = to_cli_args(config)
    assert "sk-secret" not in argv
    environ = {k: v for k, v in env.items() if v}
    assert parse(argv, environ) == config


def test_api_key_reaches_vllm() -> None:
    assert flag_value(to_vllm(ServerConfig(api_key="k")).argv, "--api-key") == "k"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        "from audiotext.server.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = sorted({'vllm', 'torch', 'transformers'} & set(sys.modules))\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_dry_run_prints_vllm_configuration_without_importing_vllm() -> None:
    result = run_cli("serve", "--model", "tiny", "--max-num-seqs", "32", "--dry-run")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert flag_value(tuple(shown["argv"]), "--max-num-seqs") == "32"
    assert shown["env"]["VLLM_PLUGINS"] == "audiotext_model,audiotext_routes"
    assert "HEAVY []" in result.stderr


def test_dry_run_redacts_the_api_key() -> None:
    result = run_cli("serve", "--api-key", "sk-secret", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "sk-secret" not in result.stdout
    env = json.loads(result.stdout)["env"]
    assert json.loads(env["AUDIOTEXT_SERVER_CONFIG"])["api_key"] == "***"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--port", "eighty"], "invalid int value"),
        (["serve", "--model", "/no/such/checkpoint"], "neither a checkpoint folder"),
        (["model", "build", "--size", "huge"], "invalid choice"),
    ],
)
def test_bad_command_line_is_one_line_error(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_hub_model_offline_is_one_line_error() -> None:
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = run_cli("serve", "--model", "nobody/no-such-model", env=env)
    assert result.returncode == 2
    assert "cannot get model 'nobody/no-such-model'" in result.stderr
    assert "Traceback" not in result.stderr


def _cpuinfo(tmp_path: Path, flags: str) -> str:
    path = tmp_path / f"cpuinfo-{len(list(tmp_path.iterdir()))}"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n")
    return str(path)


def test_bfloat16_arithmetic_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert config_module.cpu_has_bfloat16(_cpuinfo(tmp_path, "fpu avx2 avx512f avx512_bf16"))
    assert config_module.cpu_has_bfloat16(_cpuinfo(tmp_path, "fpu avx2 fma")) is False
    assert config_module.cpu_has_bfloat16(str(tmp_path / "missing")) is None


@pytest.mark.parametrize(
    ("native", "dtype", "stock", "given"),
    [
        (False, "auto", False, "float32"),  # emulated bfloat16: audiotext keeps float32
        (True, "auto", False, "auto"),  # native bfloat16: vLLM's choice
        (None, "auto", False, "auto"),  # unknown CPU: vLLM's choice
        (False, "bfloat16", False, "bfloat16"),  # asked for: given
        (False, "auto", True, "auto"),  # stock vLLM keeps its own default
    ],
)
def test_auto_dtype_on_cpu(
    monkeypatch: pytest.MonkeyPatch, native: bool | None, dtype: str, stock: bool, given: str
) -> None:
    monkeypatch.setattr(config_module, "cpu_has_bfloat16", lambda: native)
    config = ServerConfig(model="tiny", device="cpu", dtype=dtype, stock=stock)
    argv = list(to_vllm(config).argv)
    assert argv[argv.index("--dtype") + 1] == given


def test_auto_dtype_on_cuda_is_vllms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "cpu_has_bfloat16", lambda: False)
    argv = list(to_vllm(ServerConfig(model="tiny", device="cuda")).argv)
    assert argv[argv.index("--dtype") + 1] == "auto"
