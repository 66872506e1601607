"""``minyin lm``: the character language model for rescoring and phonetic correction."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from api.cli_common import err
from api.cli_common import fail as _fail
from api.cli_common import open_store as _store

lm_app = typer.Typer(no_args_is_help=True,
                     help="The character language model (n-best rescoring, phonetic "
                          "correction).")


@lm_app.command("build")
def lm_build(
    out: Annotated[Path, typer.Option(help="the LM directory to write, e.g. "
                                           "models/lm/pujiang")],
    sources: Annotated[list[Path] | None, typer.Argument(
        help="the county's history: JSONL work-order exports, {\"title\", \"text\"} "
             "a line")] = None,
    from_store: Annotated[bool, typer.Option(
        "--from-store", help="add the transcripts staff approved")] = False,
    order: Annotated[int, typer.Option(help="n-gram order", min=2, max=6)] = 4,
    name: Annotated[str | None, typer.Option(help="the LM's name (default: the "
                                                  "directory's)")] = None,
    dev: Annotated[Path | None, typer.Option(
        help="held-out text (JSONL like SOURCES) whose perplexity goes into the card")
    ] = None,
    place: Annotated[list[str] | None, typer.Option(
        help="an extra place name of the deployment (repeatable)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Build an LM from the shipped sources plus the county's history; print its card."""
    from asr.lm import LMError
    from pipeline.language_model import LMBuildError, build_lm, read_history

    try:
        dev_texts = read_history(dev) if dev is not None else None
        card = build_lm(out, history_files=sources or [],
                        store=_store() if from_store else None, place_names=place or (),
                        order=order, name=name, dev_texts=dev_texts, overwrite=overwrite)
    except (LMBuildError, LMError) as e:
        _fail(str(e))
    print(json.dumps(card, ensure_ascii=False))


@lm_app.command("list")
def lm_list() -> None:
    """LMs under the models directory, one JSON line each; "current": the one the
    workers use (the registry's, else MINYIN_LM)."""
    from pipeline.config import get_settings
    from pipeline.language_model import list_lms

    for entry in list_lms(_store(), get_settings()):
        print(json.dumps({"path": entry.spec, "current": entry.current, **entry.card},
                         ensure_ascii=False))


@lm_app.command("promote")
def lm_promote(
    spec: Annotated[str, typer.Argument(help="lm/NAME under the models directory (or "
                                             "NAME, or a path; \"none\": no LM)")],
    force: Annotated[bool, typer.Option(help="promote even with a worse rescoring CER "
                                             "or none fitted")] = False,
    by: Annotated[str, typer.Option(help="who promotes (kept in the history)")] = "cli",
    reason: Annotated[str | None, typer.Option(help="why, for the history")] = None,
) -> None:
    """Make SPEC the LM every worker uses, from its next job on (no restart)."""
    from pipeline.config import get_settings
    from pipeline.language_model import LMRegistryError, promote_lm

    try:
        row = promote_lm(_store(), get_settings(), spec, author=by, force=force,
                         reason=reason)
    except LMRegistryError as e:
        _fail(str(e), 1)
    cer = (f", rescoring dev CER {row.validation_cer:.2%}"
           if row.validation_cer is not None else "")
    err.print(f"current language model: {row.model} ({row.name} {row.version}{cer})"
              + (" [forced]" if row.forced else ""), highlight=False)


@lm_app.command("rollback")
def lm_rollback(by: Annotated[str, typer.Option(help="who rolls back")] = "cli") -> None:
    """Make the LM before the current one current again."""
    from pipeline.config import get_settings
    from pipeline.language_model import LMRegistryError, rollback_lm

    try:
        row = rollback_lm(_store(), get_settings(), author=by)
    except LMRegistryError as e:
        _fail(str(e), 1)
    err.print(f"current language model: {row.model} ({row.name} {row.version})",
              highlight=False)


@lm_app.command("history")
def lm_history_cmd() -> None:
    """LM promotions and rollbacks, newest first (one JSON line each)."""
    from pipeline.language_model import lm_history

    for row in lm_history(_store()):
        print(json.dumps({"model": row.model, "name": row.name, "version": row.version,
                          "action": row.action, "author": row.author, "forced": row.forced,
                          "rescoring_cer": row.validation_cer, "reason": row.reason,
                          "at": row.created_at.isoformat(timespec="seconds")},
                         ensure_ascii=False))


@lm_app.command("fit")
def lm_fit(
    lm: Annotated[str, typer.Argument(help="the LM: a directory, lm/NAME or NAME")],
    manifests: Annotated[list[Path], typer.Argument(
        help='development audio: JSONL {"audio", "text"} (paths relative to the file)')],
    clean: Annotated[list[Path] | None, typer.Option(
        "--clean", help='JSONL {"title", "text"} of text known to be right (past work '
        "orders): the corrector may change at most --max-false-rate of it")] = None,
    max_false_rate: Annotated[float, typer.Option(help="share of clean characters")] = 0.002,
    limit: Annotated[int | None, typer.Option(help="only the first N clips of each")] = None,
    unless_fitted: Annotated[bool, typer.Option(
        help="do nothing when the card already has fitted weights (for setup scripts)")
    ] = False,
) -> None:
    """Fit the rescoring weights (alpha, beta) and the corrector's threshold on
    development audio; writes them into the LM's card and prints them as JSON."""
    from asr.lm import read_card
    from pipeline.config import get_settings
    from pipeline.evaluate import ManifestError, load_manifest
    from pipeline.language_model import LMBuildError, lm_path, read_history
    from pipeline.lm_fit import fit, sentences_of
    from pipeline.process import VoicePipeline

    settings = get_settings()
    path = lm_path(lm, settings)
    if path is None or not (path / "card.json").is_file():
        _fail(f"no language model at {path or lm}: build it with minyin lm build")
    if unless_fitted and ((read_card(path).get("rescoring") or {}).get("dev_cer")):
        err.print(f"{path} is fitted already", highlight=False)
        return
    try:
        entries = [e for m in manifests for e in load_manifest(m)[:limit]]
        clean_texts = [s for f in clean or () for t in read_history(f)
                       for s in sentences_of(t)]
    except (ManifestError, LMBuildError) as exc:
        _fail(str(exc))
    if not entries:
        _fail("the manifests name no clips")
    pipe = VoicePipeline(settings)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True),
                  disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("transcribing the development set", total=len(entries))
        fitted = fit(pipe, path, entries, clean_texts=clean_texts,
                     max_false_rate=max_false_rate,
                     manifest=",".join(str(m) for m in manifests),
                     progress=lambda _name: progress.advance(task))
    print(json.dumps(fitted, ensure_ascii=False))
