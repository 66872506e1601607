"""``minyin tickets``: ticket building from text, and the category classifier."""

from __future__ import annotations

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
