"""Dialect routing: staff users declare the varieties they understand (`minyin users
create --dialects`, `minyin users dialects`), each ticket row copies its transcript's
variety and readability (migration 0009 fills old ones), and the review queue filters
by variety and puts the reviewer's own dialects first.

In-process (typer's CliRunner, FastAPI's TestClient, SQLite) with tickets seeded by the
real ticket builder; the migration also on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from typer.testing import CliRunner

from api.app import create_app
from api.auth import hash_password
from pipeline.blobs import BlobStore
from pipeline.store import Store, TicketRow, parse_dialects, spoken_dialects, upgrade, utcnow
from tests.review_seed import seed_ticket
from tests.test_review_api import NullDispatcher, make_settings
from tests.test_store import _postgres_schema_url

PASSWORD = "correct horse battery"
MIGRATIONS = Path(__file__).resolve().parents[1] / "pipeline" / "migrations"


# --------------------------------------------------------------------------- the CLI


@pytest.fixture()
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from pipeline.config import get_settings

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("MINYIN_DATABASE_URL", url)
    monkeypatch.setenv("MINYIN_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def test_users_create_and_change_their_dialects(cli_db: str) -> None:
    from api.cli import app

    runner = CliRunner()
    made = runner.invoke(app, ["users", "create", "wangli", "--dialects", "wu, Mandarin,wu",
                               "--password-stdin"], input=PASSWORD + "\n")
    assert made.exit_code == 0, made.output
    plain = runner.invoke(app, ["users", "create", "zhao", "--password-stdin"],
                          input=PASSWORD + "\n")
    assert plain.exit_code == 0, plain.output
    store = Store.from_url(cli_db)
    try:
        assert store.get_staff_user("wangli").dialects == ["wu", "mandarin"]
        assert store.get_staff_user("zhao").dialects == []  # none declared: stored so
        listed = runner.invoke(app, ["users", "list"])
        assert listed.exit_code == 0
        rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
        assert rows["wangli"][-1] == "wu,mandarin" and rows["zhao"][-1] == "-"

        changed = runner.invoke(app, ["users", "dialects", "zhao", "cantonese,wu"])
        assert changed.exit_code == 0, changed.output
        assert store.get_staff_user("zhao").dialects == ["cantonese", "wu"]

        # a bad name: exit 2, the name said, nothing created or changed
        bad = runner.invoke(app, ["users", "create", "li", "--dialects", "wu,shanghainese",
                                  "--password-stdin"], input=PASSWORD + "\n")
        assert bad.exit_code == 2
        assert "shanghainese" in bad.output
        assert store.get_staff_user("li") is None
        bad = runner.invoke(app, ["users", "dialects", "zhao", "teochew"])
        assert bad.exit_code == 2 and "teochew" in bad.output
        assert store.get_staff_user("zhao").dialects == ["cantonese", "wu"]
        missing = runner.invoke(app, ["users", "dialects", "nobody", "wu"])
        assert missing.exit_code == 1
    finally:
        store.dispose()


def test_dialect_names() -> None:
    assert parse_dialects("") == []
    assert parse_dialects("Hakka , min") == ["hakka", "min"]
    with pytest.raises(ValueError, match="'klingon'"):
        parse_dialects("wu,klingon")
    assert spoken_dialects([]) == ["mandarin"]
    assert spoken_dialects(["wu"]) == ["wu"]


# --------------------------------------------------------------------------- the queue


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("dialect-routing")
    app = create_app(make_settings(data), dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        store: Store = app.state.store
        blobs: BlobStore = app.state.blobs
        store.create_staff_user("wangli", hash_password(PASSWORD), dialects=["wu", "mandarin"])
        store.create_staff_user("zhao", hash_password(PASSWORD))  # Mandarin only
        store.create_staff_user("chen", hash_password(PASSWORD), dialects=["cantonese"])
        # urgent Mandarin, an ordinary Mandarin one stored before varieties, and a Wu
        # note nobody could read by machine (the newest)
        gas = seed_ticket(store, blobs, "gas", n=0)
        old = seed_ticket(store, blobs, "rubbish", n=1)
        with store.session() as s:
            row = s.get(TicketRow, old.id)
            doc = dict(row.document)
            doc["transcript"] = {k: v for k, v in doc["transcript"].items()
                                 if k not in ("variety", "readable")}
            row.document, row.variety, row.readable = doc, None, None
        wu = seed_ticket(store, blobs, "wu", n=2)
        key = store.create_api_key("staff-key", "staff")[0]
        yield {"client": client, "store": store, "gas": gas.id, "old": old.id, "wu": wu.id,
               "key": key}


def queue(client: TestClient, user: str, **params: str) -> list[dict[str, Any]]:
    client.cookies.clear()
    r = client.post("/v1/session", json={"username": user, "password": PASSWORD})
    assert r.status_code == 200, r.text
    r = client.get("/v1/review/queue", params=params)
    assert r.status_code == 200, r.text
    client.delete("/v1/session")
    client.cookies.clear()
    return r.json()["items"]


def test_rows_carry_the_variety(env: dict[str, Any]) -> None:
    store: Store = env["store"]
    wu = store.get_ticket_row(env["wu"])
    assert (wu.variety, wu.readable) == ("wu", False)
    assert (store.get_ticket_row(env["gas"]).variety,
            store.get_ticket_row(env["gas"]).readable) == ("mandarin", True)


def test_the_session_says_what_the_user_speaks(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    client.cookies.clear()
    r = client.post("/v1/session", json={"username": "wangli", "password": PASSWORD})
    assert r.json()["user"]["dialects"] == ["wu", "mandarin"]
    assert client.get("/v1/session").json()["user"]["dialects"] == ["wu", "mandarin"]
    client.delete("/v1/session")
    client.cookies.clear()
    r = client.post("/v1/session", json={"username": "zhao", "password": PASSWORD})
    assert r.json()["user"]["dialects"] == []
    client.delete("/v1/session")
    client.cookies.clear()


def test_a_wu_speaker_gets_the_wu_note_first(env: dict[str, Any]) -> None:
    items = queue(env["client"], "wangli")
    assert [t["id"] for t in items] == [env["wu"], env["gas"], env["old"]]
    wu = items[0]
    assert (wu["variety"], wu["readable"]) == ("wu", False)
    assert (items[2]["variety"], items[2]["readable"]) == ("mandarin", True)  # old document


def test_it_goes_to_those_who_speak_it(env: dict[str, Any]) -> None:
    """Wangli speaks Wu, so the Wu note is in her queue only; a key (an integration,
    not a person) still lists everything, the Wu note last."""
    mandarin = [env["gas"], env["old"]]  # urgent first
    assert [t["id"] for t in queue(env["client"], "zhao")] == mandarin
    # a Cantonese speaker (no Mandarin declared) still reads the readable ones
    assert [t["id"] for t in queue(env["client"], "chen")] == mandarin
    r = env["client"].get("/v1/review/queue",
                          headers={"Authorization": f"Bearer {env['key']}"})
    assert [t["id"] for t in r.json()["items"]] == [*mandarin, env["wu"]]


def test_with_nobody_to_go_to_everyone_gets_it_last(env: dict[str, Any]) -> None:
    store: Store = env["store"]
    store.update_staff_user("wangli", disabled_at=utcnow())
    try:
        assert store.covered_dialects() == {"cantonese"}
        everything = [env["gas"], env["old"], env["wu"]]
        assert [t["id"] for t in queue(env["client"], "zhao")] == everything
        assert [t["id"] for t in queue(env["client"], "chen")] == everything
    finally:
        store.update_staff_user("wangli", disabled_at=None)


def test_the_dialect_filter(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    assert [t["id"] for t in queue(client, "zhao", dialect="wu")] == [env["wu"]]
    assert [t["id"] for t in queue(client, "zhao", dialect="unreadable")] == [env["wu"]]
    # Mandarin includes tickets stored before varieties were
    assert [t["id"] for t in queue(client, "wangli", dialect="mandarin")] == [env["gas"],
                                                                              env["old"]]
    assert queue(client, "zhao", dialect="cantonese") == []
    r = client.get("/v1/review/queue", params={"dialect": "klingon"},
                   headers={"Authorization": f"Bearer {env['key']}"})
    assert r.status_code == 422


# --------------------------------------------------------------------------- migration


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    gen = _postgres_schema_url()
    yield next(gen)
    gen.close()


def test_migration_fills_variety_from_the_documents(db_url: str, tmp_path: Path) -> None:
    """Down to 0008 and up again: the columns come back, filled from each document
    (one without a variety: mandarin, readable); users have none declared."""
    from alembic import command
    from alembic.config import Config

    upgrade(db_url)
    store = Store.from_url(db_url)
    blobs = BlobStore(tmp_path / "audio")
    wu = seed_ticket(store, blobs, "wu")
    light = seed_ticket(store, blobs, "light", n=1)
    with store.session() as s:
        row = s.get(TicketRow, light.id)
        doc = dict(row.document)
        doc["transcript"] = {k: v for k, v in doc["transcript"].items()
                             if k not in ("variety", "readable")}
        row.document = doc
    store.create_staff_user("wangli", "x", dialects=["wu"])
    store.dispose()
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", db_url.replace("%", "%%"))
    command.downgrade(cfg, "0008_repeats_clusters")
    upgrade(db_url)
    store = Store.from_url(db_url)
    try:
        with store.engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, variety FROM tickets")).all())
            readable = dict(conn.execute(text("SELECT id, readable FROM tickets")).all())
        assert rows == {wu.id: "wu", light.id: "mandarin"}
        assert not readable[wu.id] and readable[light.id]
        assert store.get_staff_user("wangli").dialects == []
        assert [t.id for t in store.review_queue(speaks=["wu"])[0].items] == [wu.id, light.id]
        assert [t.id for t in store.review_queue(dialect="unreadable")[0].items] == [wu.id]
    finally:
        store.dispose()
