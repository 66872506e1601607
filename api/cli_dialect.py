"""``minyin dialect``: the detector that says which variety was heard and whether the
machine text can be relied on; trained from a county's own confirmed recordings."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from api.cli_common import err, fail, open_store

dialect_app = typer.Typer(no_args_is_help=True,
                          help="The dialect detector: train, list, promote, try.")


@dialect_app.command("train")
def train(
    source: Annotated[Path | None, typer.Option(
        "--from", help="a manifest (JSONL: audio, lang[, parallel_id]) or a directory "
                       "of manifest.jsonl files")] = None,
    from_store: Annotated[bool, typer.Option(
        "--from-store", help="also the recordings whose variety staff confirmed")] = False,
    name: Annotated[str, typer.Option(help="models/detector/NAME")] = "county",
    version: Annotated[str | None, typer.Option(help="default: a timestamp")] = None,
    c: Annotated[float, typer.Option("--c", help="inverse regularisation")] = 0.1,
    promote: Annotated[bool, typer.Option(help="make it the current detector")] = False,
) -> None:
    """Fit the trained detector (logistic regression over Whisper encoder features of
    each speech window) and register it; prints its card."""
    from pipeline.config import get_settings
    from pipeline.dialect import DetectorError, promote_detector, read_manifests, train_detector
    from pipeline.dialect import from_store as store_items
    from pipeline.process import VoicePipeline

    if source is None and not from_store:
        fail("give --from DIR|FILE, --from-store, or both")
    settings = get_settings()
    items = []
    try:
        if source is not None:
            if not source.exists():
                fail(f"{source}: no such file or directory")
            items += read_manifests(source)
        store = open_store() if from_store or promote else None
        if from_store and store is not None:
            from pipeline.blobs import BlobStore

            found = store_items(store, BlobStore(settings.data_dir / "audio"))
            err.print(f"{len(found)} recordings with a confirmed variety in the store")
            items += found
        if not items:
            fail("no labelled recordings to train on")
        version = version or datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        err.print(f"training on {len(items)} recordings ...")
        card = train_detector(VoicePipeline(settings), items, name=name, version=version,
                              source={"from": str(source) if source else None,
                                      "from_store": from_store}, c=c)
        if promote and store is not None:
            promote_detector(store, settings, f"detector/{name}", author="cli",
                             reason="minyin dialect train --promote")
            card["promoted"] = True
    except DetectorError as e:
        fail(str(e))
    except ValueError as e:  # fewer than two varieties, or a bad manifest line
        fail(str(e))
    typer.echo(json.dumps(card, ensure_ascii=False))


@dialect_app.command("list")
def list_detectors() -> None:
    """The detectors under models/detector, one JSON line each; `current` marks the one
    the workers use ("rules": the untrained default)."""
    from pipeline.config import get_settings
    from pipeline.dialect import DETECTOR_DIR, current_detector_spec

    settings = get_settings()
    current = current_detector_spec(open_store(), settings)
    typer.echo(json.dumps({"spec": "rules", "current": current in ("rules", "default")
                           and not (settings.models_dir / DETECTOR_DIR / "default"
                                    / "card.json").is_file()}))
    for card in sorted((settings.models_dir / DETECTOR_DIR).glob("*/card.json")):
        spec = str(card.parent.relative_to(settings.models_dir))
        body = json.loads(card.read_text(encoding="utf-8"))
        typer.echo(json.dumps({"spec": spec, "current": spec == current or (
            current == "default" and card.parent.name == "default"),
            **{k: body.get(k) for k in ("name", "version", "classes", "trained_on",
                                        "created_at")}}, ensure_ascii=False))


@dialect_app.command("promote")
def promote_cmd(
    spec: Annotated[str, typer.Argument(help="detector/NAME, a path, or rules")],
    reason: Annotated[str | None, typer.Option()] = None,
) -> None:
    """Make SPEC the detector every worker uses from its next job."""
    from pipeline.config import get_settings
    from pipeline.dialect import DetectorError, promote_detector

    try:
        row = promote_detector(open_store(), get_settings(), spec, author="cli",
                               reason=reason)
    except DetectorError as e:
        fail(str(e))
    typer.echo(json.dumps({"current": row.model, "name": row.name, "version": row.version}))


@dialect_app.command("detect")
def detect(
    files: Annotated[list[Path], typer.Argument(help="audio files")],
) -> None:
    """Which variety each file is, and whether its text can be relied on (one JSON line
    per file, with each segment's judgement)."""
    from pipeline.process import VoicePipeline

    pipe = VoicePipeline()
    for path in files:
        if not path.is_file():
            fail(f"{path}: no such file")
        t = pipe.process(path, name=path.name).transcript
        typer.echo(json.dumps({
            "audio": str(path), "variety": t.variety, "confidence": t.variety_confidence,
            "readable": t.readable, "detector": f"{t.detector} {t.detector_version}",
            "segments": [{"start": s.start, "end": s.end, "variety": s.variety,
                          "readable": s.readable, "text": s.text} for s in t.segments]},
            ensure_ascii=False))
