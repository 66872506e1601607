"""A whole fine-tuning run (``minyin finetune``): a corrections dataset and a base model
in, a CTranslate2 model with a measured card out, ready for ``minyin models promote``.

1. The dataset is what `minyin corrections export` writes (or `bench/finetune_data.py`):
   ``train.jsonl``, ``validation.jsonl``, ``audio/``, ``data_card.json``.
2. The base is a Hugging Face Whisper directory, or a CTranslate2 model of the registry
   (``whisper-base``, ``NAME/VERSION``), exported to Hugging Face weights first
   (`asr.export_hf`; no hub is reachable here).
3. `asr.finetune.train` trains (LoRA or full), resumable from the work directory's
   checkpoints, and merges the adapters.
4. The result is converted to CTranslate2 twice: float16 in ``OUT`` (GPUs; CPUs load it
   as int8 or float32) and int8 in ``OUT/int8`` (a quarter of the float32 size, for
   CPU-only hosts).
5. The base and the new model transcribe the validation split and a fixed regression
   set through the same pipeline the workers run (denoise, VAD, Whisper, the clip's
   dialect profile), and ``OUT/card.json`` records the CER before and after, the data
   card, the training settings and the loss; the registry reads it on promotion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asr.finetune import Example, FinetuneError, TrainConfig, convert, is_hf_whisper, train
from asr.model import ModelError, forget_model, resolve_model
from asr.profiles import ProfileError, load_profile
from pipeline.audio import AudioError, decode_audio
from pipeline.config import Settings
from pipeline.corrections import DATASET_FORMAT
from pipeline.evaluate import ManifestEntry, ManifestError, load_manifest, run_eval, summarise
from pipeline.process import VoicePipeline

log = logging.getLogger(__name__)
CARD_FORMAT = "minyin-model-card/1"


@dataclass(frozen=True)
class Dataset:
    """The two splits as manifest entries (audio resolved; ``extra`` keeps the dialect)."""

    train: list[ManifestEntry]
    validation: list[ManifestEntry]
    card: dict[str, Any]

    def examples(self, entries: list[ManifestEntry]) -> list[Example]:
        return [Example(e.audio, e.text, _prompt(e.extra.get("dialect"))) for e in entries]


def _prompt(dialect: str | None) -> str | None:
    if not dialect:
        return None
    try:
        return load_profile(dialect).initial_prompt
    except ProfileError as e:
        raise FinetuneError(f"the dataset's dialect {dialect!r} has no profile: {e}") from None


def load_dataset(root: Path) -> Dataset:
    """Read and check a dataset directory; every problem is a FinetuneError naming it."""
    if not root.is_dir():
        raise FinetuneError(f"{root} is not a directory (make one with `minyin corrections "
                            "export --out DIR`)")
    try:
        card = json.loads((root / "data_card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FinetuneError(f"{root}/data_card.json cannot be read: {e}") from None
    if card.get("format") != DATASET_FORMAT:
        raise FinetuneError(f"{root} is a {card.get('format')!r} dataset, not "
                            f"{DATASET_FORMAT}")
    sides: dict[str, list[ManifestEntry]] = {}
    for side in ("train", "validation"):
        path = root / f"{side}.jsonl"
        try:
            entries = load_manifest(path)  # the same lines: audio relative to the file
        except ManifestError as e:
            raise FinetuneError(str(e)) from None
        for entry in entries:
            if not entry.text.strip():
                raise FinetuneError(f"{path}: {entry.audio.name} has no text")
            if not entry.audio.is_file():
                raise FinetuneError(f"{path}: {entry.audio} is missing")
        sides[side] = entries
    if not sides["train"]:
        raise FinetuneError(f"{root}/train.jsonl has no clips")
    if not sides["validation"]:
        raise FinetuneError(f"{root}/validation.jsonl has no clips: the new model's CER "
                            "could not be measured (export with a larger "
                            "--validation-fraction)")
    return Dataset(sides["train"], sides["validation"], card)


@dataclass(frozen=True)
class Base:
    hf: Path  # Hugging Face weights to train from
    ct2: Path  # the same model in CTranslate2, for the "before" CER
    name: str  # as the card and the registry name it


def resolve_base(base: str, settings: Settings, work: Path) -> Base:
    path = Path(base).expanduser()
    if is_hf_whisper(path):
        source = {}
        if (path / "minyin_export.json").is_file():
            source = json.loads((path / "minyin_export.json").read_text(encoding="utf-8"))
        ct2 = Path(source.get("source", ""))
        if not source or not (ct2 / "model.bin").is_file():
            ct2 = convert(path, work / "base-ct2", "float16")
        return Base(path, ct2, source.get("name") or str(path))
    from asr.export_hf import ExportError, export_hf

    try:
        ref = resolve_model(base, settings.models_dir)
    except ModelError as e:
        raise FinetuneError(f"base {base!r}: {e} (give a Hugging Face Whisper directory "
                            "or a CTranslate2 model)") from None
    hf = work / "base-hf"
    if not is_hf_whisper(hf) or json.loads((hf / "minyin_export.json").read_text(
            encoding="utf-8")).get("source") != str(ref.path):
        try:
            export_hf(ref.path, hf)
        except ExportError as e:
            raise FinetuneError(f"base {base!r} cannot be exported: {e}") from None
    spec = base if not Path(base).is_absolute() else ref.path
    return Base(hf, Path(ref.path), spec)


def _eval_key(settings: Settings, model: Path, items: list[ManifestEntry]) -> str:
    """What a measurement depends on: the model's weights (path, size, mtime), the clips
    and the decoding settings. The base is measured once for any number of runs."""
    weights = (model / "model.bin").stat()
    blob = json.dumps([str(model.resolve()), weights.st_size, weights.st_mtime_ns,
                       [(str(i.audio), i.text, i.extra.get("dialect")) for i in items],
                       settings.compute_type, settings.beam_size, settings.device,
                       settings.language])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def evaluate(settings: Settings, model: Path, items: list[ManifestEntry],
             on_clip: Callable[[str], None] | None = None) -> dict[str, Any]:
    """CER of `model` on `items` through the workers' pipeline (the clip's profile);
    a measurement already made with the same weights, clips and settings is reused."""
    cache = settings.data_dir / "finetune" / "eval-cache" / \
        f"{_eval_key(settings, model, items)}.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    pipe = VoicePipeline(settings)
    pipe.use_model(str(model))
    dialects = {i.audio: i.extra.get("dialect") for i in items}

    def one(path: Path) -> tuple[str, float]:
        outcome = pipe.process(path, name=path.name, dialect=dialects[path])
        return outcome.transcript.text, outcome.decoded.duration

    results = []
    for result in run_eval(items, one):
        results.append(result)
        if on_clip:
            on_clip(f"{Path(result.audio).name}\tcer={result.cer:.3f}\t"
                    f"{result.error or result.hypothesis}")
    forget_model(pipe.model_ref)  # measured; its memory can go
    summary = summarise(results)
    measured = {"cer": summary.cer, "clips": summary.clips, "failed": summary.failed,
                "ref_chars": summary.ref_chars, "errors": summary.errors}
    if not summary.failed:  # a failure may be passing; measure again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(measured), encoding="utf-8")
    return measured


def regression_items(manifest: Path) -> list[ManifestEntry]:
    try:
        entries = load_manifest(manifest)
    except ManifestError as e:
        raise FinetuneError(f"regression set: {e}") from None
    for entry in entries:
        if not entry.audio.is_file():
            raise FinetuneError(f"regression set: {entry.audio} is missing")
    return entries


def run_finetune(data: Path, base: str, out: Path, settings: Settings, config: TrainConfig,
                 *, regression: Path | None = None, work: Path | None = None,
                 resume: bool = True, overwrite: bool = False, progress: bool = True,
                 say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Train, convert, measure and write ``out/card.json``; returns the card."""
    out = out.expanduser()
    if (out / "model.bin").exists() and not overwrite:
        raise FinetuneError(f"{out} already holds a model; choose a new version or "
                            "--overwrite")
    name, version = out.parent.name, out.name
    if not name or not version:
        raise FinetuneError(f"--out {out}: use models/NAME/VERSION")
    dataset = load_dataset(data)
    regression_set = regression_items(regression) if regression else []
    work = work or settings.data_dir / "finetune" / f"{name}-{version}"
    started = datetime.now(timezone.utc)

    base_model = resolve_base(base, settings, work)
    say(f"base {base_model.name}: {base_model.hf}; {len(dataset.train)} training and "
        f"{len(dataset.validation)} validation clips")

    def load_audio(path: Path):
        try:
            return decode_audio(path).mono
        except AudioError as e:
            raise FinetuneError(f"{path}: {e}") from None

    result = train(base_model.hf, dataset.examples(dataset.train), work, config,
                   load_audio=load_audio, resume=resume, progress=progress)
    say(f"trained {result.steps} steps ({result.epochs} epochs) on {result.device} in "
        f"{result.wall_s:.0f} s, loss {result.train_loss}")

    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    convert(result.merged_dir, staging, "float16")
    convert(result.merged_dir, staging / "int8", "int8")

    cer: dict[str, Any] = {}
    sets = {"validation": dataset.validation, "regression": regression_set}
    for which, items in sets.items():
        if not items:
            continue
        row: dict[str, Any] = {}
        for when, model in (("before", base_model.ct2), ("after", staging)):
            say(f"CER on the {which} set ({len(items)} clips), {when}")
            measured = evaluate(settings, model, items, on_clip=lambda line: say("  " + line))
            row[when] = measured["cer"]
            row[f"{when}_detail"] = measured
        if which == "regression":
            row["manifest"] = str(regression)
        cer[which] = row
        say(f"{which}: CER {row['before']:.2%} -> {row['after']:.2%}")

    card = {
        "format": CARD_FORMAT, "name": name, "version": version, "base": base_model.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started_at": started.isoformat(timespec="seconds"),
        "data": {"path": str(data), "train_clips": len(dataset.train),
                 "validation_clips": len(dataset.validation), "card": dataset.card},
        "training": {**{k: v for k, v in asdict(config).items() if k != "learning_rate"},
                     "learning_rate": config.lr, "device": result.device,
                     "steps": result.steps, "epochs_done": result.epochs,
                     "wall_s": result.wall_s, "train_loss": result.train_loss,
                     "loss": [list(x) for x in result.loss], "resumed_from": result.resumed_from,
                     "trainable_parameters": result.trainable_parameters,
                     "total_parameters": result.total_parameters},
        "cer": cer,
        "evaluation": {"compute_type": settings.compute_type, "beam_size": settings.beam_size,
                       "device": settings.device},
        "ctranslate2": {"float16": ".", "int8": "int8"},
    }
    _write_card(staging, card)
    _write_card(staging / "int8", {"name": name, "version": version, "quantization": "int8",
                                   "of": f"{name}/{version}", "base": base_model.name,
                                   "cer": cer})
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(out)  # the model appears whole, card included, or not at all
    say(f"wrote {out} (float16) and {out / 'int8'} (int8)")
    return card


def _write_card(path: Path, card: dict[str, Any]) -> None:
    (path / "card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1),
                                    encoding="utf-8")
