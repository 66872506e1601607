"""``minyin tickets``: ticket building from text, and the category classifier."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

tickets_app = typer.Typer(no_args_is_help=True,
                          help="Tickets: typed messages in, the category classifier.")
err = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _store():
    from pipeline.config import get_settings
    from pipeline.store import Store

    return Store.from_settings(get_settings(), migrate=True)


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
