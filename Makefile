# Set-up and checks. `make test` and `make run` create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q

.PHONY: venv test test-serial test-fast run lint bench docs clean

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# The CPU build of torch first; the project's "torch>=2.3" is then already met.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# The whole suite (what CI runs and the README names), across two processes (pytest-xdist),
# which on two cores takes about a fifth less time than one process. `make test-serial` runs
# it in one.
test: venv
	$(PYTEST) -n 2

test-serial: venv
	$(PYTEST)

# The edit-test loop: every module, the tests marked slow left out, across two processes
# (pytest-xdist).
test-fast: venv
	$(PYTEST) -m "not slow" -n 2

run: venv
	$(BIN)/realnvp-explorer

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# docs/cli.md is generated from the argparse parsers (tests/test_docs.py checks it is current).
docs: venv
	$(BIN)/python tools/cli_reference.py

bench: venv
	$(BIN)/realnvp bench

clean:
	rm -rf $(VENV) build *.egg-info
