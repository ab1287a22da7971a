# The two front-door commands: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
RECIPE ?= recipes/llamacpp-smollm2.yaml
PYTEST_ARGS ?=
STAMP := $(VENV)/.aifactory-setup

.PHONY: setup demo test lint format clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup
	$(VENV)/bin/pytest benchmarks/test_inference.py --recipe $(RECIPE) -v $(PYTEST_ARGS)

# as root, the tests run against a development Slurm cluster that is torn down afterwards
# (and chromium, for the check that reports render in a real browser; fio, PostgreSQL and the
# vLLM CPU build, for the service families' tests)
test: setup lint
	bash scripts/install-browser.sh
	bash scripts/install-services.sh
	bash scripts/with-slurm.sh $(VENV)/bin/pytest tests/ $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
