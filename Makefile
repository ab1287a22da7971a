# The two front-door commands: `make demo` and `make test`. Both set up .venv first.
# The inner loop while changing the code: `make check` (lint, type check, unit tests).
VENV ?= .venv
RECIPE ?= recipes/llamacpp-smollm2.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.aifactory-setup
DEV_STAMP := $(VENV)/.aifactory-dev
# unit tests: no real server, service binary, root or Slurm (soak tests never run by default)
UNIT_TESTS := not slow and not slurm and not requires

.PHONY: setup dev demo test check lint unit format clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@ $(DEV_STAMP)

# the package and its dev tools, without the llama.cpp build: all that `make check` needs
dev: $(DEV_STAMP)

$(DEV_STAMP): pyproject.toml
	bash scripts/setup.sh --dev $(VENV)
	touch $@

demo: setup
	$(VENV)/bin/pytest benchmarks/test_inference.py --recipe $(RECIPE) -v $(PYTEST_ARGS)

# as root, the tests run against a development Slurm cluster that is torn down afterwards
# (and chromium, for the check that reports render in a real browser; fio, PostgreSQL and the
# vLLM CPU build, for the service families' tests); the slowest tests are listed at the end
test: setup lint
	bash scripts/install-browser.sh
	bash scripts/install-services.sh
	bash scripts/with-slurm.sh $(VENV)/bin/pytest tests/ --durations=25 $(PYTEST_ARGS)

check: lint unit

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# names the tests over 2 s: a unit test that slow belongs under `slow`
unit: dev
	$(VENV)/bin/pytest tests/ -m "$(UNIT_TESTS)" -q --durations=5 --durations-min=2 $(PYTEST_ARGS)

format: dev
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
