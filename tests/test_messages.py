"""Typed messages: the builder path (no audio), POST /v1/messages (read back, client_ref
idempotency, 422 naming the field), the outbox event, and `minyin tickets from-text`.

In-process: FastAPI's TestClient over the real app and a SQLite store; the CLI runs as
a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from pipeline.messages import TypedMessage, accept_message, read_message_lines, ticket_from_message
from pipeline.store import EVENT_TICKET_CREATED, Store
from pipeline.tickets.build import TicketContext
from tests.test_review_api import NullDispatcher, make_settings
from tests.test_store import backend  # noqa: F401 - fixture: SQLite, PostgreSQL
from tests.test_store import store as _store  # noqa: F401 - fixture: a fresh store on it

ROOT = Path(__file__).resolve().parents[1]
LIGHT = {"title": "路灯坏了", "text": "浦阳街道和平路口的路灯坏了一个星期了，晚上走路看不见，"
         "希望尽快修好", "phone": "13912345678"}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    app = create_app(make_settings(tmp_path_factory.mktemp("messages")),
                     dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        store: Store = app.state.store
        keys = {role: store.create_api_key(f"{role}-key", role)[0]
                for role in ("submitter", "staff", "admin")}
        keys["other"] = store.create_api_key("other-submitter", "submitter")[0]
        yield {"client": client, "store": store, "keys": keys}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --------------------------------------------------------------------------- builder


def test_a_message_ticket_has_no_audio_and_a_certain_transcript() -> None:
    now = datetime(2026, 11, 23, 7, 0, tzinfo=timezone.utc)
    ticket = ticket_from_message(TypedMessage(**LIGHT), now=now)
    assert ticket.source == "message" and ticket.audio is None
    assert ticket.title == "路灯坏了"
    assert ticket.transcript.text == LIGHT["text"]
    [segment] = ticket.transcript.segments
    assert segment.confidence == 1.0 and segment.flags == []
    assert ticket.category.code == "city.street_light"
    assert ticket.model.name == "typed"
    assert "low_confidence" not in ticket.review.flags
    assert ticket.submitter.phone_masked == "139****5678"
    assert "13912345678" not in ticket.public_json()


def test_the_title_counts_as_the_callers_words() -> None:
    ticket = ticket_from_message(TypedMessage(title="小区路灯不亮", text="好几天了，麻烦处理"))
    assert ticket.category.code == "city.street_light"


def test_the_same_message_at_the_same_time_gets_the_same_id() -> None:
    sent = datetime(2026, 11, 23, 15, 0, tzinfo=timezone.utc)
    a = ticket_from_message(TypedMessage(**LIGHT, submitted_at=sent))
    b = ticket_from_message(TypedMessage(**LIGHT, submitted_at=sent))
    other = ticket_from_message(TypedMessage(title="x", text="别的事", submitted_at=sent))
    assert a.id == b.id != other.id and a.id.startswith("T20261123-150000-")


def test_audio_is_needed_unless_typed() -> None:
    with pytest.raises(ValueError, match="needs audio_sha256"):
        TicketContext(source="voice_note")
    TicketContext(source="message")


@pytest.mark.parametrize(("fields", "field"), [
    ({"text": ""}, "text"),
    ({"text": "   "}, "text"),
    ({"text": "长" * 10_001}, "text"),
    ({"title": "题" * 201, "text": "x"}, "title"),
    ({"text": "x", "lat": 29.4}, "lon"),
    ({"text": "x", "lon": 119.9}, "lon"),
    ({"text": "x", "lat": 95, "lon": 119.9}, "lat"),
    ({"text": "x", "colour": "red"}, "colour"),
])
def test_bad_messages_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as e:
        TypedMessage(**fields)
    assert e.value.errors()[0]["loc"][0] == field  # type: ignore[attr-defined]


def test_accept_message_is_idempotent_per_client_ref(tmp_path: Path) -> None:
    store = Store.from_url(f"sqlite:///{tmp_path}/m.db", migrate=True)
    msg = TypedMessage(**LIGHT, client_ref="app-1")
    first, created = accept_message(store, msg)
    again, created_again = accept_message(store, msg)
    assert created and not created_again and again.id == first.id
    # another submitter's client_ref of the same name is theirs
    key = store.create_api_key("k", "submitter")[1]
    _, theirs = accept_message(store, msg, submitter_id=key.id)
    assert theirs
    events = store.pending_outbox()
    # the second is stored too (the same phone's same matter: a 重复件 event, not a new one)
    assert len(events) == 2 and events[0].event_type == EVENT_TICKET_CREATED
    assert events[0].payload["id"] == first.id and events[0].payload["audio"] is None
    store.dispose()


@pytest.fixture()
def db(_store: Store) -> Store:  # noqa: F811 - the imported fixture, by name
    """A fresh store on SQLite, then on PostgreSQL (tests/test_store.py's back ends)."""
    return _store


def test_a_client_ref_race_stores_one_ticket(db: Store) -> None:
    store = db
    msg = TypedMessage(**LIGHT, client_ref="double-tap")
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []

    def send() -> None:
        barrier.wait()
        ticket, created = accept_message(store, msg)
        results.append((ticket.id, created))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 6 and len({i for i, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert store.list_tickets(source="message").total == 1
    assert len(store.pending_outbox()) == 1


# --------------------------------------------------------------------------- API


def test_post_a_message_and_read_it_back(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    r = client.post("/v1/messages", json={**LIGHT, "address": "浦阳街道和平路",
                                          "lat": 29.45, "lon": 119.89},
                    headers=bearer(env["keys"]["submitter"]))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["duplicate"] is False
    assert body["ticket_url"] == f"/v1/tickets/{body['ticket_id']}"
    assert r.headers["location"] == body["ticket_url"]
    ticket = body["ticket"]
    assert ticket["source"] == "message" and ticket["audio"] is None
    assert ticket["submitter"]["phone"] is None  # the public form
    assert ticket["location"]["lat"] == 29.45
    back = client.get(body["ticket_url"], headers=bearer(env["keys"]["submitter"]))
    assert back.status_code == 200 and back.json()["transcript"]["text"] == LIGHT["text"]
    staff = client.get(body["ticket_url"], headers=bearer(env["keys"]["staff"])).json()
    assert staff["submitter"]["phone"] == "13912345678"  # staff call back
    # another submitter does not learn it exists
    hidden = client.get(body["ticket_url"], headers=bearer(env["keys"]["other"]))
    assert hidden.status_code == 404
    listed = client.get("/v1/tickets", params={"source": "message"},
                        headers=bearer(env["keys"]["submitter"])).json()
    assert body["ticket_id"] in [t["id"] for t in listed["items"]]
    # no audio to fetch
    audio = client.get(f"{body['ticket_url']}/audio", headers=bearer(env["keys"]["staff"]))
    assert audio.status_code == 404


def test_the_same_client_ref_returns_the_first_ticket(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    store: Store = env["store"]
    payload = {**LIGHT, "client_ref": "wx-000123"}
    first = client.post("/v1/messages", json=payload, headers=bearer(env["keys"]["submitter"]))
    assert first.status_code == 201, first.text
    before = len(store.pending_outbox(limit=1000))
    again = client.post("/v1/messages", json={**payload, "text": "resent with other words"},
                        headers=bearer(env["keys"]["submitter"]))
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["ticket_id"] == first.json()["ticket_id"]
    assert len(store.pending_outbox(limit=1000)) == before  # no second event
    row = store.get_ticket_row(first.json()["ticket_id"])
    assert row is not None and row.document["submitter"]["client_ref"] == "wx-000123"


@pytest.mark.parametrize(("payload", "field"), [
    ({"title": "t", "text": ""}, "text"),
    ({"title": "t"}, "text"),
    ({"title": "t", "text": "字" * 10_001}, "text"),
    ({"title": "t", "text": "x", "lat": 120, "lon": 30}, "lat"),
    ({"title": "t", "text": "x", "lat": 29.4}, "lon"),
    ({"title": "t", "text": "x", "submitted_at": "yesterday"}, "submitted_at"),
    ({"title": "t", "text": "x", "submitted_at": "2026-11-23T08:00:00"}, "submitted_at"),
])
def test_bad_messages_are_422_naming_the_field(env: dict[str, Any], payload: dict[str, Any],
                                               field: str) -> None:
    r = env["client"].post("/v1/messages", json=payload,
                           headers=bearer(env["keys"]["submitter"]))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"][0]["field"] == field, error
    assert error["message"].startswith(field)


def test_messages_need_a_key(env: dict[str, Any]) -> None:
    r = env["client"].post("/v1/messages", json=LIGHT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


# --------------------------------------------------------------------------- CLI


def run_cli(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MINYIN_DATA_DIR": str(tmp),
           "MINYIN_MODELS_DIR": str(ROOT / "models")}
    return subprocess.run([sys.executable, "-m", "api.cli", "tickets", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_from_text_keeps_order_and_names_bad_lines(tmp_path: Path) -> None:
    lines = [
        {"id": "a1", "title": "路灯坏了", "text": "和平路口的路灯坏了一个星期"},
        {"id": "a2", "title": "x", "text": ""},
        "this is not json",
        {"id": "a4", "title": "噪音", "text": "楼下饭店半夜还在吵", "lat": 29.4},
        {"id": 5, "title": "垃圾", "text": "小区门口的垃圾好几天没人清运", "phone": "13912345678"},
        {"id": "a6", "title": "漏水", "text": "楼上漏水", "label_l1": "城乡建设",
         "time": "2020-01-06 12:09:38"},
        {"id": "a7b", "title": "漏水", "text": "楼上漏水", "time": "yesterday"},
        {"id": "a7", "title": "井盖", "text": "门口的井盖没了很危险"},
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)
                                for x in lines) + "\n\n", encoding="utf-8")
    out = run_cli("from-text", str(source), tmp=tmp_path)
    assert out.returncode == 1, out.stderr
    tickets = [json.loads(line) for line in out.stdout.splitlines()]
    assert [t["submitter"]["client_ref"] for t in tickets] == ["a1", "5", "a6", "a7"]
    # other columns are ignored; a time without a zone is China time
    assert tickets[2]["submitted_at"] == "2020-01-06T04:09:38Z"
    assert all(t["source"] == "message" and t["audio"] is None for t in tickets)
    assert tickets[1]["submitter"]["phone"] is None  # public form on stdout
    assert "13912345678" not in out.stdout
    errors = out.stderr
    assert f"{source}:2: text:" in errors
    assert f"{source}:3: not JSON" in errors
    assert f"{source}:4: lon:" in errors
    assert f"{source}:7: submitted_at: not an ISO 8601" in errors
    assert "4 line(s)" in errors


def test_from_text_store_is_idempotent(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "s1", "title": "路灯", "text": "路灯不亮了"},
                                 ensure_ascii=False) + "\n", encoding="utf-8")
    first = run_cli("from-text", str(source), "--store", tmp=tmp_path)
    again = run_cli("from-text", str(source), "--store", tmp=tmp_path)
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    assert json.loads(first.stdout)["id"] == json.loads(again.stdout)["id"]


def test_read_message_lines_skips_blanks(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('\n{"id": "x", "text": "路灯坏了"}\n\n[1]\n', encoding="utf-8")
    got = list(read_message_lines(path))
    assert [(g.line, g.id, g.error) for g in got] == [
        (2, "x", None), (4, None, "a line must be a JSON object")]
    assert got[0].message is not None and got[0].message.client_ref == "x"
