# Quickstart: `make run` (set up, then run the pipeline) and `make test` (set up, then the test suite).
VENV ?= .venv
PYTHON ?= python3
# The environment is locked: every package pinned with its hashes, for Linux x86-64 and aarch64 (Python 3.11+).
# TORCH picks the lock: cpu (locks/cpu.txt: the CPU build of torch on x86-64, a small install) or cuda
# (locks/cuda.txt: PyPI's CUDA build): `make run TORCH=cuda` on a GPU machine.
TORCH ?= cpu
LOCK := locks/$(TORCH).txt
TORCH_VERSION := 2.13.0
# Where pip finds the CPU build of torch for x86-64 (PyPI has the CUDA build only). pip's own configuration (local
# wheels, a mirror) is read too, and an index it cannot reach is skipped after a few seconds.
TORCH_INDEX_cpu := https://download.pytorch.org/whl/cpu
TORCH_INDEX ?= $(TORCH_INDEX_$(TORCH))
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# What a lock is made from: pyproject.toml's dependency lists. Each lock's first line carries this digest, so an edit
# to them that was not re-locked stops `make install` instead of installing something else than the lock says.
LOCK_INPUTS = $(shell $(PYTHON) -c 'import hashlib, json, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	print(hashlib.sha256(json.dumps([p["requires-python"], p["dependencies"], p["optional-dependencies"]]).encode()).hexdigest())')

.PHONY: install lock run portfolio test test-long docs docs-site docs-lock ui serve bench clean

# Bytecode is written the first time a process imports a module, and reused after: every stage is a fresh
# process, and without the cache each would compile its imports again. Some images turn the cache off
# (PYTHONDONTWRITEBYTECODE); what make runs has it on. Compiling what is imported, rather than every installed
# module at install (pip's default), makes a fresh install several times faster (benchmarks/RESULTS.md).
unexport PYTHONDONTWRITEBYTECODE

# torch (and uv) go through pip, so that pip's configuration and TORCH_INDEX find the build the lock names (its
# hashes check it; reinstalled, as pip counts 2.13.0+cpu as 2.13.0 and would keep the other build); then uv makes the
# environment exactly the lock (adding, upgrading and removing; about a minute, pip takes three) and adds tailor
# itself. $(VENV)/tailor-lock names the lock installed: the lineage of every promoted model records it.
locked = awk '/^$(1)==/ { keep = 1 } keep { print } keep && !/\\$$/ { keep = 0 }' $(LOCK) > $(VENV)/$(1)-lock.txt
$(VENV)/.installed-$(TORCH): pyproject.toml $(LOCK)
	@grep -q "^# pyproject.toml dependencies: $(LOCK_INPUTS)$$" $(LOCK) || { echo "tailor: pyproject.toml's \
	dependencies differ from those $(LOCK) was made from: run \`make lock\` (then \`dvc repro\`, and commit both locks)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -f $(VENV)/.installed-* $(VENV)/tailor-lock
	$(call locked,torch) && $(BIN)/python -m pip install --quiet --no-compile --no-deps --require-hashes \
		--force-reinstall --retries 0 $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) -r $(VENV)/torch-lock.txt
	$(call locked,uv) && $(BIN)/python -m pip install --quiet --no-deps --require-hashes -r $(VENV)/uv-lock.txt
	$(BIN)/python -m uv pip sync --quiet --python $(BIN)/python --require-hashes $(LOCK)
	$(BIN)/python -m uv pip install --quiet --python $(BIN)/python --no-deps -e .
	echo "$(LOCK) $$(sha256sum $(LOCK) | cut -d ' ' -f 1)" > $(VENV)/tailor-lock
	touch $@

install: $(VENV)/.installed-$(TORCH)

