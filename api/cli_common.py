"""What every ``minyin`` command group shares: the error console, failing with a
message, and the store from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from pipeline.store import Store

err = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    # one line whatever the width (a path is grepped for), and a message's own brackets
    # are text, not markup
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def open_store() -> Store:
    # imported here: commands that never touch the store start without SQLAlchemy
    from pipeline.config import get_settings
    from pipeline.store import Store

    return Store.from_settings(get_settings(), migrate=True)
