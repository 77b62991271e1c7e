# Quickstart: `make run` (set up, then run the pipeline) and `make test` (set up, then the test suite).
VENV ?= .venv
PYTHON ?= python3
# The CPU build keeps a fresh install small. On a GPU machine: make run TORCH_SPEC=torch
# (or install the CUDA torch you want into .venv first; an existing torch is never replaced).
TORCH_SPEC ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run test clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	dvc repro
	@head -n 11 reports/specialization.md | tail -n 7
	@tail -n 1 reports/specialization.md
	@grep -h '"reason"' reports/promotion.json

test: install
	python -m pytest -q

clean:
	rm -rf models data/validated data/tokenized reports
