# Two commands set fedrec up on a fresh machine:
#   make demo       - create .venv if missing, install, run a federation on the synthetic data
#   make test       - same bootstrap, then the test suite (≤ 6 min on 2 cores)
#   make test-slow  - the runs through Flower's engine and real processes, and the research
#                     checks with quality bars (CI runs both: .ci/run)
# All are idempotent: the install step re-runs only when pyproject.toml changes.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedrec-installed
RUN ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_ENABLE_UV_RUN_RUNTIME_ENV := 0

.PHONY: install demo test test-slow lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,text,torch]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedrec simulate --config simulations/synthetic-quick.toml --out $(RUN)
	@echo "demo run folder: $(RUN)"

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not research"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow or research"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# mypy resolves fedrec.* through a tree of links: the editable install maps the
	@# package folders with an import hook, which mypy does not follow
	@rm -rf build/typecheck && mkdir -p build/typecheck/fedrec
	@for p in common client server deploy simulations; do ln -sfn ../../../$$p build/typecheck/fedrec/$$p; done
	@for f in fedrec/*.py; do ln -sfn ../../../$$f build/typecheck/fedrec/; done
	MYPYPATH=build/typecheck $(VENV)/bin/mypy -p fedrec

clean:
	rm -rf $(VENV) runs build .pytest_cache .ruff_cache .mypy_cache
