"""``minyin tickets``: ticket building from text, and the category classifier."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from api.cli_common import err
from api.cli_common import fail as _fail
from api.cli_common import open_store as _store

tickets_app = typer.Typer(no_args_is_help=True,
                          help="Tickets: typed messages in, the category classifier.")


def _line_error(text: str) -> None:
    # plain, unwrapped: scripts grep FILE:LINE out of it
    sys.stderr.write(text + "\n")


@tickets_app.command("from-text")
def from_text(
    file: Annotated[Path, typer.Argument(help='JSONL: {"id", "title", "text"} per line '
                                             "(+ phone, address, lat, lon, client_ref, "
                                             "submitted_at, user)")],
    store: Annotated[bool, typer.Option("--store/--no-store",
                                        help="also store each ticket with its outbox "
                                             "event (resending an id returns the first)")]
    = False,
) -> None:
    """Typed messages to tickets: one ticket per line on stdout (public form), in input
    order. A bad line is an error on stderr naming FILE:LINE and the field; the other
    lines still come out, and the exit code is 1 at the end."""
    from pipeline.messages import accept_message, read_message_lines, ticket_from_message
    from pipeline.tickets import load_rules

    if not file.is_file():
        _fail(f"{file}: no such file")
    rules = load_rules()
    target = _store() if store else None
    failed = 0
    try:
        for line in read_message_lines(file):
            if line.message is None:
                failed += 1
                _line_error(f"{line.where}: {line.error}")
                continue
            try:
                if target is not None:
                    ticket, _ = accept_message(target, line.message, rules=rules)
                else:
                    ticket = ticket_from_message(line.message, rules=rules)
            except ValueError as e:  # the builder refused a field (a bad phone, ...)
                failed += 1
                _line_error(f"{line.where}: {e}")
                continue
            sys.stdout.write(ticket.public_json() + "\n")
    finally:
        if target is not None:
            target.dispose()
    if failed:
        _line_error(f"{failed} line(s) of {file} failed")
        raise typer.Exit(1)


# -- the category classifier ------------------------------------------------------------------


@tickets_app.command("train")
def tickets_train(
    sources: Annotated[list[Path] | None, typer.Option(
        "--from", help='labelled history, JSONL: {"text", "title"?, "category": leaf code} '
                       'or {"text", "title"?, "label_l1": 一级分类} per line (repeatable)')
    ] = None,
    from_store: Annotated[bool, typer.Option(
        "--from-store", help="add the categories reviewers corrected and approved")] = False,
    name: Annotated[str, typer.Option(help="the classifier's name: models/classifier/NAME")
                    ] = "county",
    overwrite: Annotated[bool, typer.Option(help="replace an existing classifier NAME")
                         ] = False,
) -> None:
    """Train a category classifier on the shipped material plus the county's history;
    print its card. Promote it with `minyin tickets promote NAME`."""
    from pipeline.config import get_settings
    from pipeline.tickets.classifier import CLASSIFIER_DIR, ClassifierError, train_classifier

    if not sources and not from_store:
        _fail("nothing to train on: give --from FILE.jsonl and/or --from-store")
    if "/" in name or name in ("", ".", ".."):
        _fail(f"--name {name!r}: a plain name, e.g. pujiang")
    out = get_settings().models_dir / CLASSIFIER_DIR / name
    try:
        card = train_classifier(out, history_files=sources or [],
                                store=_store() if from_store else None, name=name,
                                overwrite=overwrite)
    except ClassifierError as e:
        _line_error(f"error: {e}")
        raise typer.Exit(2) from None
    print(json.dumps(card, ensure_ascii=False))


@tickets_app.command("classifiers")
def tickets_classifiers() -> None:
    """Category classifiers under the models directory, one JSON line each; "current":
    the one the builder uses (the registry's, else MINYIN_CLASSIFIER)."""
    from pipeline.config import get_settings
    from pipeline.tickets.classifier import list_classifiers

    for spec, card, current in list_classifiers(_store(), get_settings()):
        print(json.dumps({"path": spec, "current": current, "name": card.get("name"),
                          "version": card.get("version"), "created_at": card.get("created_at"),
                          "data": card.get("data"), "sizes": card.get("sizes")},
                         ensure_ascii=False))


@tickets_app.command("promote")
def tickets_promote(
    spec: Annotated[str, typer.Argument(help="classifier/NAME under the models directory "
                                             "(or NAME, or a path)")],
    by: Annotated[str, typer.Option(help="who promotes (kept in the history)")] = "cli",
    reason: Annotated[str | None, typer.Option(help="why, for the history")] = None,
) -> None:
    """Make SPEC the category classifier of every ticket built from now on."""
    from pipeline.config import get_settings
    from pipeline.tickets.classifier import ClassifierError, promote_classifier

    try:
        row = promote_classifier(_store(), get_settings(), spec, author=by, reason=reason)
    except ClassifierError as e:
        _fail(str(e), 1)
    err.print(f"current classifier: {row.model} ({row.name} {row.version})", highlight=False)


@tickets_app.command("rollback")
def tickets_rollback(by: Annotated[str, typer.Option(help="who rolls back")] = "cli") -> None:
    """Make the classifier before the current one current again."""
    from pipeline.config import get_settings
    from pipeline.tickets.classifier import ClassifierError, rollback_classifier

    try:
        row = rollback_classifier(_store(), get_settings(), author=by)
    except ClassifierError as e:
        _fail(str(e), 1)
    err.print(f"current classifier: {row.model} ({row.name} {row.version})", highlight=False)
