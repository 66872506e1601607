"""Shared fixtures: the real model (loaded once per session), data paths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_AUDIO = ROOT.parent / "shared" / "audio"
SHARED_DIALECT = ROOT.parent / "shared" / "audio-dialect"
SAMPLES = ROOT / "samples"


def read_manifest(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip()]


def sample_subset(path: Path, index: int) -> Path:
    """A one-clip manifest (absolute audio path) of samples/' clip number `index`."""
    entry = read_manifest(SAMPLES / "manifest.jsonl")[index]
    path.write_text(json.dumps({"audio": str(SAMPLES / entry["audio"]), "text": entry["text"]},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def shared_manifest() -> list[dict]:
    manifest = SHARED_AUDIO / "manifest.jsonl"
    if not manifest.is_file():
        pytest.skip(f"{manifest} is not here (shared/ sits beside the repository)")
    return read_manifest(manifest)


@pytest.fixture(scope="session")
def samples_manifest() -> list[dict]:
    return read_manifest(SAMPLES / "manifest.jsonl")


@pytest.fixture(scope="session")
def pipeline():
    """The real pipeline with the bundled model, loaded once for the whole run."""
    from pipeline.config import Settings
    from pipeline.process import VoicePipeline

    pipe = VoicePipeline(Settings())
    pipe.transcriber  # noqa: B018 - load now
    return pipe


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
