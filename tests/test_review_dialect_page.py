"""A Wu voice note on the review page (real Chromium, `minyin serve` on PostgreSQL): it
reaches the reviewer who speaks Wu first, not the one who does not; she writes what was
said in Wu and its Mandarin meaning per segment and approves; the ticket is built again
from the Mandarin, and `minyin corrections export` holds both with the variety."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service import MINYIN, ROOT, Api, make_key, service_env, wait_until
from tests.test_review_page import CHROMIUM, SHOTS, api_get, new_page, playwright_api
from tests.test_store import _postgres_schema_url

PASSWORD = {"wangli": "wangli-pass-2026", "zhao": "zhao-pass-2026!"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from pipeline.blobs import BlobStore
    from pipeline.store import Store
    from tests.review_seed import seed_ticket

    tmp = tmp_path_factory.mktemp("review-dialect")
    schema = _postgres_schema_url()
    pg_url = next(schema)
    env = service_env(tmp / "data", MINYIN_DATABASE_URL=pg_url,
                      MINYIN_REDIS_PREFIX=f"rdtest-{uuid.uuid4().hex[:8]}")
    env.pop("MINYIN_REDIS_URL", None)
    for user, name, dialects in (("wangli", "王丽", "wu,mandarin"), ("zhao", "赵强", "mandarin")):
        out = subprocess.run([*MINYIN, "users", "create", user, "--display-name", name,
                              "--dialects", dialects, "--password-stdin"],
                             input=PASSWORD[user] + "\n", env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    store = Store.from_url(pg_url, migrate=True)
    blobs = BlobStore(tmp / "data" / "audio")
    light = seed_ticket(store, blobs, "light", n=0)
    wu = seed_ticket(store, blobs, "wu", n=5, phone="13900001111")
    api = Api(env, tmp / "serve.log", wait_ready=True)
    try:
        yield {"api": api, "staff": make_key(env, "staff"), "env": env, "tmp": tmp,
               "wu": wu.id, "light": light.id}
    finally:
        api.close()
        store.engine.dispose()
        schema.close()


@pytest.fixture(scope="module")
def browser(stack: dict[str, Any]) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def sign_in(page: Any, user: str) -> None:
    page.goto("/review/")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#username", user)
    page.fill("#password", PASSWORD[user])
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#queue-list li")


def queue_ids(page: Any) -> list[str]:
    return page.eval_on_selector_all("#queue-list li", "els => els.map(e => e.dataset.id)")


def test_a_wu_note_reaches_the_wu_reviewer_who_transcribes_it(browser: Any,
                                                              stack: dict[str, Any]) -> None:
    errors: list[str] = []
    zhao = new_page(browser, stack, errors)
    sign_in(zhao, "zhao")
    # he does not speak Wu: the Wu note is not in his queue
    assert stack["light"] in queue_ids(zhao) and stack["wu"] not in queue_ids(zhao)

    page = new_page(browser, stack, errors)
    sign_in(page, "wangli")
    ids = queue_ids(page)
    assert ids[0] == stack["wu"], ids  # first: the dialect she speaks
    badge = page.inner_text(f"#queue-list li[data-id='{stack['wu']}']")
    assert "吴语" in badge
    # the dialect filter
    page.select_option("#f-dialect", "wu")
    # (polled from here: wait_for_function evaluates a string, which the page's CSP forbids)
    wait_until(lambda: queue_ids(page) == [stack["wu"]], 20, 0.1, "the dialect filter")
    page.click(f"#queue-list li[data-id='{stack['wu']}']")
    page.wait_for_selector("#segments li")
    assert page.is_visible("#dialect-box")
    assert "机器听写不可靠" in page.inner_text("#dialect-note")
    assert "不可靠" in page.inner_text("#segments li[data-index='0'] .machine-text")
    assert page.input_value("#segments textarea.seg-text[data-index='0']") == ""
    page.screenshot(path=str(SHOTS / "dialect-01-wu-ticket.png"))

    said = ["我屋里门口个路灯", "坏特一个礼拜了，夜到墨墨黑"]
    meaning = ["我家门口和平路的路灯", "坏了一个星期了，晚上很黑，请尽快维修"]
    for i in range(2):
        page.fill(f"#segments textarea.seg-dialect[data-index='{i}']", said[i])
        page.fill(f"#segments textarea.seg-text[data-index='{i}']", meaning[i])
    page.click("#approve")
    page.wait_for_selector("#banner:has-text('已批准')")
    page.screenshot(path=str(SHOTS / "dialect-02-approved.png"))

    view = api_get(stack, f"/v1/tickets/{stack['wu']}/review")
    t = view["ticket"]["transcript"]
    assert t["readable"] and t["variety"] == "wu" and t["variety_confirmed_by"] == "wangli"
    assert [s["dialect_text"] for s in t["segments"]] == said
    assert "路灯" in view["ticket"]["summary"]
    assert not any(f.startswith("dialect:") for f in view["ticket"]["review"]["flags"])

    out = stack["tmp"] / "export"
    done = subprocess.run([*MINYIN, "corrections", "export", "--out", str(out),
                           "--validation-fraction", "0"], env=stack["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in
            Path(out / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    wu_rows = [r for r in rows if r["ticket_id"] == stack["wu"]]
    assert [r["dialect_text"] for r in wu_rows] == said
    assert [r["text"] for r in wu_rows] == meaning
    assert all(r["variety"] == "wu" and r["variety_confirmed"] for r in wu_rows)
    assert not errors, errors
