"""重复件 and 一类事 in the store (pipeline.store_clusters) on SQLite and PostgreSQL:
the live path (typed messages through Store.save_message_ticket), events, and the
staff functions (merge, split, link, unlink) with their history."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline import store_clusters as sc
from pipeline.messages import TypedMessage, ticket_from_message
from pipeline.outbox import StoreOutbox
from pipeline.store import OutboxEvent, Store
from pipeline.tickets.repeats import caller_key
from tests.test_store import backend, store  # noqa: F401 - the fixtures

T0 = datetime(2026, 6, 1, 9, 0, tzinfo=timezone(timedelta(hours=8)))


def send(st: Store, text: str, *, phone: str | None = None, user: str | None = None,
         day: float = 0, address: str | None = None):
    msg = TypedMessage(title="", text=text, phone=phone, user=user, address=address,
                       submitted_at=T0 + timedelta(days=day))
    ticket = ticket_from_message(msg, now=T0 + timedelta(days=day))
    saved, created = st.save_message_ticket(ticket, content_sha256=msg.content_sha256(),
                                            caller=caller_key(phone, user),
                                            now=T0 + timedelta(days=day))
    assert created
    return saved


def events(st: Store) -> list[OutboxEvent]:
    with st.session() as s:
        return list(s.query(OutboxEvent).order_by(OutboxEvent.id))


LIGHT = "我是郑宅镇的郑宅镇那个路灯坏了好几天了晚上很黑希望尽快修好"


@pytest.fixture()
def st(store: Store) -> Store:  # noqa: F811
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM repeat_history")
    return store


def test_a_repeat_links_its_first_and_publishes_an_update(st: Store) -> None:
    first = send(st, LIGHT, phone="13800000001")
    again = send(st, "又打来了郑宅镇路灯还是不亮啊希望赶紧修路灯", phone="+86 138 0000 0001",
                 day=3)
    assert first.duplicate_of is None
    assert again.duplicate_of == first.id and again.repeat_count == 1
    stored_first = st.get_ticket(first.id)
    assert stored_first is not None and stored_first.repeat_count == 1
    kinds = [(e.ticket_id, e.event_type) for e in events(st)]
    assert (again.id, "ticket.repeated") in kinds and (again.id, "ticket.created") not in kinds
    # another matter of the same caller, and the same matter a season later: new tickets
    water = send(st, "郑宅镇自来水发黄好几天了", phone="13800000001", day=4)
    late = send(st, LIGHT, phone="13800000001", day=120)
    assert water.duplicate_of is None
    # the first is still open (nobody approved it): a repeat whatever its age
    assert late.duplicate_of == first.id and late.repeat_count == 2
    row, repeats = sc.ticket_repeats(st, first.id)
    assert row is not None and repeats == [again.id, late.id]
    # staff: the late one is not a repeat; then link it back
    sc.unlink_duplicate(st, late.id, author="alice")
    assert st.get_ticket(late.id).duplicate_of is None
    assert st.get_ticket(first.id).repeat_count == 1
    assert sc.link_duplicate(st, late.id, first.id, author="alice") == 2
    with pytest.raises(ValueError, match="itself a repeat"):
        sc.link_duplicate(st, water.id, again.id, author="alice")
    actions = [(h.action, h.author) for h in sc.ticket_history(st, late.id)]
    assert actions == [("duplicate.link", "pipeline"), ("duplicate.unlink", "alice"),
                       ("duplicate.link", "alice")]


def test_three_callers_form_a_cluster_that_grows(st: Store) -> None:
    a = send(st, LIGHT, phone="13800000011")
    b = send(st, "郑宅镇路灯不亮了", user="wx-22", day=1)
    assert b.cluster_id is None
    c = send(st, "喂那个郑宅镇这边路灯晚上都不亮", phone="13800000033", day=2)
    cid = f"K-{a.id}"
    assert c.cluster_id == cid
    assert st.get_ticket(a.id).cluster_id == cid and st.get_ticket(b.id).cluster_id == cid
    d = send(st, "郑宅镇路灯坏了没人修", phone="13800000044", day=5)
    assert d.cluster_id == cid
    # another problem, another county: not in it
    other = send(st, "郑宅镇垃圾没人清运", phone="13800000055", day=5)
    assert other.cluster_id is None
    page = sc.list_clusters(st, min_size=2)
    assert [x.id for x in page.items] == [cid] and page.items[0].callers == 4
    assert sc.list_clusters(st, min_size=5).total == 0
    with pytest.raises(ValueError):
        sc.list_clusters(st, limit=0)
    cluster_events = [e for e in events(st) if e.event_type == "cluster.updated"]
    assert [e.revision for e in cluster_events] == [1, 2]
    assert all(e.ticket_id == a.id for e in cluster_events)
    # the relay's form: its own event id per version, the cluster alongside the anchor
    published = [i.event for i in StoreOutbox(st).pending(100) if i.event.type == "cluster.updated"]
    assert [e.event_id for e in published] == [f"{cid}:1", f"{cid}:2"]
    assert published[-1].cluster["members"] == sorted([a.id, b.id, c.id, d.id])

    # staff: split d out (too few callers for a cluster of its own), then merge back
    assert sc.split_cluster(st, cid, [d.id], author="bob") is None
    assert st.get_ticket(d.id).cluster_id is None
    e = send(st, "郑宅镇路灯还是坏的", phone="13800000066", day=6)
    detail = sc.get_cluster(st, cid)
    assert detail is not None
    assert d.id not in {m.ticket_id for m in detail.members}  # pinned out by staff
    assert e.id in {m.ticket_id for m in detail.members}
    assert [h.action for h in detail.history] == [
        "cluster.form", "cluster.grow", "cluster.split", "cluster.grow"]
    with pytest.raises(ValueError, match="member"):
        sc.split_cluster(st, cid, [other.id], author="bob")


def test_merge_keeps_the_source_as_merged(st: Store) -> None:
    for i in range(3):
        send(st, f"郑宅镇路灯坏了{i}", phone=f"1380000010{i}", day=i)
    for i in range(3):
        send(st, f"郑宅镇红绿灯坏了{i}", phone=f"1380000020{i}", day=i)
    ids = sorted(c.id for c in sc.list_clusters(st).items)
    assert len(ids) == 2
    sc.merge_clusters(st, ids[0], [ids[1]], author="carol")
    merged = sc.get_cluster(st, ids[1])
    assert merged is not None and merged.cluster.status == "merged"
    assert merged.cluster.merged_into == ids[0]
    assert sc.get_cluster(st, ids[0]).cluster.size == 6
    assert sc.list_clusters(st).total == 1
    with pytest.raises(LookupError):
        sc.merge_clusters(st, "K-nope", [ids[0]], author="carol")


def test_bad_filters_are_refused(st: Store, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="status"):
        sc.list_clusters(st, status="open")
    assert sc.get_cluster(st, "K-nothing") is None


# --- the API ---------------------------------------------------------------------------


def test_clusters_api(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from api.app import create_app
    from tests.test_review_api import NullDispatcher, make_settings

    app = create_app(make_settings(tmp_path), dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        st: Store = app.state.store
        keys = {r: st.create_api_key(f"{r}-key", r)[0] for r in ("submitter", "staff")}
        staff = {"Authorization": f"Bearer {keys['staff']}"}
        submitter = {"Authorization": f"Bearer {keys['submitter']}"}
        for i in range(3):
            r = client.post("/v1/messages", headers=submitter,
                            json={"title": "路灯坏了", "text": f"郑宅镇的路灯坏了好几天了{i}",
                                  "phone": f"1380000030{i}"})
            assert r.status_code in (200, 201, 202), r.text
        r = client.get("/v1/clusters", headers=submitter)
        assert r.status_code == 403
        r = client.get("/v1/clusters", headers=staff, params={"min_size": 3})
        assert r.status_code == 200, r.text
        [item] = r.json()["items"]
        assert item["callers"] == 3 and item["place"]["town"] == "郑宅镇"
        assert client.get("/v1/clusters", headers=staff, params={"limit": 0}).status_code == 422
        assert client.get("/v1/clusters", headers=staff,
                          params={"status": "open"}).status_code == 422
        one = client.get(f"/v1/clusters/{item['cluster_id']}", headers=staff).json()
        assert len(one["members"]) == 3 and one["history"][0]["action"] == "cluster.form"
        assert client.get("/v1/clusters/K-none", headers=staff).status_code == 404
        # the member tickets know their cluster
        tid = one["members"][0]["ticket_id"]
        assert st.get_ticket(tid).cluster_id == item["cluster_id"]


# --- the voice path: Store.finish_job -------------------------------------------------


def test_voice_notes_of_one_caller_repeat_through_finish_job(st: Store) -> None:
    from tests.test_store import make_ticket, sha

    rows = []
    for n in range(2):
        job, _ = st.create_job(audio_sha256=sha(100 + n), client_ref=f"voice-{n}")
        assert st.claim_job(job.id) is not None
        rows.append(st.finish_job(job.id, make_ticket(job, "light")))  # same phone, same words
    first, again = (r.ticket for r in rows)
    assert first.duplicate_of is None
    assert again.duplicate_of == first.id and again.repeat_count == 1
    assert st.get_ticket(first.id).repeat_count == 1
    assert [e.event_type for e in events(st) if e.ticket_id == again.id] == ["ticket.repeated"]
    # a retried task finishes again: nothing new, no second repeat
    assert st.finish_job(rows[1].job_id, make_ticket(st.get_job(rows[1].job_id), "light")).id \
        == again.id
    assert sc.ticket_repeats(st, first.id)[1] == [again.id]


def test_the_live_path_finds_what_minyin_clusters_finds(st: Store) -> None:
    """The gold fixture through the store, one message at a time in time order, gives
    the same repeats and clusters as the batch over all of it."""
    import json

    from pipeline.clusters import analyse, build_items, record_from_dict
    from tests.test_repeats import GOLD, RULES

    rows = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines()]
    records = [record_from_dict({k: v for k, v in r.items() if k != "gold"}, f"gold:{n}")
               for n, r in enumerate(rows, 1)]
    records.sort(key=lambda r: (r.time, r.id))
    clusters, repeats = analyse([i for i, _ in build_items(records)], RULES)
    by_ticket: dict[str, str] = {}
    for rec in records:
        ticket = ticket_from_message(rec.message, now=rec.time)
        saved, _ = st.save_message_ticket(ticket, content_sha256=rec.message.content_sha256(),
                                          caller=rec.caller, now=rec.time)
        by_ticket[saved.id] = rec.id
    live_repeats = {}
    with st.session() as s:
        for m in s.query(sc.TicketMatter):
            if m.duplicate_of:
                live_repeats[by_ticket[m.ticket_id]] = by_ticket[m.duplicate_of]
    assert live_repeats == {k: v.first for k, v in repeats.items()}
    live = sc.list_clusters(st, limit=500).items
    live_sets = sorted(sorted(by_ticket[m.ticket_id] for m in sc.get_cluster(st, c.id).members)
                       for c in live)
    assert live_sets == sorted(sorted(c.members) for c in clusters)
