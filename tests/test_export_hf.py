"""CTranslate2 Whisper -> Hugging Face (issue 6, part 3's base): the round trip
HF -> CT2 -> HF is exact on a tiny random Whisper, and the bundled model's export decodes
real speech to the same greedy tokens as CTranslate2 itself."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from asr.export_hf import ExportError, export_hf, greedy_pair, read_ct2  # noqa: E402
from pipeline.audio import decode_audio  # noqa: E402
from tests.conftest import ROOT, SAMPLES, SHARED_AUDIO, read_manifest, sample_subset  # noqa: E402
from tests.service import MINYIN  # noqa: E402
from tests.whisper_factory import BUNDLED, tiny_whisper  # noqa: E402


def test_round_trip_is_exact_on_a_tiny_whisper(tmp_path: Path) -> None:
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperForConditionalGeneration

    hf = tiny_whisper(tmp_path / "hf")
    TransformersConverter(str(hf)).convert(str(tmp_path / "ct2"), quantization="float32")
    name, variables = read_ct2(tmp_path / "ct2" / "model.bin")
    assert name == "WhisperSpec" and "decoder/embeddings/weight" in variables
    export_hf(tmp_path / "ct2", tmp_path / "back")
    before = WhisperForConditionalGeneration.from_pretrained(hf).state_dict()
    after = WhisperForConditionalGeneration.from_pretrained(tmp_path / "back").state_dict()
    assert set(before) == set(after)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []

    # an int8 model cannot be exported exactly: refused
    TransformersConverter(str(hf)).convert(str(tmp_path / "int8"), quantization="int8")
    with pytest.raises(ExportError, match="quantized"):
        export_hf(tmp_path / "int8", tmp_path / "nope")


@pytest.mark.slow
def test_the_bundled_export_decodes_like_ctranslate2(tmp_path: Path) -> None:
    out = tmp_path / "whisper-base-hf"
    export_hf(BUNDLED, out)
    clips = [decode_audio(SAMPLES / e["audio"]).mono
             for e in read_manifest(SAMPLES / "manifest.jsonl")[:3]]
    if (SHARED_AUDIO / "manifest.jsonl").is_file():
        clips += [decode_audio(SHARED_AUDIO / e["audio"]).mono
                  for e in read_manifest(SHARED_AUDIO / "manifest.jsonl")]
    pairs = greedy_pair(out, BUNDLED, clips)
    assert all(len(ct) > 3 for ct, _ in pairs)
    assert [ct == hf for ct, hf in pairs] == [True] * len(pairs)


@pytest.mark.slow
def test_export_hf_command(tmp_path: Path) -> None:
    manifest = sample_subset(tmp_path / "m.jsonl", 4)
    out = subprocess.run([*MINYIN, "models", "export-hf", "--out", str(tmp_path / "hf"),
                          "--verify", str(manifest)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["same"] is True
    assert (tmp_path / "hf" / "model.safetensors").is_file()


@pytest.mark.slow
def test_the_bundled_model_survives_the_trip_to_transformers_and_back(tmp_path: Path) -> None:
    """CT2 -> HF -> CT2 (float16) gives back the bundled model bit for bit: weights,
    config.json (suppressed tokens, alignment heads, language ids) and vocabulary. What
    `minyin finetune` converts after training is shaped exactly like what it started from."""
    from asr.finetune import convert

    export_hf(BUNDLED, tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "back", "float16")
    _, before = read_ct2(BUNDLED / "model.bin")
    _, after = read_ct2(tmp_path / "back" / "model.bin")
    assert set(before) == set(after)
    assert [k for k in before if before[k].dtype != after[k].dtype
            or not (before[k] == after[k]).all()] == []
    for name in ("config.json", "vocabulary.json", "tokenizer.json"):
        assert json.loads((BUNDLED / name).read_text(encoding="utf-8")) == json.loads(
            (tmp_path / "back" / name).read_text(encoding="utf-8")), name
