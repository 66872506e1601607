# The README's commands. `make demo` sets everything up and runs the main job on
# samples/; `make test` runs the test suite. Nothing here needs Redis or PostgreSQL.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench browser finetune

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/minyin models setup
	$(BIN)/minyin lm fit lm/default samples/manifest.jsonl --unless-fitted

demo: setup
	$(BIN)/minyin transcribe samples/

# The review page's tests drive Debian's Chromium; installed here when missing and
# possible (root with apt), otherwise those tests are skipped with the reason.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -q --no-install-recommends chromium fonts-noto-cjk >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      apt-get install -y -q --no-install-recommends chromium fonts-noto-cjk >/dev/null 2>&1; } || \
	    echo "note: could not install chromium; the review page tests will be skipped"; \
	  else echo "note: no chromium (apt-get install chromium fonts-noto-cjk); the review page tests will be skipped"; fi; }

# The finetune extra (torch's CPU build first: an unpinned torch would be a CUDA one).
finetune: setup
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev,finetune]"

test: setup browser finetune
	$(BIN)/pytest

lint:
	$(BIN)/ruff check .

bench:
	$(BIN)/python bench/compare.py