# Re-resolves both locks from pyproject.toml, newest versions within its ranges, torch at TORCH_VERSION. Then
# `dvc repro` (new libraries can change the models' bytes) and commit pyproject.toml, locks/ and dvc.lock together.
# Without the PyTorch index, name a folder that holds the CPU wheel: make lock TORCH_WHEELS=/path/to/wheels
TORCH_WHEELS ?=
LOCK_FLAGS = --quiet --universal --generate-hashes --python-version 3.11 --extra dev --custom-compile-command "make lock"
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv>=0.9"
	mkdir -p locks
	# On Linux x86-64 the CPU build; elsewhere PyPI's build (on Linux aarch64 that is CUDA-enabled: it runs on CPU)
	printf "torch==$(TORCH_VERSION)+cpu ; sys_platform == 'linux' and platform_machine == 'x86_64'\ntorch==$(TORCH_VERSION) ; sys_platform != 'linux' or platform_machine != 'x86_64'\n" > $(VENV)/torch-cpu.txt
	echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-cuda.txt
	$(BIN)/python -m uv pip compile pyproject.toml $(LOCK_FLAGS) --overrides $(VENV)/torch-cpu.txt \
		$(if $(TORCH_WHEELS),--find-links $(TORCH_WHEELS),--extra-index-url $(TORCH_INDEX_cpu) --index-strategy unsafe-best-match) \
		--output-file $(VENV)/cpu.txt
	$(BIN)/python -m uv pip compile pyproject.toml $(LOCK_FLAGS) --overrides $(VENV)/torch-cuda.txt --output-file $(VENV)/cuda.txt
	for kind in cpu cuda; do { echo "# pyproject.toml dependencies: $(LOCK_INPUTS)"; cat $(VENV)/$$kind.txt; } > locks/$$kind.txt; done

run: install
	dvc repro promote
	@head -n 12 reports/specialization.md | tail -n 8
	@tail -n 1 reports/specialization.md
	@grep -h '"approach"\|"reason"' reports/promotion.json

# The portfolio of params.yaml (shipped: the demo portfolio), portfolio/stages.yaml, copied to portfolio/dvc.yaml
# where DVC sees it (tasks/core/dag.py says why it is not there already): every specialization, the
# multi-task model MULTITASK of params.yaml's `multitask`, the cross-evaluation and the multi-task model's promotion
# task by task; prints the matrix, the recommendations and what the multi-task model serves.
MULTITASK ?= all
portfolio: install
	cp portfolio/stages.yaml portfolio/dvc.yaml
	dvc repro portfolio/dvc.yaml:promote_multitask@$(MULTITASK)
	@sed -n '/^| approach/,/^$$/p' reports/portfolio/$(MULTITASK)/portfolio.md
	@sed -n '/^## Recommendation/,$$p' reports/portfolio/$(MULTITASK)/portfolio.md
	@python -c "import json; d = json.load(open('reports/multitask/$(MULTITASK)/promotion.json')); \
	print('\n'.join(f'multi-task model, {n}: {t[\"reason\"]}' for n, t in d['tasks'].items()))"

# Three pytest workers, each test process on one thread. Most tests run stage processes, which spend about a sixth
# of their time waiting (on the Prefect server, on their children), so with two workers on two cores a sixth of the
# CPU idled: a third fills it. tests/conftest.py keeps each module, and the modules sharing a tiny-project build, on
# one worker, and starts one Prefect server for all three.
test: install docs-site
	ruff check .
	OMP_NUM_THREADS=1 python -m pytest -q -n 3 -m "not long" --durations=15

# The three longest end-to-end scenarios (marked `long`): a sweep of three trainings as DVC experiments, a portfolio
# of two specializations and a multi-task model, and two-process training (DDP, FSDP). Together they are about a
# third of the suite's CPU, which on two cores would put `make test` over 15 minutes; CI (.ci/run) runs them after it.
test-long: install
	OMP_NUM_THREADS=1 python -m pytest -q -n 3 -m long --durations=5

# The docs site (mkdocs-material) in site/: its own small environment, locked with hashes in docs/requirements.txt
# (its tools never touch a model, so they stay out of the pipeline's lock and of every stage's dependencies).
# `make docs` writes the generated pages (the configuration reference from the schema, the error catalogue from the
# test corpora) and builds the site; `make test` builds it as committed, strictly: a broken link fails.
DOCS_VENV := .docs-venv
$(DOCS_VENV)/.installed: docs/requirements.txt
	test -x $(DOCS_VENV)/bin/python || $(PYTHON) -m venv $(DOCS_VENV)
	$(DOCS_VENV)/bin/python -m pip install --quiet --no-deps --require-hashes -r docs/requirements.txt
	touch $@
docs-site: $(DOCS_VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --quiet
docs: install $(DOCS_VENV)/.installed
	python -m docs.generate
	NO_MKDOCS_2_WARNING=1 $(DOCS_VENV)/bin/mkdocs build --strict --quiet
	@echo "docs: site/index.html (or $(DOCS_VENV)/bin/mkdocs serve for a live preview on 127.0.0.1:8000)"
docs-lock:
	mkdir -p $(DOCS_VENV) && echo "mkdocs-material==9.8.1" > $(DOCS_VENV)/requirements.in
	$(BIN)/python -m uv pip compile $(DOCS_VENV)/requirements.in --quiet --universal --generate-hashes --python-version 3.11 \
		--custom-compile-command "make docs-lock" --output-file docs/requirements.txt

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
