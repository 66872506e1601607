"""Alembic environment for the minyin store.

Run through `pipeline.store.upgrade(url_or_engine)`, which points Alembic here and
passes either `sqlalchemy.url` or an open connection (`config.attributes`). With
neither, the URL comes from the settings (MINYIN_DATABASE_URL or the SQLite default).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from pipeline.store import Base, create_engine_for

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from pipeline.config import get_settings

    return get_settings().sqlalchemy_url


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        # Batch mode re-creates a table (copy, drop the old one, rename). With foreign
        # keys on, dropping the old `tickets` would cascade-delete every segment,
        # correction and outbox row, and dropping `jobs` would fail. Off while migrating
        # (outside a transaction, where SQLite honours it), checked afterwards.
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        # SQLite cannot ALTER most things; batch mode copies the table instead
        render_as_batch=sqlite,
    )
    with context.begin_transaction():
        context.run_migrations()
        if sqlite:
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"the migration left dangling references: {broken[:5]}")


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine_for(_url())
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
