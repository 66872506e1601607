"""The phonetic corrector leaves correct text alone: 1,000 real citizen sentences run
through it as if they were transcripts, every character treated as unsure (the
strictest case), with the shipped LM and its fitted settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from asr.normalize import scoring_form
from asr.rescore import load_language_tools
from pipeline.lm_fit import sentences_of

ROOT = Path(__file__).resolve().parents[1]
REPLIED = ROOT.parent / "shared" / "text" / "teddy2020c" / "replied_messages.jsonl"
DEFAULT_LM = ROOT / "models" / "lm" / "default"


def clean_sentences(limit: int = 1000) -> list[str]:
    """Titles and text sentences of the platform's messages, in file order."""
    out: list[str] = []
    for line in REPLIED.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        out += sentences_of(row.get("title") or "") + sentences_of(row.get("text") or "")
        if len(out) >= limit:
            break
    return out[:limit]


@pytest.fixture(scope="module")
def tools():
    if not (DEFAULT_LM / "card.json").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{DEFAULT_LM} is missing: the setup command (minyin models setup) "
                        "builds it")
        pytest.skip(f"{DEFAULT_LM} is not built (run: minyin models setup)")
    return load_language_tools(DEFAULT_LM)


@pytest.mark.skipif(not REPLIED.is_file(), reason=f"{REPLIED} is absent (../shared not here)")
def test_correct_sentences_are_left_alone(tools):
    sentences = clean_sentences()
    assert len(sentences) == 1000
    changed = total = 0
    examples = []
    for sentence in sentences:
        corrections = tools.corrector.find(sentence)
        total += len(scoring_form(sentence))
        if corrections:
            changed += sum(c.changed for c in corrections)
            examples += [f"{c.heard}->{c.word} ({c.gain:.1f})" for c in corrections]
    rate = changed / total
    print(f"false corrections: {changed} of {total} characters ({rate:.3%}): "
          f"{', '.join(examples[:30])}")
    assert rate <= 0.002, f"{changed} of {total} characters changed: {examples[:30]}"
