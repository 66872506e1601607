"""The review API's side of 重复件 and 一类事: the ticket view carries its cluster and
duplicates, and staff mark and unmark repeats, split tickets out of a cluster and merge
clusters, each kept in the history with who did it, each refusal naming its field.

In-process (FastAPI's TestClient over the real app, SQLite store), tickets made from
typed messages through POST /v1/messages (the real builder and the store's matcher)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import hash_password
from tests.test_review_api import PASSWORD, NullDispatcher, bearer, make_settings


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[dict[str, Any]]:
    app = create_app(make_settings(tmp_path), dispatcher=NullDispatcher(), maintenance=False)
    with TestClient(app) as client:
        store = app.state.store
        store.create_staff_user("alice", hash_password(PASSWORD), display_name="王丽")
        keys = {r: store.create_api_key(f"{r}-key", r)[0] for r in ("submitter", "staff")}
        yield {"client": client, "store": store, "keys": keys,
               "staff": bearer(keys["staff"]), "submitter": bearer(keys["submitter"])}


def post(env: dict[str, Any], text: str, phone: str, title: str = "路灯坏了") -> str:
    r = env["client"].post("/v1/messages", headers=env["submitter"],
                           json={"title": title, "text": text, "phone": phone})
    assert r.status_code == 201, r.text
    return r.json()["ticket_id"]


def seed(env: dict[str, Any]) -> dict[str, str]:
    """Three callers on 郑宅镇's street lights (a cluster), the first of them phoning
    again (a repeat), and three on 郑宅镇's traffic lights (another cluster)."""
    ids = {
        "a": post(env, "郑宅镇的路灯坏了好几天了晚上很黑希望尽快修好", "13800000001"),
        "b": post(env, "郑宅镇路灯不亮了", "13800000002"),
        "c": post(env, "喂那个郑宅镇这边路灯晚上都不亮", "13800000003"),
        "again": post(env, "又打来了郑宅镇路灯还是不亮啊希望赶紧修路灯", "13800000001"),
    }
    for n in range(3):
        ids[f"t{n}"] = post(env, f"郑宅镇红绿灯坏了{n}", f"1380000002{n}", title="红绿灯坏了")
    return ids


def review(env: dict[str, Any], ticket_id: str) -> dict[str, Any]:
    r = env["client"].get(f"/v1/tickets/{ticket_id}/review", headers=env["staff"])
    assert r.status_code == 200, r.text
    return r.json()


def error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_the_view_carries_the_cluster_and_the_duplicates(env: dict[str, Any]) -> None:
    ids = seed(env)
    first = review(env, ids["a"])
    assert first["audio_url"] is None and first["ticket"]["audio"] is None  # typed
    panel = first["repeats"]
    assert panel["duplicate_of"] is None and panel["repeat_count"] == 1
    assert [r["ticket_id"] for r in panel["repeats"]] == [ids["again"]]
    assert panel["repeats"][0]["summary"]
    cluster = panel["cluster"]
    assert cluster["cluster_id"] == first["ticket"]["cluster_id"] == f"K-{ids['a']}"
    assert cluster["callers"] == 3 and cluster["size"] == 4 and cluster["heat"] > 0
    assert cluster["description"] and cluster["place"]["town"] == "郑宅镇"
    members = {m["ticket_id"]: m for m in cluster["members"]}
    assert set(members) == {ids["a"], ids["b"], ids["c"], ids["again"]}
    assert members[ids["again"]]["duplicate_of"] == ids["a"]
    assert all(m["summary"] for m in members.values())
    assert {h["action"] for h in panel["history"]} >= {"cluster.form", "duplicate.link"}

    repeat = review(env, ids["again"])["repeats"]
    assert repeat["duplicate_of"]["ticket_id"] == ids["a"] and repeat["repeats"] == []
    assert repeat["cluster"]["cluster_id"] == cluster["cluster_id"]

    # the queue lists typed messages (no audio, no duration) and filters them
    r = env["client"].get("/v1/review/queue", headers=env["staff"],
                          params={"source": "message", "status": "all"})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == len(ids) and r.json()["items"][0]["duration_s"] is None


