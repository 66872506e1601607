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

Learning without forgetting: a ``replay.jsonl`` beside the splits (or ``replay=``) is
general speech the base already handles; the base transcribes it once and its own text
is the target (`pseudo_labels`), mixed into every batch with a KL term to the base
(`asr.finetune`). With a real-speech development set (``dev=``) and several merge
scales, the run merges the learned change at each, measures the validation split and
the development set, and keeps the scale with the largest validation gain that holds
the development set within `DEV_TOLERANCE` of the base (`choose_merge_scale`, WiSE-FT).
Each gain comes with a paired bootstrap interval (`pipeline.evaluate.bootstrap_gain`),
which the registry's gate reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asr.finetune import (
    Example,
    FinetuneError,
    TrainConfig,
    convert,
    is_hf_whisper,
    merge_at,
    train,
)
from asr.model import ModelError, forget_model, resolve_model
from asr.profiles import ProfileError, load_profile
from pipeline.audio import AudioError, decode_audio
from pipeline.config import Settings
from pipeline.corrections import DATASET_FORMAT
from pipeline.evaluate import (
    ManifestEntry,
    ManifestError,
    bootstrap_gain,
    load_manifest,
    run_eval,
    summarise,
)
from pipeline.process import VoicePipeline

log = logging.getLogger(__name__)
CARD_FORMAT = "minyin-model-card/1"
# how much worse (CER, absolute) the real-speech development set may get at the chosen
# merge scale: the registry's regression gate allows the same
DEV_TOLERANCE = 0.005
MERGE_SCALES: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class Dataset:
    """The two splits as manifest entries (audio resolved; ``extra`` keeps the dialect)."""

    train: list[ManifestEntry]
    validation: list[ManifestEntry]
    card: dict[str, Any]
    # general speech to replay (``replay.jsonl``; its text is not used: the base's is)
    replay: list[ManifestEntry] = field(default_factory=list)

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
    replay = replay_items(root / "replay.jsonl") if (root / "replay.jsonl").is_file() else []
    return Dataset(sides["train"], sides["validation"], card, replay)


def replay_items(manifest: Path) -> list[ManifestEntry]:
    """A replay manifest's clips (lines with ``audio``; ``text`` is optional)."""
    rows = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = (manifest.parent / row.pop("audio")).resolve()
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FinetuneError(f"{manifest}:{number}: expected a JSON object with "
                                f"'audio' ({e})") from None
        if not audio.is_file():
            raise FinetuneError(f"{manifest}:{number}: {audio} is missing")
        rows.append(ManifestEntry(audio, str(row.pop("text", "")), row))
    return rows


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
    blob = json.dumps(["v2", str(model.resolve()), weights.st_size, weights.st_mtime_ns,
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
                "ref_chars": summary.ref_chars, "errors": summary.errors,
                "cer_numbers": summary.cer_numbers,
                # paired per clip, in the items' order: what the bootstrap resamples
                "per_clip": [[Path(r.audio).name, r.errors, r.ref_chars, r.errors_numbers,
                              r.ref_chars_numbers] for r in results]}
    if not summary.failed:  # a failure may be passing; measure again next time
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(measured), encoding="utf-8")
    return measured


