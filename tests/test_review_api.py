"""The review API behind the staff page: sign-in sessions and CSRF, the queue, saves,
approval, history, the playable audio, and every way a write is refused.

In-process (FastAPI's TestClient over the real app, SQLite store) with tickets seeded
by the real ticket builder; the browser tests drive the same routes through the page,
and the optimistic lock is also raced on PostgreSQL at the bottom."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import hash_password
from pipeline.blobs import BlobStore
from pipeline.config import Settings
from pipeline.store import EVENT_TICKET_REVISED, OutboxEvent, Store, utcnow
from pipeline.tickets import load_rules
from tests.review_seed import T0, seed_ticket

PASSWORD = "correct horse battery"


class NullDispatcher:
    """No workers: these tests seed finished tickets."""

    def submit(self, job: Any) -> bool:
        return True

    def sweep(self) -> None: ...

    def readiness(self) -> dict[str, object]:
        return {"ready": True, "mode": "test"}

    def queue_depths(self) -> dict[str, int]:
        return {}

    def start(self) -> None: ...

    def stop(self) -> None: ...


def make_settings(data: Path, **extra: Any) -> Settings:
    return Settings(data_dir=data, rate_limit="100000/minute",
                    login_rate_limit="1000/minute", **extra)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("review")
    settings = make_settings(data)
    app = create_app(settings, dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        store: Store = app.state.store
        blobs: BlobStore = app.state.blobs
        store.create_staff_user("alice", hash_password(PASSWORD), display_name="王丽")
        store.create_staff_user("bob", hash_password(PASSWORD))
        gone = store.create_staff_user("carol", hash_password(PASSWORD))
        store.update_staff_user(gone.username, disabled_at=utcnow())
        keys = {role: store.create_api_key(f"{role}-key", role)[0]
                for role in ("submitter", "staff", "admin")}
        yield {"client": client, "store": store, "blobs": blobs, "keys": keys,
               "settings": settings}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def fresh(env: dict[str, Any], kind: str = "light", **kw: Any) -> str:
    return seed_ticket(env["store"], env["blobs"], kind, **kw).id


def sign_in(client: TestClient, username: str = "alice") -> str:
    r = client.post("/v1/session", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["csrf_token"]


# --------------------------------------------------------------------------- sessions


def test_sign_in_sets_a_strict_httponly_cookie(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    r = client.post("/v1/session", json={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == {"name": "alice", "display_name": "王丽", "role": "staff",
                            "kind": "user", "dialects": []}
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("minyin_session=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http here; https sets it
    me = client.get("/v1/session")
    assert me.status_code == 200 and me.json()["csrf_token"] == body["csrf_token"]
    # the cookie alone reads like a key does
    assert client.get("/v1/review/queue").status_code == 200
    client.delete("/v1/session")
    assert client.get("/v1/review/queue").status_code == 401
    client.cookies.clear()


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"username": "alice", "password": "wrong password!"}, 401, "bad_credentials"),
    ({"username": "nobody", "password": PASSWORD}, 401, "bad_credentials"),
    ({"username": "carol", "password": PASSWORD}, 401, "bad_credentials"),  # disabled
    ({"username": "alice"}, 422, "invalid_request"),
    ({}, 422, "invalid_request"),
    ({"username": "alice", "password": PASSWORD, "api_key": "mny_x"}, 422, "invalid_request"),
    ({"api_key": "mny_not-a-key"}, 401, "bad_credentials"),
])
def test_sign_in_refusals(env: dict[str, Any], body: dict[str, str], status: int,
                          code: str) -> None:
    r = env["client"].post("/v1/session", json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "set-cookie" not in r.headers


def test_sign_in_with_keys(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    r = client.post("/v1/session", json={"api_key": env["keys"]["submitter"]})
    assert r.status_code == 403 and "staff" in r.json()["error"]["message"]
    r = client.post("/v1/session", json={"api_key": env["keys"]["staff"]})
    assert r.status_code == 200 and r.json()["user"]["kind"] == "key"
    client.delete("/v1/session")
    client.cookies.clear()


def test_cookie_writes_need_the_csrf_token(env: dict[str, Any]) -> None:
    client = TestClient(env["client"].app)
    ticket = fresh(env, n=100)
    csrf = sign_in(client)
    edit = {"revision": 1, "fields": {"summary": "和平路路灯坏了一周"}}
    r = client.patch(f"/v1/tickets/{ticket}", json=edit)
    assert r.status_code == 403 and r.json()["error"]["code"] == "csrf_failed"
    r = client.patch(f"/v1/tickets/{ticket}", json=edit, headers={"X-CSRF-Token": "forged"})
    assert r.status_code == 403
    r = client.patch(f"/v1/tickets/{ticket}", json=edit, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200 and r.json()["revision"] == 2
    # a key needs no CSRF token: no browser sends it on its own
    r = client.patch(f"/v1/tickets/{ticket}", json={**edit, "revision": 2,
                                                     "fields": {"kind": "求助"}},
                     headers=bearer(env["keys"]["staff"]))
    assert r.status_code == 200 and r.json()["revision"] == 3


def test_sign_in_is_rate_limited(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, login_rate_limit="3/minute")
    app = create_app(settings, dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        codes = [client.post("/v1/session", json={"username": "x", "password": "y" * 12}
                             ).status_code for _ in range(4)]
    assert codes == [401, 401, 401, 429]


def test_a_new_password_or_disabling_ends_sessions(env: dict[str, Any]) -> None:
    store: Store = env["store"]
    store.create_staff_user("dave", hash_password(PASSWORD))
    client = TestClient(env["client"].app)
    sign_in(client, "dave")
    assert client.get("/v1/session").status_code == 200
    store.update_staff_user("dave", password_hash=hash_password("another password"))
    assert client.get("/v1/session").status_code == 401


def test_sessions_expire(env: dict[str, Any]) -> None:
    store: Store = env["store"]
    user = store.get_staff_user("alice")
    assert user is not None
    token, row = store.create_session(user_id=user.id, ttl=timedelta(hours=12))
    assert row.id != token and len(token) >= 40  # only the hash is stored
    assert store.get_session(token) is not None
    assert store.get_session(token, now=utcnow() + timedelta(hours=13)) is None
    assert store.get_session("not-a-token") is None
    assert store.delete_session(token) and store.get_session(token) is None


# --------------------------------------------------------------------------- the queue


def test_queue_order_filters_counts_and_pages(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path), dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        store, blobs = app.state.store, app.state.blobs
        light = seed_ticket(store, blobs, "light", n=0)  # one doubtful segment
        rubbish = seed_ticket(store, blobs, "rubbish", n=1)  # confident
        gas = seed_ticket(store, blobs, "gas", n=2)  # urgent
        old_rubbish = seed_ticket(store, blobs, "rubbish", n=3,
                                  created=T0 - timedelta(days=2))
        staff = store.create_api_key("s", "staff")[0]
        sub = store.create_api_key("p", "submitter")[0]
        q = client.get("/v1/review/queue", headers=bearer(staff)).json()
        assert [i["id"] for i in q["items"]] == [gas.id, light.id, old_rubbish.id, rubbish.id]
        assert q["items"][0]["urgency"] == "urgent"
        assert q["items"][1]["low_confidence_segments"] == 1
        assert q["items"][1]["confidence"] < q["items"][3]["confidence"]
        assert q["counts"] == {"new": 4, "in_review": 0, "reviewed": 0, "urgent": 1}
        assert q["total"] == 4 and q["next_offset"] is None

        page = client.get("/v1/review/queue?limit=2&offset=2", headers=bearer(staff)).json()
        assert [i["id"] for i in page["items"]] == [old_rubbish.id, rubbish.id]
        first = client.get("/v1/review/queue?limit=2", headers=bearer(staff)).json()
        assert first["next_offset"] == 2

        def ids(query: str) -> list[str]:
            r = client.get(f"/v1/review/queue?{query}", headers=bearer(staff))
            assert r.status_code == 200, r.text
            return [i["id"] for i in r.json()["items"]]

        assert ids("category=city.sanitation") == [old_rubbish.id, rubbish.id]
        assert ids("category=city") == [light.id, old_rubbish.id, rubbish.id]
        assert ids("urgency=urgent") == [gas.id]
        assert ids("source=hotline") == []
        since = (T0 - timedelta(hours=1)).isoformat().replace("+00:00", "%2B00:00")
        assert old_rubbish.id not in ids(f"created_from={since}")
        assert ids(f"created_to={since}") == [old_rubbish.id]
        r = client.get("/v1/review/queue?created_from=2026-11-23T00:00:00",
                       headers=bearer(staff))
        assert r.status_code == 422 and "time zone" in r.json()["error"]["message"]

        # approved tickets leave the waiting queue; the counts follow
        r = client.post(f"/v1/tickets/{gas.id}/approve", json={"revision": 1},
                        headers=bearer(staff))
        assert r.status_code == 200, r.text
        q = client.get("/v1/review/queue", headers=bearer(staff)).json()
        assert gas.id not in [i["id"] for i in q["items"]]
        assert q["counts"]["reviewed"] == 1 and q["counts"]["urgent"] == 0
        assert ids("status=reviewed") == [gas.id]
        assert client.get("/v1/review/queue", headers=bearer(sub)).status_code == 403


def test_taxonomy(env: dict[str, Any]) -> None:
    r = env["client"].get("/v1/taxonomy", headers=bearer(env["keys"]["submitter"]))
    assert r.status_code == 200
    body = r.json()
    assert "投诉" in body["kinds"] and body["urgency_levels"] == ["normal", "urgent"]
    codes = {c["code"]: c for c in body["categories"]}
    assert codes["city.sanitation"]["label"] == "市容环卫"
    assert codes["city.sanitation"]["path"] == ["城乡建设", "城市建设和市政管理", "市容环卫"]
    assert codes["city.sanitation"]["time_limit_days"] >= 1


# --------------------------------------------------------------------------- saving


def test_save_makes_a_revision_with_per_segment_corrections(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    ticket = fresh(env, n=200)
    view = client.get(f"/v1/tickets/{ticket}/review", headers=bearer(keys["staff"])).json()
    assert view["revision"] == 1 and view["status"] == "new"
    assert view["audio_url"] == f"/v1/tickets/{ticket}/audio?format=wav"
    assert view["ticket"]["submitter"]["phone"] == "13912345678"  # staff call back
    edit = {"revision": 1,
            "segments": [{"index": 1, "text": " 已经坏了一个多星期了，晚上很黑。 "},
                         {"index": 2, "text": "老人走路不方便，请回电13812345678"}],
            "fields": {"category": "road.facilities", "urgency": "urgent",
                       "location": {"text": "和平路32号门口", "district": "浦江县"},
                       "summary": "和平路路灯坏了一周，老人夜间出行不便"},
            "comment": "听了两遍"}
    r = client.patch(f"/v1/tickets/{ticket}", json=edit, headers=bearer(keys["staff"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["revision"] == 2 and out["status"] == "in_review" and out["changed"] is True
    assert out["updated_by"] == "key:staff-key"
    doc = out["ticket"]
    segs = doc["transcript"]["segments"]
    assert segs[1]["text"] == "已经坏了一个多星期了，晚上很黑。"  # trimmed
    assert "corrected" in segs[1]["flags"] and "corrected" not in segs[0]["flags"]
    assert "13812345678" not in segs[2]["text"] and "138****5678" in segs[2]["text"]
    assert doc["transcript"]["text"] == "".join(s["text"] for s in segs)
    # a staff choice carries the taxonomy's label, levels, department and time limit,
    # and no model confidence
    leaf = load_rules().category("road.facilities")
    assert doc["category"] == {"code": "road.facilities", "label": leaf.label,
                               "path": list(leaf.path), "department": leaf.department,
                               "time_limit_days": leaf.time_limit_days, "confidence": None}
    assert doc["urgency"]["level"] == "urgent" and "staff" in doc["urgency"]["rules"]
    assert doc["location"]["text"] == "和平路32号门口"
    assert doc["location"]["district"] == "浦江县"

    # the same again changes nothing: no revision
    again = client.patch(f"/v1/tickets/{ticket}", json={**edit, "revision": 2},
                         headers=bearer(keys["staff"]))
    assert again.status_code == 200 and again.json()["changed"] is False
    assert again.json()["revision"] == 2

    history = client.get(f"/v1/tickets/{ticket}/revisions",
                         headers=bearer(keys["staff"])).json()
    assert len(history) == 1
    entry = history[0]
    assert entry["revision"] == 2 and entry["action"] == "save"
    assert entry["comment"] == "听了两遍" and entry["author"] == "key:staff-key"
    by_target = {c["target"]: c for c in entry["changes"]}
    assert set(by_target) == {"1", "2", "category", "urgency", "location.text",
                              "location.district", "summary"}
    seg = by_target["1"]
    assert seg["label"] == "第 2 段" and seg["before"] == "已经坏了一个星期了晚上很黑"
    assert ["insert", "多"] in seg["diff"]
    assert "".join(t for op, t in seg["diff"] if op != "insert") == seg["before"]
    assert "".join(t for op, t in seg["diff"] if op != "delete") == seg["after"]
    assert by_target["urgency"]["before"] == "normal"

    # the corrections are stored row by row: the next model's training data
    with env["store"].session() as s:
        from pipeline.store import Correction
        rows = s.query(Correction).filter_by(ticket_id=ticket).all()
    assert {(c.target_kind, c.target) for c in rows} >= {("segment", "1"), ("segment", "2")}


def test_discarding_a_segment(env: dict[str, Any]) -> None:
    ticket = fresh(env, n=300)
    r = env["client"].patch(f"/v1/tickets/{ticket}",
                            json={"revision": 1, "segments": [{"index": 0, "discard": True}]},
                            headers=bearer(env["keys"]["staff"]))
    assert r.status_code == 200, r.text
    seg = r.json()["ticket"]["transcript"]["segments"][0]
    assert seg["text"] == "" and "discarded" in seg["flags"]


@pytest.mark.parametrize(("edit", "status", "code"), [
    ({"segments": [{"index": 0, "text": ""}]}, 422, "empty_text"),
    ({"segments": [{"index": 0, "text": " \u200b \n"}]}, 422, "empty_text"),
    ({"segments": [{"index": 0}]}, 422, "empty_text"),
    ({"segments": [{"index": 0, "text": "很" * 1001}]}, 422, "text_too_long"),
    ({"segments": [{"index": 9, "text": "多了一段"}]}, 422, "unknown_segment"),
    ({"segments": [{"index": 0, "text": "甲"}, {"index": 0, "text": "乙"}]}, 422,
     "invalid_request"),
    ({"fields": {"summary": "长" * 81}}, 422, "text_too_long"),
    ({"fields": {"summary": "  "}}, 422, "empty_text"),
    ({"fields": {"category": "city.unicorns"}}, 422, "unknown_category"),
    ({"fields": {"kind": "闲聊"}}, 422, "invalid_request"),
    ({"fields": {"urgency": "critical"}}, 422, "invalid_request"),
    ({"fields": {"location": {"text": "路" * 501}}}, 422, "text_too_long"),
    ({"fields": {"colour": "red"}}, 422, "invalid_request"),
])
def test_refused_writes(env: dict[str, Any], edit: dict[str, Any], status: int,
                        code: str) -> None:
    ticket = fresh(env, n=400)
    for path in (f"/v1/tickets/{ticket}", f"/v1/tickets/{ticket}/approve"):
        method = env["client"].patch if path.endswith(ticket) else env["client"].post
        r = method(path, json={"revision": 1, **edit}, headers=bearer(env["keys"]["staff"]))
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code
    # nothing was written
    view = env["client"].get(f"/v1/tickets/{ticket}/review",
                             headers=bearer(env["keys"]["staff"])).json()
    assert view["revision"] == 1 and view["status"] == "new"


def test_wrong_role_and_unknown_ticket(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    ticket = fresh(env, n=500)
    body = {"revision": 1, "fields": {"kind": "求助"}}
    for path, method in ((f"/v1/tickets/{ticket}", client.patch),
                         (f"/v1/tickets/{ticket}/approve", client.post)):
        r = method(path, json=body, headers=bearer(keys["submitter"]))
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert method(path, json=body).status_code == 401
        r = method(path.replace(ticket, "T20261123-000000-00000000"), json=body,
                   headers=bearer(keys["staff"]))
        assert r.status_code == 404
    for path in (f"/v1/tickets/{ticket}/review", f"/v1/tickets/{ticket}/revisions"):
        assert client.get(path, headers=bearer(keys["submitter"])).status_code == 403
    # an admin may do what staff may
    r = client.patch(f"/v1/tickets/{ticket}", json=body, headers=bearer(keys["admin"]))
    assert r.status_code == 200


def test_stale_revision_is_a_conflict_not_an_overwrite(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    ticket = fresh(env, n=600)
    first = client.patch(f"/v1/tickets/{ticket}",
                         json={"revision": 1, "fields": {"summary": "第一位复核员的摘要"}},
                         headers=bearer(keys["staff"]))
    assert first.status_code == 200
    late = client.patch(f"/v1/tickets/{ticket}",
                        json={"revision": 1, "fields": {"summary": "第二位复核员的摘要"}},
                        headers=bearer(keys["admin"]))
    assert late.status_code == 409
    error = late.json()["error"]
    assert error["code"] == "revision_conflict"
    assert error["details"]["current_revision"] == 2
    assert error["details"]["updated_by"] == "key:staff-key"
    assert "key:staff-key" in error["message"]
    approve = client.post(f"/v1/tickets/{ticket}/approve", json={"revision": 1},
                          headers=bearer(keys["admin"]))
    assert approve.status_code == 409
    view = client.get(f"/v1/tickets/{ticket}/review", headers=bearer(keys["staff"])).json()
    assert view["ticket"]["summary"] == "第一位复核员的摘要"


def test_racing_saves_one_wins(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    ticket = fresh(env, n=700)
    results: list[int] = []
    barrier = threading.Barrier(4)

    def save(i: int) -> None:
        barrier.wait()
        r = client.patch(f"/v1/tickets/{ticket}",
                         json={"revision": 1, "fields": {"summary": f"并发摘要{i}"}},
                         headers=bearer(keys["staff"]))
        results.append(r.status_code)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409, 409, 409]


# --------------------------------------------------------------------------- approval


def test_approve_publishes_the_revised_ticket(env: dict[str, Any]) -> None:
    client, keys, store = env["client"], env["keys"], env["store"]
    # its own caller: the module's other 和平路 notes share the seed's phone, and a repeat
    # of one of them would be published as ticket.repeated
    ticket = fresh(env, n=800, phone="13900000800")
    saved = client.patch(f"/v1/tickets/{ticket}",
                         json={"revision": 1, "segments": [{"index": 0,
                                                            "text": "我要反映和平路的路灯"}]},
                         headers=bearer(keys["staff"])).json()
    r = client.post(f"/v1/tickets/{ticket}/approve",
                    json={"revision": saved["revision"], "fields": {"kind": "投诉"}},
                    headers=bearer(keys["admin"]))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "reviewed" and out["published_revision"] == 3 == out["revision"]
    assert out["reviewed_by"] == "key:admin-key"
    doc = out["ticket"]
    assert doc["review"]["needed"] is False and doc["review"]["reviewed_by"] == "key:admin-key"
    with store.session() as s:
        events = s.query(OutboxEvent).filter_by(ticket_id=ticket).order_by(OutboxEvent.id).all()
    assert [(e.revision, e.event_type) for e in events] == [(1, "ticket.created"),
                                                            (3, EVENT_TICKET_REVISED)]
    assert events[1].payload["transcript"]["segments"][0]["text"] == "我要反映和平路的路灯"
    history = client.get(f"/v1/tickets/{ticket}/revisions", headers=bearer(keys["staff"])).json()
    assert [(h["revision"], h["action"]) for h in history] == [(3, "approve"), (2, "save")]
    # a correction after approval reopens it; approving again publishes revision 5
    r = client.patch(f"/v1/tickets/{ticket}", json={"revision": 3,
                                                    "fields": {"summary": "和平路路灯不亮"}},
                     headers=bearer(keys["staff"]))
    assert r.json()["status"] == "in_review" and r.json()["reviewed_by"] is None
    r = client.post(f"/v1/tickets/{ticket}/approve", json={"revision": 4},
                    headers=bearer(keys["staff"]))
    assert r.json()["published_revision"] == 5


# --------------------------------------------------------------------------- audio


def test_playable_audio_with_ranges(env: dict[str, Any]) -> None:
    client, keys = env["client"], env["keys"]
    ticket = fresh(env, n=900)  # an AMR voice note: no browser plays it as is
    r = client.get(f"/v1/tickets/{ticket}/audio?format=wav", headers=bearer(keys["staff"]))
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert r.content[:4] == b"RIFF" and r.content[8:12] == b"WAVE"
    assert 15 * 32000 < len(r.content) < 18 * 32000  # 16 s of 16 kHz 16-bit mono
    part = client.get(f"/v1/tickets/{ticket}/audio?format=wav",
                      headers={**bearer(keys["staff"]), "Range": "bytes=1000-1999"})
    assert part.status_code == 206 and len(part.content) == 1000
    original = client.get(f"/v1/tickets/{ticket}/audio", headers=bearer(keys["staff"]))
    assert original.headers["content-type"] == "audio/amr"
    r = client.get(f"/v1/tickets/{ticket}/audio?format=flac", headers=bearer(keys["staff"]))
    assert r.status_code == 422


def test_the_page_is_served(env: dict[str, Any]) -> None:
    client: TestClient = env["client"]
    r = client.get("/review/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "review.js" in r.text
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert client.get("/review/review.js").headers["x-content-type-options"] == "nosniff"
    assert client.get("/", follow_redirects=False).headers["location"] == "/review/"
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/session", "/v1/review/queue", "/v1/tickets/{ticket_id}/review",
                 "/v1/tickets/{ticket_id}", "/v1/tickets/{ticket_id}/approve",
                 "/v1/tickets/{ticket_id}/revisions", "/v1/taxonomy"):
        assert path in paths, path


def test_migration_fills_the_queue_confidence_of_existing_tickets(tmp_path: Path) -> None:
    """0005 adds tickets.confidence: tickets stored before it get the same value the
    store computes for new ones (down to 0004 and up again drops and refills it)."""
    from alembic import command
    from alembic.config import Config

    from pipeline.store import ticket_confidence, upgrade

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade(url)
    store = Store.from_url(url)
    row = seed_ticket(store, BlobStore(tmp_path / "audio"), "light")
    expected = ticket_confidence(row.ticket)
    assert row.confidence == expected and expected is not None
    store.dispose()
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parents[1]
                                                / "pipeline" / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url)
    command.downgrade(cfg, "0004_batches")
    upgrade(url)
    store = Store.from_url(url)
    again = store.get_ticket_row(row.id)
    assert again is not None and again.confidence == pytest.approx(expected, abs=1e-4)
    store.dispose()
