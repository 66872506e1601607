# The README's commands. `make demo` sets everything up and runs the main job on
# samples/; `make test` runs the test suite. Nothing here needs Redis or PostgreSQL.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/minyin models setup

demo: setup
	$(BIN)/minyin transcribe samples/

test: setup
	$(BIN)/pytest

lint:
	$(BIN)/ruff check .

bench:
	$(BIN)/python bench/compare.py