def gain(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The CER gain from `before` to `after` (two `evaluate` results on the same
    clips) with its 95 % paired bootstrap interval, raw and with numbers in one form."""
    def pairs(m: dict[str, Any], numbers: bool) -> list[tuple[int, int]]:
        return [(c[3], c[4]) if numbers else (c[1], c[2]) for c in m["per_clip"]]

    points, low, high = bootstrap_gain(pairs(before, False), pairs(after, False))
    n_points, n_low, n_high = bootstrap_gain(pairs(before, True), pairs(after, True))
    return {"points": round(points * 100, 2), "interval": [round(low * 100, 2),
                                                           round(high * 100, 2)],
            "level": 0.95, "numbers": {"points": round(n_points * 100, 2),
                                       "interval": [round(n_low * 100, 2),
                                                    round(n_high * 100, 2)]},
            "clips": before["clips"], "ref_chars": before["ref_chars"]}


def choose_merge_scale(curve: list[dict[str, float]], base: dict[str, float], *,
                       tolerance: float = DEV_TOLERANCE) -> tuple[float, str]:
    """(scale, why) from a merge curve: rows ``{"scale", "validation", "dev"}`` (CER),
    `base` the base's ``{"validation", "dev"}``. The largest validation gain among the
    scales that keep the development set within `tolerance` of the base; on a tie the
    smaller scale (nearer the base). When none does, the scale that hurts the
    development set least, and `why` says so (the registry's gate will refuse it if the
    regression set agrees)."""
    if not curve:
        raise FinetuneError("no merge scales were measured")
    kept = [r for r in curve if r["dev"] - base["dev"] <= tolerance + 1e-9]
    if kept:
        best = min(kept, key=lambda r: (r["validation"], r["scale"]))
        return best["scale"], (f"largest validation gain with the development set within "
                               f"{tolerance * 100:g} point of the base")
    best = min(curve, key=lambda r: (r["dev"], r["scale"]))
    return best["scale"], (f"no scale kept the development set within {tolerance * 100:g} "
                           "point of the base: the one that hurt it least")


def pseudo_labels(settings: Settings, base_ct2: Path, items: list[ManifestEntry],
                  say: Callable[[str], None] = log.info) -> list[Example]:
    """Replay examples: each clip with the base model's own transcript as its target:
    its greedy decoding as it is trained (no timestamps, no prompt, simplified), the
    sequence the KL term's teacher would write itself. Clips it hears nothing in are
    left out. Cached: the base transcribes a replay set once."""
    from asr.model import ModelRef, load_whisper
    from asr.normalize import to_simplified

    cache = settings.data_dir / "finetune" / "pseudo-labels" / \
        f"{_eval_key(settings, base_ct2, items)}.json"
    if cache.is_file():
        texts = json.loads(cache.read_text(encoding="utf-8"))
    else:
        model = load_whisper(ModelRef(str(base_ct2), base_ct2.name, "base"),
                             device=settings.device, compute_type=settings.compute_type,
                             cpu_threads=settings.cpu_threads)
        texts = []
        for k, item in enumerate(items, 1):
            try:
                audio = decode_audio(item.audio).mono
            except AudioError as e:
                raise FinetuneError(f"replay clip {item.audio}: {e}") from None
            segments, _ = model.transcribe(audio, language=settings.language, beam_size=1,
                                           without_timestamps=True,
                                           condition_on_previous_text=False)
            texts.append(to_simplified("".join(s.text for s in segments).strip()))
            if k % 25 == 0:
                say(f"  pseudo-labels {k}/{len(items)}")
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    return [Example(item.audio, text, None, replay=True)
            for item, text in zip(items, texts, strict=True) if text.strip()]


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
                 dev: Path | None = None, replay: Path | None = None,
                 merge_scales: Sequence[float] | None = None,
                 say: Callable[[str], None] = log.info) -> dict[str, Any]:
    """Train, convert, measure and write ``out/card.json``; returns the card.

    `replay`: a manifest of general speech (default: the dataset's ``replay.jsonl``).
    `merge_scales` with a `dev` manifest: choose the merge scale on them
    (`choose_merge_scale`); otherwise the model is merged at ``config.merge_scale``."""
    out = out.expanduser()
    if (out / "model.bin").exists() and not overwrite:
        raise FinetuneError(f"{out} already holds a model; choose a new version or "
                            "--overwrite")
    name, version = out.parent.name, out.name
    if not name or not version:
        raise FinetuneError(f"--out {out}: use models/NAME/VERSION")
    dataset = load_dataset(data)
    regression_set = regression_items(regression) if regression else []
    dev_set = regression_items(dev) if dev else []
    replay_set = replay_items(replay) if replay else dataset.replay
    choosing = bool(merge_scales) and bool(dev_set)
    if merge_scales and not dev_set:
        raise FinetuneError("choosing the merge scale needs a real-speech development set "
                            "(--dev MANIFEST); or give one --merge-scale")
    if choosing and any(not 0 < x <= 1 for x in merge_scales or ()):
        raise FinetuneError(f"merge scales {list(merge_scales or ())} must be in (0, 1]")
    work = work or settings.data_dir / "finetune" / f"{name}-{version}"
    started = datetime.now(timezone.utc)

    base_model = resolve_base(base, settings, work)
    say(f"base {base_model.name}: {base_model.hf}; {len(dataset.train)} training, "
        f"{len(dataset.validation)} validation and {len(replay_set)} replay clips")
    replayed = []
    if replay_set and config.replay_share > 0:
        say(f"the base transcribes {len(replay_set)} replay clips (its text is the target)")
        replayed = pseudo_labels(settings, base_model.ct2, replay_set, say)

    def load_audio(path: Path):
        try:
            return decode_audio(path).mono
        except AudioError as e:
            raise FinetuneError(f"{path}: {e}") from None

    trained_config = replace(config, merge_scale=1.0) if choosing else config
    result = train(base_model.hf, [*dataset.examples(dataset.train), *replayed], work,
                   trained_config, load_audio=load_audio, resume=resume, progress=progress)
    say(f"trained {result.steps} steps ({result.epochs} epochs) on {result.device} in "
        f"{result.wall_s:.0f} s, loss {result.train_loss}")

    def measure(model: Path, which: str, items: list[ManifestEntry],
                when: str) -> dict[str, Any]:
        say(f"CER on the {which} set ({len(items)} clips), {when}")
        return evaluate(settings, model, items, on_clip=lambda line: say("  " + line))

    merge: dict[str, Any] = {"scale": config.merge_scale, "chosen_by": "given"}
    chosen_hf = result.merged_dir
    # the chosen scale's validation measurement: its float16 conversion is the model's
    measured_at: dict[float, dict[str, Any]] = {}
    if choosing:
        base_row = {"validation": measure(base_model.ct2, "validation", dataset.validation,
                                          "base")["cer"],
                    "dev": measure(base_model.ct2, "dev", dev_set, "base")["cer"]}
        curve = []
        for scale in sorted(set(merge_scales or ())):
            hf = result.merged_dir if scale == 1 else merge_at(
                base_model.hf, result.merged_dir, scale, work / f"merge-{scale:g}")
            ct2 = convert(hf, work / f"merge-{scale:g}-ct2", "float16")
            measured_at[scale] = measure(ct2, "validation", dataset.validation,
                                         f"merged at {scale:g}")
            row = {"scale": scale, "validation": measured_at[scale]["cer"],
                   "dev": measure(ct2, "dev", dev_set, f"merged at {scale:g}")["cer"]}
            say(f"merge {scale:g}: validation {row['validation']:.2%}, dev {row['dev']:.2%}")
            curve.append(row)
        scale, why = choose_merge_scale(curve, base_row)
        say(f"merge scale {scale:g}: {why}")
        chosen_hf = result.merged_dir if scale == 1 else work / f"merge-{scale:g}"
        merge = {"scale": scale, "chosen_by": why, "tolerance": DEV_TOLERANCE,
                 "base": base_row, "curve": curve,
                 "dev": {"manifest": str(dev), "clips": len(dev_set),
                         "ref_chars": sum(len(i.text) for i in dev_set)}}

    staging = out.with_name(f".{out.name}.partial")
    if staging.exists():
        shutil.rmtree(staging)
    convert(chosen_hf, staging, "float16")
    convert(chosen_hf, staging / "int8", "int8")

    cer: dict[str, Any] = {}
    sets = {"validation": dataset.validation, "regression": regression_set}
    for which, items in sets.items():
        if not items:
            continue
        row: dict[str, Any] = {}
        for when, model in (("before", base_model.ct2), ("after", staging)):
            if when == "after" and which == "validation" and merge["scale"] in measured_at:
                measured = measured_at[merge["scale"]]
            else:
                measured = measure(model, which, items, when)
            row[when] = measured["cer"]
            row[f"{when}_detail"] = measured
        row["gain"] = gain(row["before_detail"], row["after_detail"])
        if which == "regression":
            row["manifest"] = str(regression)
        cer[which] = row
        say(f"{which}: CER {row['before']:.2%} -> {row['after']:.2%} (gain "
            f"{row['gain']['points']:+.2f} points, 95% interval "
            f"{row['gain']['interval'][0]:+.2f} to {row['gain']['interval'][1]:+.2f})")

    card = {
        "format": CARD_FORMAT, "name": name, "version": version, "base": base_model.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started_at": started.isoformat(timespec="seconds"),
        "data": {"path": str(data), "train_clips": len(dataset.train),
                 "validation_clips": len(dataset.validation),
                 "replay_clips": len(replayed), "card": dataset.card},
        "training": {**{k: v for k, v in asdict(config).items()
                        if k not in ("learning_rate", "merge_scale")},
                     "merge_scale": merge["scale"],
                     "learning_rate": config.lr, "device": result.device,
                     "steps": result.steps, "epochs_done": result.epochs,
                     "wall_s": result.wall_s, "train_loss": result.train_loss,
                     "loss": [list(x) for x in result.loss], "resumed_from": result.resumed_from,
                     "trainable_parameters": result.trainable_parameters,
                     "total_parameters": result.total_parameters,
                     "replay": {"clips": len(replayed), "share": config.replay_share,
                                "kl_weight": config.kl_weight,
                                "kl_temperature": config.kl_temperature,
                                "manifest": str(replay) if replay else
                                ("replay.jsonl" if dataset.replay else None)}},
        "merge": merge,
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
