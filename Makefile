# radixgen — set-up and the main commands. `make test` and `make demo` work from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup test lint demo bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned to the CPU wheel first: an unpinned resolver would pull the CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy frontend runtime radix grammar kernels

test: setup lint
	$(BIN)/python -m pytest tests

demo: setup
	$(BIN)/python examples/demo.py --model ../shared/models/stories260K

# Every benchmark writes JSON to benchmarks/results/ and prints PASS/MISS per target (a MISS does not stop the
# run); plots.py then redraws benchmarks/plots/*.png from the JSON. Scripts another change may not have added
# yet are skipped.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_SCRIPTS := bench_offline bench_host_overhead bench_prefill_flops bench_prefix_cache bench_json_decode \
	bench_scaling bench_memory bench_grammar_step bench_programs

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: setup $(BENCH_STAMP)
	@set -e; for s in $(BENCH_SCRIPTS); do \
		if [ -f benchmarks/$$s.py ]; then echo "== $$s"; $(BIN)/python benchmarks/$$s.py; \
		else echo "== $$s: not present, skipped"; fi; \
	done
	$(BIN)/python benchmarks/plots.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
