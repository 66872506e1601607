"""What every ``minyin`` command group shares: the error console, failing with a
message, and the store from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from pipeline.store import Store

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def open_store() -> Store:
    # imported here: commands that never touch the store start without SQLAlchemy
    from pipeline.config import get_settings
    from pipeline.store import Store

    return Store.from_settings(get_settings(), migrate=True)
