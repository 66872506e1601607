"""The ``minyin`` command as a user runs it: a subprocess, JSON lines on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ticket_schema import Ticket
from tests.conftest import ROOT, SAMPLES

pytestmark = pytest.mark.slow


def minyin(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MINYIN_")}
    return subprocess.run([sys.executable, "-m", "api.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_transcribe_prints_one_ticket_per_line():
    files = [SAMPLES / "02_gas_smell_stairwell.m4a", SAMPLES / "06_pipe_burst_wechat_silk.amr"]
    done = minyin("transcribe", *map(str, files), "--phone", "13812345678")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2
    tickets = [Ticket.model_validate_json(line) for line in lines]
    assert tickets[1].audio.format == "silk"  # a .amr name, SILK by content
    assert tickets[0].urgency.level == "urgent"  # gas smell in a stairwell
    for line in lines:
        assert "13812345678" not in line and "13905791234" not in line


def test_transcribe_text_and_srt():
    call = str(SAMPLES / "07_hotline_call_manhole_8k_stereo.wav")
    text = minyin("transcribe", "--text", call)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.strip().splitlines()
    assert lines[0].startswith("话务员：") and lines[1].startswith("来电人：")
    srt = minyin("transcribe", "--srt", call)
    assert srt.returncode == 0, srt.stderr
    assert srt.stdout.startswith("1\n00:00:0")
    assert " --> " in srt.stdout and "话务员：" in srt.stdout


def test_bad_files_fail_clearly_and_the_rest_go_on(tmp_path):
    (tmp_path / "note.mp3").write_text("this is not audio")
    (tmp_path / "empty.amr").write_bytes(b"")
    good = SAMPLES / "05_garbage_not_collected.wav"
    done = minyin("transcribe", str(tmp_path / "note.mp3"), str(good),
                  str(tmp_path / "empty.amr"))
    assert done.returncode == 1
    assert len(done.stdout.strip().splitlines()) == 1  # the good file's ticket
    errors = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [(e["file"].split("/")[-1], e["error"]) for e in errors] == [
        ("note.mp3", "not_audio"), ("empty.amr", "empty")]
    assert "Traceback" not in done.stderr


def test_eval_prints_a_json_summary_last(tmp_path):
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio": str(SAMPLES / "05_garbage_not_collected.wav"), "text": "你好"},
            {"audio": str(SAMPLES / "09_medical_insurance_question.mp3"), "text": "你好"}]
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    done = minyin("eval", str(manifest))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["clips"] == 2 and summary["failed"] == 0
    assert {"audio_s", "cer", "rtfx"} <= summary.keys()
    assert summary["audio_s"] > 25 and summary["rtfx"] > 0
    assert "05_garbage_not_collected.wav" in done.stderr  # per-clip lines


def test_eval_reports_a_broken_manifest(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "x.wav"}\n')
    done = minyin("eval", str(manifest))
    assert done.returncode == 2
    assert "expected a JSON object with 'audio' and 'text'" in done.stderr


def test_unknown_dialect_profile():
    wav = str(SAMPLES / "05_garbage_not_collected.wav")
    done = minyin("transcribe", "--dialect", "klingon", wav)
    assert done.returncode == 2
    assert "unknown dialect profile 'klingon'" in done.stderr and "mandarin" in done.stderr


def test_models_setup_is_idempotent():
    done = minyin("models", "setup")
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stderr
    listed = [json.loads(line) for line in minyin("models", "list").stdout.splitlines()]
    assert any(m.get("name") == "whisper-base" for m in listed)


def test_schema_is_the_committed_one():
    done = minyin("schema")
    assert done.returncode == 0
    committed = json.loads((ROOT / "pipeline" / "data" / "ticket.schema.json").read_text())
    assert json.loads(done.stdout) == committed
