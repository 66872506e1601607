"""The model registry: which Whisper model transcribes, and how a new one gets there.

Models live under ``models_dir``: the bundled ``whisper-base`` and fine-tuned ones as
``NAME/VERSION`` directories, each a CTranslate2 model with a ``card.json``. A card
names the model (``name``, ``version``) and, for a fine-tuned one, its measured CER::

    {"name": "pujiang", "version": "2026-11-23", "base": "whisper-base",
     "cer": {"validation": {"before": 0.31, "after": 0.24},
             "regression": {"before": 0.14, "after": 0.145}}, ...}

The current model is a row in the store (`Store.current_model`), shared by every host.
`promote` checks the candidate loads, that its validation CER is no worse than the
current model's (or, when the current model has no CER of its own, than its own base's
on the same validation split), and that the card's regression set got no more than one
point worse than under its base; `force` overrides those checks, and the row says so.
`rollback` makes the model before the current one current again. Workers compare the
current row with what they have loaded at the start of every job
(`VoicePipeline.use_model`), so a promotion reaches them without a restart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr.model import BUNDLED_NAME, ModelError, ModelRef, load_whisper, resolve_model
from pipeline.config import Settings
from pipeline.store import ModelPromotion, Store

# how much worse the fixed regression set may get (CER, absolute) before a promotion is
# refused: a model tuned to one county must not forget how everyone else speaks
REGRESSION_TOLERANCE = 0.005
# the regression set must be large enough for that to mean something: at 800 reference
# characters one point is 8 characters (6 clips of 122 made one point 1.2 characters)
MIN_REGRESSION_CHARS = 800


class RegistryError(ValueError):
    """A promotion or rollback refused; the message says why."""


@dataclass(frozen=True)
class ModelEntry:
    model: str  # the spec: "whisper-base" or "NAME/VERSION"
    card: dict[str, Any]
    current: bool

    @property
    def validation_cer(self) -> float | None:
        return validation_cer(self.card)


def read_card(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "card.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def validation_cer(card: dict[str, Any], which: str = "after") -> float | None:
    value = (card.get("cer") or {}).get("validation", {}).get(which)
    return float(value) if isinstance(value, (int, float)) else None


def current_spec(store: Store, settings: Settings) -> str:
    """What the workers should load: the registry's current model, else MINYIN_MODEL."""
    row = store.current_model()
    return row.model if row is not None else settings.model


def list_models(store: Store, settings: Settings) -> list[ModelEntry]:
    root = settings.models_dir
    current = current_spec(store, settings)
    entries = []
    for model_bin in sorted(root.glob("**/model.bin")):
        if (model_bin.parent.parent / "model.bin").is_file():
            continue  # a variant of a model (NAME/VERSION/int8), listed in its card
        spec = str(model_bin.parent.relative_to(root))
        entries.append(ModelEntry(spec, read_card(model_bin.parent), spec == current))
    return entries


def _spec_of(model: str, settings: Settings) -> tuple[str, Path]:
    """The spec as stored (relative to models_dir when it is under it) and its directory."""
    if model == BUNDLED_NAME:
        return model, settings.models_dir / BUNDLED_NAME
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = settings.models_dir / model
    path = path.resolve()
    try:
        return str(path.relative_to(settings.models_dir.resolve())), path
    except ValueError:
        return str(path), path


def promote(store: Store, settings: Settings, model: str, *, author: str,
            force: bool = False, reason: str | None = None) -> ModelPromotion:
    spec, _ = _spec_of(model, settings)
    try:
        ref = resolve_model(spec, settings.models_dir)
        # it must load here, not first on a worker at 3 a.m.
        load_whisper(ref, device="cpu", compute_type="int8", cpu_threads=1)
    except ModelError as e:
        raise RegistryError(f"{spec} cannot be promoted: {e}") from None
    current = current_spec(store, settings)
    if spec == current:
        raise RegistryError(f"{spec} is already the current model")
    card = read_card(Path(ref.path))
    candidate = validation_cer(card)
    _, current_path = _spec_of(current, settings)
    baseline = validation_cer(read_card(current_path))
    compared_to = f"the current model {current}"
    if baseline is None and card.get("base") in (current, Path(current).name):
        baseline, compared_to = validation_cer(card, "before"), f"its base {current}"
    if not force:
        if candidate is None:
            raise RegistryError(f"{spec} has no validation CER in its card.json; measure it "
                                "(minyin finetune writes it) or promote with --force")
        if baseline is not None and candidate > baseline:
            raise RegistryError(f"{spec} has validation CER {candidate:.2%}, worse than "
                                f"{compared_to} ({baseline:.2%}); promote with --force to "
                                "use it anyway")
        for problem in gate_problems(card):
            raise RegistryError(f"{spec} {problem}; promote with --force to use it anyway")
    return store.record_promotion(model=spec, name=ref.name, version=ref.version,
                                  action="promote", author=author, forced=force,
                                  validation_cer=candidate, reason=reason)


def gate_problems(card: dict[str, Any]) -> list[str]:
    """Why a fine-tuned model's card does not earn promotion (empty: it does): a
    regression set of at least `MIN_REGRESSION_CHARS` reference characters measured
    before and after, no more than `REGRESSION_TOLERANCE` worse, and a validation gain
    whose bootstrap interval lies above zero (outside the set's noise)."""
    cer = card.get("cer") or {}
    regression = cer.get("regression") or {}
    before, after = regression.get("before"), regression.get("after")
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)):
        return ["has no regression measurement in its card.json (minyin finetune "
                "--regression MANIFEST measures one)"]
    chars = (regression.get("before_detail") or {}).get("ref_chars")
    if not isinstance(chars, int) or chars < MIN_REGRESSION_CHARS:
        return [f"was checked on a regression set of {chars or 'unknown'} reference "
                f"characters; at least {MIN_REGRESSION_CHARS} are needed for a "
                f"{REGRESSION_TOLERANCE * 100:g}-point limit to mean anything"]
    if after - before > REGRESSION_TOLERANCE + 1e-9:
        return [f"made the regression set worse: CER {before:.2%} -> {after:.2%}, more "
                f"than {REGRESSION_TOLERANCE * 100:g} point worse"]
    interval = ((cer.get("validation") or {}).get("gain") or {}).get("interval")
    if not isinstance(interval, list) or len(interval) != 2:
        return ["has no bootstrap interval for its validation gain (minyin finetune "
                "writes one)"]
    if interval[0] <= 0:
        return [f"has a validation gain inside the set's noise (95% interval "
                f"{interval[0]:+.2f} to {interval[1]:+.2f} points)"]
    return []


def rollback(store: Store, settings: Settings, *, author: str) -> ModelPromotion:
    """Make the model before the current one current again."""
    history = store.model_history()
    if not history:
        raise RegistryError("nothing was promoted; the workers use MINYIN_MODEL "
                            f"({settings.model})")
    current = history[0].model
    # the model that was current before the newest change (or the settings' default)
    previous = next((row.model for row in history[1:] if row.model != current),
                    settings.model)
    if previous == current:
        raise RegistryError(f"{current} is the only model there has been")
    ref: ModelRef = resolve_model(previous, settings.models_dir)
    return store.record_promotion(model=previous, name=ref.name, version=ref.version,
                                  action="rollback", author=author,
                                  validation_cer=validation_cer(read_card(Path(ref.path))),
                                  reason=f"rollback from {current}")
