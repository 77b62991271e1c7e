# Quickstart: `make run` (set up, then run the pipeline) and `make test` (set up, then the test suite).
VENV ?= .venv
PYTHON ?= python3
# The CPU build keeps a fresh install small. On a GPU machine: make run TORCH_SPEC=torch
# (or install the CUDA torch you want into .venv first; an existing torch is never replaced).
TORCH_SPEC ?= torch==2.13.0
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)

.PHONY: install run portfolio test ui serve bench clean

# Bytecode is written the first time a process imports a module, and reused after: every stage is a fresh
# process, and without the cache each would compile its imports again. Some images turn the cache off
# (PYTHONDONTWRITEBYTECODE); what make runs has it on. Compiling what is imported, rather than all 24,000 installed
# modules at install (pip's default): a fresh install here takes 29 s instead of 109 s, and the first imports of the
# pipeline's libraries then compile about 5,000 modules once (about 27 s).
unexport PYTHONDONTWRITEBYTECODE

# torch goes through pip, so that pip's own configuration (a CUDA index, local wheels) picks the build; the rest
# through uv, which resolves and installs the same versions as pip in about a minute instead of three.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv>=0.9"
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet --no-compile "$(TORCH_SPEC)"
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python -e ".[dev]"
	touch $@

install: $(VENV)/.installed

run: install
	dvc repro promote
	@head -n 11 reports/specialization.md | tail -n 7
	@tail -n 1 reports/specialization.md
	@grep -h '"reason"' reports/promotion.json

# The portfolio of params.yaml (shipped: the demo portfolio): every specialization, the multi-task model MULTITASK
# of params.yaml's `multitask`, the cross-evaluation and the multi-task model's promotion task by task; prints the
# matrix, the recommendations and what the multi-task model serves.
MULTITASK ?= all
portfolio: install
	dvc repro promote_multitask@$(MULTITASK)
	@sed -n '/^| approach/,/^$$/p' reports/portfolio/$(MULTITASK)/portfolio.md
	@sed -n '/^## Recommendation/,$$p' reports/portfolio/$(MULTITASK)/portfolio.md
	@python -c "import json; d = json.load(open('reports/multitask/$(MULTITASK)/promotion.json')); \
	print('\n'.join(f'multi-task model, {n}: {t[\"reason\"]}' for n, t in d['tasks'].items()))"

# Three pytest workers, each test process on one thread. Most tests run stage processes, which spend about a sixth
# of their time waiting (on the Prefect server, on their children), so with two workers on two cores a sixth of the
# CPU idled: a third fills it. tests/conftest.py keeps each module, and the modules sharing a tiny-project build, on
# one worker, and starts one Prefect server for all three.
test: install
	ruff check .
	OMP_NUM_THREADS=1 python -m pytest -q -n 3

# A local Prefect server (127.0.0.1, SQLite under ~/.prefect), the deployments of prefect.yaml, and a process
# worker that runs them; Ctrl-C stops all of it. The UI is told its API's address: without PREFECT_UI_API_URL it
# would call 127.0.0.1:4200 whatever PREFECT_PORT is. The API asks for a login (PREFECT_SERVER_API_AUTH_STRING,
# user:password; a random one unless you set it) and answers cross-origin calls from its own UI only: without both,
# any web page the operator opens could start a run through the open API on loopback.
PREFECT_PORT ?= 4200
ui: install
	@trap 'kill 0' EXIT; \
	export PREFECT_SERVER_API_AUTH_STRING="$${PREFECT_SERVER_API_AUTH_STRING:-admin:$$(python -c 'import secrets; print(secrets.token_urlsafe(18))')}"; \
	export PREFECT_API_AUTH_STRING="$$PREFECT_SERVER_API_AUTH_STRING"; \
	PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api \
	PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS=http://127.0.0.1:$(PREFECT_PORT) \
	prefect server start --host 127.0.0.1 --port $(PREFECT_PORT) > prefect-server.log 2>&1 & \
	export PREFECT_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api; \
	python -c "import time, urllib.request as u; exec('while True:\n try: u.urlopen(\'$$PREFECT_API_URL/health\'); break\n except OSError: time.sleep(1)')"; \
	prefect work-pool create tailor --type process --overwrite > /dev/null; \
	prefect --no-prompt deploy --all > /dev/null; \
	echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  log in with: $$PREFECT_API_AUTH_STRING  (deployment specialize/weekly; Ctrl-C stops the server and worker)"; \
	echo "Other shells: export PREFECT_API_URL=$$PREFECT_API_URL PREFECT_API_AUTH_STRING='$$PREFECT_API_AUTH_STRING'  (stage runs then show in the UI and start faster)"; \
	prefect worker start --pool tailor

# The promoted model (and the base model) over an OpenAI-compatible API on 127.0.0.1:8000; see README.
serve: install
	tailor serve

# P1 training, P8 training by data format, P3 generation, P7 serving, P6 data at scale (10k and 100k rows), P2
# orchestration (about 35 min in all);
# not part of `make test`. With P6's 1M point: make bench BENCH_ARGS="--prefect server --p6-max-rows 1000000"
BENCH_ARGS ?= --prefect server
bench: install
	python -m benchmarks.run_all $(BENCH_ARGS)

clean:
	rm -rf models data/validated data/tokenized reports