def test_unmark_and_mark_a_duplicate(env: dict[str, Any]) -> None:
    client, staff = env["client"], env["staff"]
    ids = seed(env)
    url = f"/v1/tickets/{ids['again']}/duplicate-of"
    r = client.delete(url, headers=staff)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["ticket"]["duplicate_of"] is None and out["repeats"]["duplicate_of"] is None
    first = review(env, ids["a"])
    assert first["ticket"]["repeat_count"] == 0 and first["repeats"]["repeats"] == []
    row = first["repeats"]["history"][0]  # newest first, on the first ticket's page too
    assert (row["action"], row["author"], row["ticket_id"]) == (
        "duplicate.unlink", "key:staff-key", ids["again"])
    assert row["detail"] == {"first": ids["a"]}
    error_body = error(client.delete(url, headers=staff), 409)
    assert error_body["code"] == "conflict" and error_body["details"][0]["field"] == "ticket_id"

    # a signed-in reviewer marks it again: the history names her; the cookie needs CSRF
    page = TestClient(client.app)
    csrf = page.post("/v1/session", json={"username": "alice", "password": PASSWORD}
                     ).json()["csrf_token"]
    assert error(page.put(url, json={"first": ids["a"]}), 403)["code"] == "csrf_failed"
    r = page.put(url, json={"first": ids["a"]}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.text
    assert r.json()["ticket"]["duplicate_of"] == ids["a"]
    assert r.json()["ticket"]["repeat_count"] == 1
    again = page.put(url, json={"first": ids["a"]}, headers={"X-CSRF-Token": csrf})
    assert again.status_code == 200  # the same again: nothing changes
    history = review(env, ids["a"])["repeats"]["history"]
    assert [(h["action"], h["author"]) for h in history[:2]] == [
        ("duplicate.link", "alice"), ("duplicate.unlink", "key:staff-key")]
    assert review(env, ids["a"])["ticket"]["repeat_count"] == 1


@pytest.mark.parametrize(("who", "body", "status", "field"), [
    ("b", {"first": "b"}, 422, "first"),          # itself
    ("b", {"first": "again"}, 409, "first"),      # a repeat: link to its first
    ("again", {"first": "b"}, 409, "ticket_id"),  # repeats a already
    ("a", {"first": "b"}, 409, "ticket_id"),      # has a repeat of its own
    ("b", {"first": "x" * 33}, 422, "first"),
    ("b", {"first": ""}, 422, "first"),
    ("b", {}, 422, "first"),
    ("b", {"first": "a", "also": 1}, 422, "also"),
])
def test_marking_refusals(env: dict[str, Any], who: str, body: dict[str, Any], status: int,
                          field: str) -> None:
    ids = seed(env)
    if body.get("first") in ids:
        body = {**body, "first": ids[body["first"]]}
    r = env["client"].put(f"/v1/tickets/{ids[who]}/duplicate-of", json=body,
                          headers=env["staff"])
    assert error(r, status)["details"][0]["field"] == field


def test_marking_unknown_tickets_and_roles(env: dict[str, Any]) -> None:
    client, staff = env["client"], env["staff"]
    ids = seed(env)
    assert error(client.put(f"/v1/tickets/{ids['b']}/duplicate-of",
                            json={"first": "T-none"}, headers=staff), 404)["code"] == "not_found"
    assert error(client.put("/v1/tickets/T-none/duplicate-of", json={"first": ids["a"]},
                            headers=staff), 404)["code"] == "not_found"
    assert error(client.delete("/v1/tickets/T-none/duplicate-of", headers=staff), 404)
    assert error(client.delete(f"/v1/tickets/{ids['again']}/duplicate-of",
                               headers=env["submitter"]), 403)["code"] == "forbidden"
    assert error(client.post(f"/v1/clusters/K-{ids['a']}/split", json={"tickets": [ids["a"]]},
                             headers=env["submitter"]), 403)


def test_split_a_ticket_out_and_merge_clusters(env: dict[str, Any]) -> None:
    client, staff = env["client"], env["staff"]
    ids = seed(env)
    lights, signals = f"K-{ids['a']}", f"K-{ids['t0']}"
    r = client.post(f"/v1/clusters/{lights}/split", json={"tickets": [ids["c"]]}, headers=staff)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["new_cluster"] is None
    assert ids["c"] not in {m["ticket_id"] for m in out["cluster"]["members"]}
    assert out["cluster"]["size"] == 3 and out["cluster"]["history"][-1]["action"] == (
        "cluster.split")
    moved = review(env, ids["c"])
    assert moved["ticket"]["cluster_id"] is None and moved["repeats"]["cluster"] is None
    assert moved["repeats"]["cluster_pinned"] is True
    leave = moved["repeats"]["history"][0]
    assert (leave["action"], leave["author"], leave["detail"]) == (
        "cluster.leave", "key:staff-key", {"from": lights, "into": None})

    r = client.post(f"/v1/clusters/{lights}/merge", json={"clusters": [signals]},
                    headers=staff)
    assert r.status_code == 200, r.text
    merged = r.json()
    assert merged["size"] == 6 and merged["status"] == "active"
    assert {m["ticket_id"] for m in merged["members"]} >= {ids["t0"], ids["t1"], ids["t2"]}
    assert merged["history"][-1]["action"] == "cluster.merge"
    assert merged["history"][-1]["author"] == "key:staff-key"
    source = client.get(f"/v1/clusters/{signals}", headers=staff).json()
    assert source["status"] == "merged" and source["merged_into"] == lights
    assert review(env, ids["t1"])["repeats"]["cluster"]["cluster_id"] == lights

    def refused(path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        return error(client.post(path, json=body, headers=staff), status)

    # a merged cluster merges no more, either way
    assert refused(f"/v1/clusters/{lights}/merge", {"clusters": [signals]},
                   409)["details"][0]["field"] == "clusters.0"
    assert refused(f"/v1/clusters/{signals}/merge", {"clusters": [lights]},
                   409)["details"][0]["field"] == "cluster_id"
    assert refused(f"/v1/clusters/{lights}/merge", {"clusters": [lights]},
                   422)["details"][0]["field"] == "clusters.0"
    assert refused(f"/v1/clusters/{lights}/merge", {"clusters": ["K-none"]}, 404)
    assert refused("/v1/clusters/K-none/merge", {"clusters": [lights]}, 404)
    assert refused(f"/v1/clusters/{lights}/merge", {"clusters": []}, 422)
    assert refused(f"/v1/clusters/{lights}/merge", {"clusters": ["K"] * 51}, 422)
    assert refused(f"/v1/clusters/{'K' * 65}/merge", {"clusters": [lights]}, 422)
    # split: members only, each once, 1 to 500
    assert refused(f"/v1/clusters/{lights}/split", {"tickets": [ids["b"], ids["c"]]},
                   409)["details"][0]["field"] == "tickets.1"
    assert refused(f"/v1/clusters/{lights}/split", {"tickets": [ids["b"], ids["b"]]},
                   422)["details"][0]["field"] == "tickets"
    assert refused(f"/v1/clusters/{lights}/split", {"tickets": ["T-none"]}, 404)
    assert refused("/v1/clusters/K-none/split", {"tickets": [ids["b"]]}, 404)
    assert refused(f"/v1/clusters/{lights}/split", {"tickets": []}, 422)
    assert refused(f"/v1/clusters/{lights}/split", {"tickets": ["T"] * 501}, 422)
    assert refused(f"/v1/clusters/{lights}/split", {"tickets": [ids["b"]],
                                                   "new_cluster": "maybe"}, 422)


def test_a_split_of_enough_callers_forms_a_new_cluster_or_none(env: dict[str, Any]) -> None:
    client, staff = env["client"], env["staff"]
    ids = seed(env)
    lights, signals = f"K-{ids['a']}", f"K-{ids['t0']}"
    client.post(f"/v1/clusters/{lights}/merge", json={"clusters": [signals]}, headers=staff)
    signal_ids = [ids[f"t{n}"] for n in range(3)]
    r = client.post(f"/v1/clusters/{lights}/split", json={"tickets": signal_ids}, headers=staff)
    assert r.status_code == 200, r.text
    new = r.json()["new_cluster"]
    assert new is not None and {m["ticket_id"] for m in new["members"]} == set(signal_ids)
    assert review(env, ids["t0"])["repeats"]["history"][0]["detail"]["into"] == new["cluster_id"]
    # the same out of that one, into none: the cluster it leaves is dissolved
    r = client.post(f"/v1/clusters/{new['cluster_id']}/split",
                    json={"tickets": signal_ids, "new_cluster": False}, headers=staff)
    assert r.status_code == 200, r.text
    assert r.json()["new_cluster"] is None and r.json()["cluster"]["status"] == "dissolved"
    assert all(review(env, t)["ticket"]["cluster_id"] is None for t in signal_ids)
