"""Every refusal names what it refuses: the directory, the file and line, the field. The
CLI exits 2 with the reason on stderr and no traceback; the batch's manifest reader
raises `SourceError` with the same words."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from api.cli import app
from pipeline.batch import SourceError, read_source
from pipeline.evaluate import ManifestError, load_manifest

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def run(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


def test_transcribe_a_directory_without_audio_names_it(tmp_path: Path) -> None:
    empty = tmp_path / "inbox"
    empty.mkdir()
    done = run("transcribe", str(empty))
    assert done.exit_code == 2
    assert f"{empty}: no audio files in this directory (it is empty)" in done.output
    (empty / "notes.txt").write_text("not audio")
    (empty / "x.mp3").write_text("not audio either")
    done = run("transcribe", str(empty))
    assert done.exit_code == 2
    assert f"{empty}: no audio files in this directory (2 files, none audio by content)" \
        in done.output


OBJECT = "expected a JSON object with 'audio' and 'text'"


@pytest.mark.parametrize(("content", "said"), [
    (b'{"text": "hi"}\n', f"m.jsonl:1: {OBJECT}: no 'audio'"),
    (b'{"audio": "a.wav"}\n', f"m.jsonl:1: {OBJECT}: no 'text'"),
    (b'\n["a.wav", "hi"]\n', f"m.jsonl:2: {OBJECT}, not list"),
    (b'{"audio": "a.wav", "text": "hi"}\n{oops\n', "m.jsonl:2: not JSON"),
    (b'{"audio": "a.wav", "text": "\xe4\xbd"}\n', "m.jsonl:1: not UTF-8 text"),
])
def test_an_eval_manifest_line_is_named(tmp_path: Path, content: bytes, said: str) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(content)
    with pytest.raises(ManifestError, match=said.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[")):
        load_manifest(manifest)
    done = run("eval", str(manifest))
    assert done.exit_code == 2 and said in done.output


@pytest.mark.parametrize(("name", "content", "said"), [
    ("calls.jsonl", b'{"path": "a.wav"}\n{"call_id": "b"}\n', "calls.jsonl:2: no 'path'"),
    ("calls.jsonl", b'"a.wav"\n', "calls.jsonl:1: expected a JSON object with 'path', not str"),
    ("calls.csv", b"call_id,caller\nc1,138\n", "calls.csv:1: the header names no 'path' column"),
    ("calls.csv", b"path,call_id\na.wav,c1\n,c2\n", "calls.csv:3: no 'path'"),
    ("calls.csv", b'path,call_id\na.wav,"c1"x\n', "calls.csv:2: not CSV"),
    ("calls.csv", b"\xff\xfe\x00p\x00a\x00t\x00h", "calls.csv:1: not UTF-8 text"),
    ("calls.csv", b"path,started_at\na.wav,yesterday\n", "calls.csv:2: started_at 'yesterday'"),
])
def test_a_batch_manifest_is_named_to_the_line(tmp_path: Path, name: str, content: bytes,
                                               said: str) -> None:
    source = tmp_path / name
    source.write_bytes(content)
    with pytest.raises(SourceError) as caught:
        read_source(source)
    assert said in str(caught.value) and str(tmp_path) in str(caught.value)
    done = run("batch", str(source), "--out", str(tmp_path / "out"))
    assert done.exit_code == 2 and said in done.output
    assert not (tmp_path / "out").exists()  # nothing started


def test_a_batch_directory_without_recordings_is_named(tmp_path: Path) -> None:
    done = run("batch", str(tmp_path), "--out", str(tmp_path / "out"))
    assert done.exit_code == 2 and f"no recordings in {tmp_path}" in done.output
    done = run("batch", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "out"))
    assert done.exit_code == 2
    assert "nope.txt: not a directory, a .csv or a .jsonl manifest" in done.output


def test_typed_message_lines_name_the_line_that_is_not_utf8(tmp_path: Path) -> None:
    from pipeline.messages import read_message_lines

    source = tmp_path / "messages.jsonl"
    source.write_bytes('{"id": "a", "text": "路灯坏了"}\n'.encode()
                       + b'{"id": "b", "text": "\xe4"}\n'
                       + '{"id": "c", "text": "垃圾没人收"}\n'.encode())
    lines = list(read_message_lines(source))
    assert [(x.line, x.id, x.error) for x in lines] == [
        (1, "a", None), (2, None, "not UTF-8 text (byte 21 of the line)"), (3, "c", None)]


def test_a_detector_manifest_line_is_named(tmp_path: Path) -> None:
    from pipeline.dialect import DetectorError, read_manifests

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('["a.wav", "wu"]\n')
    with pytest.raises(DetectorError, match=r"manifest\.jsonl:1: expected a JSON object"):
        read_manifests(manifest)
    manifest.write_bytes(b'{"audio": "a.wav", "lang": "\xff"}\n')
    with pytest.raises(DetectorError, match=r"manifest\.jsonl:1: not UTF-8 text"):
        read_manifests(manifest)
