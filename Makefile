# Instrumentality suite. `make sweep` and `make test` each set up .venv themselves on first use.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# CPU machines get the CPU torch wheel pinned here (and only here); GPU boxes take the range in pyproject.
TORCH_CPU ?= torch==2.13.0
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
PRESET ?= $(if $(HAS_CUDA),full,quick)
LAUNCHER ?= basic          # basic | joblib | local | slurm | slurm_gpu (configs/hydra/launcher/); settings through ARGS
ARGS ?=                    # extra overrides for every run, e.g. ARGS="hydra.launcher.partition=gpu"
# units (experiment, seed) at once: without CUDA two, one thread each (the tiny quick models use two
# threads poorly); with CUDA four processes share the GPU (one small model's process leaves it mostly
# idle; not yet timed on a GPU: scripts/device_check.sh does); see docs/usage.md, "Lanes"
LANES ?= $(if $(HAS_CUDA),4,2)
export WANDB_SILENT ?= true

.PHONY: help install test test-fast sweep check-full compare figures coverage bench lint clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

install: $(STAMP)  ## create .venv and install the package (a fast no-op once done)

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@if [ -z "$(HAS_CUDA)" ]; then echo "no CUDA: installing the CPU torch wheel ($(TORCH_CPU))"; \
		$(PY) -m pip install -q --no-compile "$(TORCH_CPU)"; fi
	$(PY) -m pip install -q --no-compile -e '.[dev,launchers,tuning]'
	@# bytecode on every core (pip compiles on one): 59 + 37 s here instead of 103-149 s
	@$(PY) -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1 || true  # a stray file that does not compile is skipped, as pip does
	@touch $(STAMP)

test: install  ## run the test suite (W&B disabled)
	WANDB_MODE=disabled $(PY) -m pytest

test-fast: install  ## the inner loop: every test but the end-to-end ones marked slow
	WANDB_MODE=disabled $(PY) -m pytest -m "not slow"

sweep: install  ## run every experiment (quick preset without CUDA, full with), evaluate, draw figures
	$(PY) scripts/sweep.py --preset $(PRESET) --launcher $(LAUNCHER) --lanes $(LANES) $(ARGS)

check-full: install  ## every job of the full preset, 2 steps each, 1 seed, on this machine (about 3 min on 2 CPU cores)
	@dir=$$(mktemp -d -t check-full.XXXXXX) && echo "runs and results under $$dir" && \
	WANDB_MODE=disabled $(PY) scripts/sweep.py --preset full --lanes $(LANES) --seeds 1 --runs-root $$dir/runs \
		--results $$dir/results trainer.max_steps=2 F4_sb3:budget.sb3_steps.full=512 trainer.eval_every=0 \
		logger=none && \
	! grep -l '"failed"' $$dir/runs/full/*/*/summary.json && rm -rf $$dir || (echo "failed runs above (kept in $$dir)"; exit 1)

compare: install  ## after a sweep: each claim's new value against the committed table's interval
	$(PY) scripts/compare.py --preset $(PRESET)

figures: install  ## redraw figures and REPORT.md from results/<preset>/results.csv
	$(PY) scripts/figures.py --preset $(PRESET)

coverage: install  ## the verdict rule's intervals' coverage by simulation (results/coverage/, about 4 minutes)
	$(PY) -m instrumentality.coverage --out results/coverage

bench: install  ## throughput ratios against plain reference loops
	$(PY) scripts/bench.py

lint: install  ## ruff, and mypy on src/ (the Regime protocol is checked statically)
	$(VENV)/bin/ruff check src tests scripts
	$(VENV)/bin/mypy

clean:  ## remove run folders and caches (keeps .venv and results/)
	rm -rf runs outputs multirun wandb .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
