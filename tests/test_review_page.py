"""The staff review page in a real headless Chromium (Debian `chromium`, driven by
Playwright), against a real deployment: `minyin serve` and a `minyin worker` on
PostgreSQL and Redis, tickets made by the model from uploaded samples.

A reviewer signs in, opens the first queued ticket, plays a segment, edits a segment and
fields, saves, reloads and finds the edit, reads the history, approves, and the revised
ticket is on the Redis stream; a second reviewer in another browser context gets the
conflict message. Typed messages in a 一类事 with a 重复件: the reviewer sees the cluster
and the repeat, unmarks it, and the history shows it; no audio player. Screenshots go
to MINYIN_SCREENSHOT_DIR (default var/screenshots) for a person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.service import MINYIN, ROOT, SHARED_REDIS, Api, Proc, make_key, service_env, wait_until
from tests.test_store import _postgres_schema_url

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = os.environ.get("MINYIN_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
SHOTS = Path(os.environ.get("MINYIN_SCREENSHOT_DIR", ROOT / "var" / "screenshots"))
SAMPLES = ROOT / "samples"
NOTES = ["01_streetlight_heping_road.amr", "05_garbage_not_collected.wav",
         "07_hotline_call_manhole_8k_stereo.wav"]
PASSWORD = {"alice": "alice-pass-2026", "bob": "bob-pass-2026!"}

if not Path(CHROMIUM).exists():
    # CI installs chromium (.ci/run) and sets MINYIN_REQUIRE_BROWSER: there, fail loudly
    if os.environ.get("MINYIN_REQUIRE_BROWSER"):
        raise RuntimeError(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("review-page")
    schema = _postgres_schema_url()
    pg_url = next(schema)
    prefix = f"rtest-{uuid.uuid4().hex[:8]}"
    env = service_env(tmp / "data", MINYIN_DATABASE_URL=pg_url, MINYIN_REDIS_URL=SHARED_REDIS,
                      MINYIN_REDIS_PREFIX=prefix, MINYIN_OUTBOX_RETRY_BASE_SECONDS="0.2")
    for user, name in (("alice", "王丽"), ("bob", "赵强")):
        out = subprocess.run([*MINYIN, "users", "create", user, "--display-name", name,
                              "--password-stdin"], input=PASSWORD[user] + "\n", env=env,
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    worker = Proc([*MINYIN, "worker", "--queues", "voice"], env, tmp / "worker.log")
    api = Api(env, tmp / "serve.log", wait_ready=False)
    stream = redis.Redis.from_url(SHARED_REDIS, decode_responses=True)
    try:
        submitter, staff = make_key(env, "submitter"), make_key(env, "staff")
        jobs = []
        for name in NOTES:
            r = api.upload(submitter, SAMPLES / name, phone="13812345678")
            assert r.status_code == 202, r.text
            jobs.append(r.json()["job_id"])
        for job_id in jobs:
            done = api.wait_job(submitter, job_id, timeout=300)
            assert done["status"] == "done", (done, worker.tail())
        yield {"api": api, "staff": staff, "submitter": submitter, "stream": stream,
               "key": f"{prefix}:tickets"}
    finally:
        stream.delete(f"{prefix}:tickets")
        stream.close()
        api.close()
        worker.stop()
        schema.close()


@pytest.fixture(scope="module")
def browser(stack: dict[str, Any]) -> Iterator[Any]:
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def new_page(browser: Any, stack: dict[str, Any], errors: list[str]) -> Any:
    context = browser.new_context(base_url=stack["api"].url, locale="zh-CN",
                                  timezone_id="Asia/Shanghai",
                                  viewport={"width": 1400, "height": 1100})
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    # the page must live within its own Content-Security-Policy
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and "Content Security Policy" in m.text else None)
    page.set_default_timeout(20000)
    return page


def sign_in(page: Any, user: str) -> None:
    page.goto("/review/")
    page.wait_for_selector("#signin:not([hidden])")
    page.fill("#username", user)
    page.fill("#password", PASSWORD[user])
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#queue-list li")


def api_get(stack: dict[str, Any], path: str) -> Any:
    r = stack["api"].http.get(path, headers=Api.auth(stack["staff"]))
    assert r.status_code == 200, r.text
    return r.json()


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def audio_time(page: Any) -> float:
    return float(page.evaluate("document.querySelector('#audio').currentTime"))


def test_review_a_ticket_end_to_end(browser: Any, stack: dict[str, Any]) -> None:
    errors: list[str] = []
    page = new_page(browser, stack, errors)

    # -- sign in (a wrong password first) ---------------------------------------------
    page.goto("/review/")
    page.fill("#username", "alice")
    page.fill("#password", "not the password")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:has-text('用户名或密码错误')")
    assert not page.is_visible("#workspace")  # nothing of the queue before signing in
    shot(page, "01-sign-in")
    sign_in(page, "alice")
    assert "王丽" in page.inner_text("#who")
    queue = api_get(stack, "/v1/review/queue")
    assert queue["total"] == 3
    ids = page.eval_on_selector_all("#queue-list li", "els => els.map(e => e.dataset.id)")
    assert ids == [t["id"] for t in queue["items"]]  # urgent, then least confident
    assert "待复核 3" in page.inner_text("#counts")

    # -- open the first queued ticket ---------------------------------------------------
    page.click("#queue-list li >> nth=0")
    page.wait_for_selector("#segments li")
    ticket_id = ids[0]
    view = api_get(stack, f"/v1/tickets/{ticket_id}/review")
    segments = view["ticket"]["transcript"]["segments"]
    assert page.locator("#segments li").count() == len(segments)
    low = [i for i, s in enumerate(segments)
           if s["confidence"] < view["low_confidence_below"] and s["text"]]
    assert page.locator("#segments li.low").count() == len(low)

    # -- play a segment: the player's time moves inside it ------------------------------
    target = len(segments) - 1
    seg = segments[target]
    page.click(f"#segments li >> nth={target} >> .seg-play")
    wait_until(lambda: audio_time(page) > seg["start"] + 0.3, 15, 0.1,
               "the player to move into the segment")
    first = page.inner_text("#clock")
    wait_until(lambda: page.inner_text("#clock") != first, 10, 0.1, "the clock to move")
    assert seg["start"] <= audio_time(page) <= seg["end"] + 0.5
    shot(page, "02-queue-and-ticket")
    def paused() -> bool:
        return bool(page.evaluate("document.querySelector('#audio').paused"))

    # Esc toggles play/pause (the segment may have ended and paused by itself)
    was = paused()
    page.keyboard.press("Escape")
    wait_until(lambda: paused() != was, 5, 0.05, "Esc to toggle the player")
    if not paused():
        page.keyboard.press("Escape")
        wait_until(paused, 5, 0.05, "Esc to pause")
    before = audio_time(page)
    page.keyboard.press("F3")
    assert audio_time(page) == pytest.approx(max(0.0, before - 3), abs=0.3)
    page.keyboard.press("F4")
    assert audio_time(page) == pytest.approx(max(0.0, before - 3) + 3, abs=0.3)

    # -- edit a segment and fields, save with Ctrl+S ------------------------------------
    corrected = "我要反映一下和平路的路灯坏了"
    page.fill("#segments textarea >> nth=0", corrected)
    category = ("city.street_light" if view["ticket"]["category"]["code"] != "city.street_light"
                else "road.facilities")
    page.select_option("#category", category)
    page.fill("#summary", "和平路路灯损坏，夜间出行不便")
    page.fill("#comment", "对照录音改正")
    assert "未保存" in page.inner_text("#dirty")
    page.keyboard.press("Control+s")
    page.wait_for_selector("#banner:has-text('已保存为第 2 版')")
    shot(page, "03-ticket-saved")

    # -- reload: still signed in, same ticket, the edit is there ------------------------
    page.reload()
    page.wait_for_selector("#segments li")
    assert page.input_value("#segments textarea >> nth=0") == corrected
    assert page.input_value("#summary") == "和平路路灯损坏，夜间出行不便"
    assert page.input_value("#category") == category
    assert page.locator("#queue-list li.selected").get_attribute("data-id") == ticket_id

    # -- the history shows the revision, differences highlighted ------------------------
    entry = page.locator("#history li[data-revision='2']")
    entry.wait_for()
    text = entry.inner_text()
    assert "保存" in text and "alice" in text and "对照录音改正" in text
    assert "第 1 段" in text and "摘要" in text and "分类" in text
    assert entry.locator("ins").count() > 0
    page.locator("#history-box").scroll_into_view_if_needed()
    shot(page, "04-history")

    # -- approve: the revised ticket is on the Redis stream -----------------------------
    page.click("#approve")
    page.wait_for_selector("#banner:has-text('已批准')")
    published = api_get(stack, f"/v1/tickets/{ticket_id}/review")
    assert published["status"] == "reviewed" and published["revision"] == 3

    def on_stream() -> dict[str, Any] | None:
        for _, fields in stack["stream"].xrange(stack["key"]):
            if fields["ticket_id"] == ticket_id and fields["type"] == "ticket.revised":
                return fields
        return None

    fields = wait_until(on_stream, 30, 0.2, "the revised ticket on the stream")
    assert fields["revision"] == "3" and fields["event_id"] == f"{ticket_id}:3"
    body = json.loads(fields["body"])
    ticket = body["ticket"]
    assert ticket["id"] == ticket_id
    assert ticket["transcript"]["segments"][0]["text"] == corrected
    assert ticket["category"]["code"] == category
    assert ticket["review"]["reviewed_by"] == "alice"
    assert "已批准" in page.inner_text("#ticket-meta")
    assert not errors, errors


def test_second_reviewer_gets_a_conflict(browser: Any, stack: dict[str, Any]) -> None:
    errors: list[str] = []
    alice, bob = new_page(browser, stack, errors), new_page(browser, stack, errors)
    sign_in(alice, "alice")
    sign_in(bob, "bob")
    ticket_id = alice.locator("#queue-list li >> nth=0").get_attribute("data-id")
    assert ticket_id is not None
    for page in (alice, bob):
        page.click(f"#queue-list li[data-id='{ticket_id}']")
        page.wait_for_selector("#segments li")
    start = api_get(stack, f"/v1/tickets/{ticket_id}/review")["revision"]

    alice.fill("#summary", "王丽先保存的摘要")
    alice.click("#save")
    alice.wait_for_selector(f"#banner:has-text('已保存为第 {start + 1} 版')")

    # bob's queue refreshes (every 30 s; now, here): he is told before he saves
    bob.evaluate("loadQueue({quiet: true})")
    bob.wait_for_selector(f"#banner.notice:has-text('更新为第 {start + 1} 版')")
    bob.fill("#summary", "赵强后保存的摘要")
    bob.click("#save")
    banner = bob.locator("#banner.conflict:has-text('保存冲突')")
    banner.wait_for()
    message = banner.inner_text()
    assert "保存冲突" in message and "alice" in message and f"第 {start + 1} 版" in message
    shot(bob, "05-conflict")
    # nothing was overwritten
    view = api_get(stack, f"/v1/tickets/{ticket_id}/review")
    assert view["ticket"]["summary"] == "王丽先保存的摘要" and view["revision"] == start + 1

    # bob takes the latest revision with his change filled in again, and saves it
    bob.click("#banner button:has-text('重新填入我的修改')")
    # (the conflict banner's button says 重新填入 too: wait for what the reload says)
    bob.wait_for_selector("#banner:has-text('已载入第')")
    assert bob.input_value("#summary") == "赵强后保存的摘要"
    bob.keyboard.press("Control+s")
    bob.wait_for_selector(f"#banner:has-text('已保存为第 {start + 2} 版')")
    assert api_get(stack, f"/v1/tickets/{ticket_id}/review")["ticket"]["summary"] == (
        "赵强后保存的摘要")
    assert not errors, errors


def test_segment_navigation_and_large_fonts(browser: Any, stack: dict[str, Any]) -> None:
    errors: list[str] = []
    page = new_page(browser, stack, errors)
    sign_in(page, "bob")
    # the hotline call: two speakers
    hotline = next(t for t in api_get(stack, "/v1/review/queue?status=all")["items"]
                   if t["source"] == "hotline")
    # the filters: hotline recordings, whatever their status
    page.select_option("#f-status", "all")
    page.select_option("#f-source", "hotline")
    # (polled from here: wait_for_function evaluates a string, which the page's CSP forbids)
    wait_until(lambda: page.locator("#queue-list li").count() == 1, 20, 0.1,
               "the hotline filter")
    assert "#" in page.url and "source=hotline" in page.url  # a reload keeps the place
    page.click(f"#queue-list li[data-id='{hotline['id']}']")
    page.wait_for_selector("#segments li")
    speakers = page.eval_on_selector_all("#segments .speaker", "els => els.map(e => e.textContent)")
    assert {"来电人", "话务员"} <= set(speakers)
    page.locator("#ticket").click(position={"x": 5, "y": 5})
    page.keyboard.press("Alt+ArrowDown")
    page.keyboard.press("Alt+ArrowDown")
    assert page.locator("#segments li.current").get_attribute("data-index") == "1"
    focused = page.evaluate("document.activeElement.dataset.index")
    assert focused == "1"
    page.keyboard.press("Alt+ArrowUp")
    assert page.locator("#segments li.current").get_attribute("data-index") == "0"
    assert "F3" in page.inner_text("#shortcuts") and "Ctrl" in page.inner_text("#shortcuts")

    # large fonts: the page reflows instead of scrolling sideways
    for _ in range(4):
        page.click("#font-up")
    size = page.evaluate("parseFloat(getComputedStyle(document.documentElement).fontSize)")
    assert size >= 25
    page.set_viewport_size({"width": 1024, "height": 1100})
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 1
    shot(page, "06-large-font-hotline")
    page.reload()  # the size is remembered, and so are the filters and the open ticket
    page.wait_for_selector("#segments li")
    assert page.input_value("#f-source") == "hotline"
    assert page.locator("#queue-list li.selected").get_attribute("data-id") == hotline["id"]
    assert page.evaluate(
        "parseFloat(getComputedStyle(document.documentElement).fontSize)") == size
    # signing out ends the session for the API too
    page.click("#sign-out")
    page.wait_for_selector("#signin:not([hidden])")
    r = httpx.get(f"{stack['api'].url}/v1/review/queue",
                  cookies={c["name"]: c["value"] for c in page.context.cookies()})
    assert r.status_code == 401
    assert not errors, errors


def post_message(stack: dict[str, Any], text: str, phone: str) -> str:
    r = stack["api"].http.post("/v1/messages", headers=Api.auth(stack["submitter"]),
                               json={"title": "路灯坏了", "text": text, "phone": phone})
    assert r.status_code == 201, r.text
    return str(r.json()["ticket_id"])


def test_cluster_and_duplicate_panel(browser: Any, stack: dict[str, Any]) -> None:
    # three callers on 郑宅镇's street lights (一类事), the first phoning again (重复件)
    first = post_message(stack, "郑宅镇的路灯坏了好几天了晚上很黑希望尽快修好", "13700000001")
    others = [post_message(stack, "郑宅镇路灯不亮了", "13700000002"),
              post_message(stack, "喂那个郑宅镇这边路灯晚上都不亮", "13700000003")]
    again = post_message(stack, "又打来了郑宅镇路灯还是不亮啊希望赶紧修路灯", "13700000001")
    panel = api_get(stack, f"/v1/tickets/{first}/review")["repeats"]
    assert [r["ticket_id"] for r in panel["repeats"]] == [again]
    cluster = panel["cluster"]
    assert cluster is not None and cluster["size"] == 4

    errors: list[str] = []
    page = new_page(browser, stack, errors)
    sign_in(page, "alice")
    page.select_option("#f-status", "all")
    page.select_option("#f-source", "message")
    page.locator(f"#queue-list li[data-id='{first}']").click()
    page.wait_for_selector("#repeats:not([hidden]) #cluster-members li")
    # a typed message: its title, its text, no audio player, nothing to play
    assert page.is_hidden("#player") and page.locator("#segments .seg-play").count() == 0
    assert page.get_attribute("#audio", "src") is None
    assert "路灯坏了" in page.inner_text("#ticket-title")
    assert "文字留言" in page.inner_text("#ticket-meta")
    # the cluster: its description, heat and members; the repeat of this ticket
    assert page.inner_text("#cluster-desc") == cluster["description"]
    assert f"热度 {cluster['heat']:.1f}" in page.inner_text("#cluster-panel")
    members = page.eval_on_selector_all("#cluster-members li", "els => els.map(e => e.dataset.id)")
    assert sorted(members) == sorted([first, again, *others])
    assert page.locator("#repeat-list li").count() == 1
    assert page.locator(f"#repeat-list li[data-id='{again}']").is_visible()
    page.locator("#repeats").scroll_into_view_if_needed()
    shot(page, "07-cluster-and-repeat")

    # a member is a link that opens it; from there, back to the first ticket
    page.click(f"#cluster-members li[data-id='{others[0]}'] a")
    page.wait_for_selector(f"#ticket-title:has-text('{others[0]}')")
    assert page.locator("#cluster-members li.this").get_attribute("data-id") == others[0]
    page.click(f"#cluster-members li[data-id='{first}'] a")
    page.wait_for_selector(f"#ticket-title:has-text('{first}')")
    page.wait_for_selector(f"#repeat-list li[data-id='{again}']")

    # unmark the repeat: the panel and the history say so, and so does the API
    page.click(f"#repeat-list li[data-id='{again}'] button.unmark")
    page.wait_for_selector("#banner.ok:has-text('不再是本件的重复件')")
    page.wait_for_selector("#dup-panel:has-text('没有重复件')")
    entry = page.locator("#history li[data-action='duplicate.unlink']")
    entry.wait_for()
    text = entry.inner_text()
    assert "取消重复件" in text and "alice" in text and again in text
    assert api_get(stack, f"/v1/tickets/{again}/review")["ticket"]["duplicate_of"] is None
    assert api_get(stack, f"/v1/tickets/{first}/review")["ticket"]["repeat_count"] == 0
    page.locator("#history-box").scroll_into_view_if_needed()
    shot(page, "08-repeat-unmarked")
    assert not errors, errors
