# radixgen — set-up and the main commands. `make test` and `make demo` work from a fresh clone.
#
# Installs come from requirements.lock (the complete resolved set, with hashes), never from a fresh resolution:
# `make lock` refreshes it deliberately, `make test-latest` tries today's newest releases in a separate venv.
# Code is always run through the venv's console scripts or `python -P`, so the repository root is never on
# sys.path and its top-level folders (kernels/, grammar/, ...) cannot shadow installed packages.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements.lock
# SGLang's own frontend, a real client for the compatibility tests: installed with --no-deps (its serving
# dependencies are CUDA builds); the light packages it imports are dev extras in pyproject.toml
SGLANG_LOCK := requirements-sglang.lock
SGLANG_VERSION := 0.5.23
STAMP := $(VENV)/.installed
PIP_VERSION := 26.3
# torch's CPU wheel (torch==2.13.0+cpu): on this project's machines pip finds it in /opt/wheels (pip's find-links);
# elsewhere point pip at PyTorch's CPU index (PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
TORCH_WHEELS ?= /opt/wheels

# `pip check` of a venv, except sglang's own pins (a serving stack we do not install; see SGLANG_LOCK)
pip_check = @out=$$($(1)/pip check 2>&1 | grep -v -e '^sglang ' -e '^No broken requirements'); \
	if [ -n "$$out" ]; then echo "$$out"; exit 1; else echo "pip check: OK (sglang's server pins aside)"; fi

.PHONY: setup test lint demo bench lock test-latest clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q pip==$(PIP_VERSION)

$(STAMP): $(LOCK) $(SGLANG_LOCK) pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps --require-hashes -r $(SGLANG_LOCK)
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(call pip_check,$(BIN))
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy frontend runtime radix grammar kernels

test: setup lint
	$(BIN)/pytest tests

demo: setup
	$(BIN)/python examples/demo.py --model ../shared/models/stories260K

# Resolve the newest versions allowed by pyproject.toml for this Python and platform, with hashes.
lock: | $(BIN)/python
	test -x $(BIN)/uv || $(BIN)/pip install -q uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --extra bench --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --index-strategy unsafe-best-match \
		--generate-hashes --custom-compile-command "make lock" -o $(LOCK)
	rm -rf $(VENV)/sglang-dl && $(BIN)/pip download -q --no-deps -d $(VENV)/sglang-dl sglang==$(SGLANG_VERSION)
	{ echo "# SGLang's frontend for the compatibility tests, installed with --no-deps by make setup (make lock)"; \
	  echo "sglang==$(SGLANG_VERSION) \\"; \
	  $(BIN)/pip hash $(VENV)/sglang-dl/*.whl | sed -n 's/^--hash=/    --hash=/p'; } > $(SGLANG_LOCK)

# The whole suite against the newest releases that pyproject.toml admits, in its own venv (not part of CI).
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PY) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q pip
	$(LATEST)/bin/pip install -q --upgrade --upgrade-strategy eager -e '.[dev,bench]'
	$(LATEST)/bin/pip install -q --no-deps 'sglang>=$(SGLANG_VERSION),<0.6'
	$(call pip_check,$(LATEST)/bin)
	$(LATEST)/bin/radixgen env --diff-lock $(LOCK)
	$(LATEST)/bin/ruff check .
	$(LATEST)/bin/mypy frontend runtime radix grammar kernels
	$(LATEST)/bin/pytest tests

# Every benchmark writes JSON to benchmarks/results/ and prints PASS/MISS per target (a MISS does not stop the
# run); plots.py then redraws benchmarks/plots/*.png from the JSON. Scripts another change may not have added
# yet are skipped.
BENCH_SCRIPTS := bench_offline bench_host_overhead bench_prefill_flops bench_prefix_cache bench_json_decode \
	bench_scaling bench_memory bench_grammar_step bench_programs

bench: setup
	@set -e; for s in $(BENCH_SCRIPTS); do \
		if [ -f benchmarks/$$s.py ]; then echo "== $$s"; $(BIN)/python benchmarks/$$s.py; \
		else echo "== $$s: not present, skipped"; fi; \
	done
	$(BIN)/python benchmarks/plots.py

clean:
	rm -rf $(VENV) $(LATEST) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
