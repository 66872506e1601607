"""The HTTP API as the phone app sees it: a real `minyin serve` (embedded mode: SQLite,
in-process job threads, JSONL sink, plus a webhook) on a loopback port, keys made with
`minyin keys create`, an HTTP client."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.sinks import DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature
from tests.audio_factory import tone, write_wav
from tests.service import Api, make_key, service_env, wait_until
from tests.test_sinks import Receiver

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NOTE = SAMPLES / "01_streetlight_heping_road.amr"  # 16 s
NOTE2 = SAMPLES / "05_garbage_not_collected.wav"
SECRET = "hook-secret"
MAX_UPLOAD = 20 * 1024 * 1024


@pytest.fixture(scope="module")
def hook() -> Iterator[Receiver]:
    # the complaint system's webhook is down for the first deliveries
    receiver = Receiver([500] * 6)
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, hook: Receiver) -> Iterator[Api]:
    data = tmp_path_factory.mktemp("api")
    env = service_env(
        data,
        MINYIN_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
        MINYIN_MAX_AUDIO_SECONDS="60",
        MINYIN_UPLOAD_RATE_LIMIT="12/minute",
        MINYIN_WEBHOOK_URL=hook.url,
        MINYIN_WEBHOOK_SECRET=SECRET,
        MINYIN_OUTBOX_RETRY_BASE_SECONDS="0.2",
    )
    server = Api(env, data / "serve.log")
    yield server
    server.close()


@pytest.fixture(scope="module")
def keys(api: Api) -> dict[str, str]:
    return {role: make_key(api.env, role.split("-")[0], role)
            for role in ("submitter", "submitter-b", "staff", "admin")}


@pytest.fixture(scope="module")
def done_note(api: Api, keys: dict[str, str]) -> dict[str, Any]:
    """One voice note uploaded by submitter A and carried through to its ticket."""
    r = api.upload(keys["submitter"], NOTE, phone="13812345678", client_ref="app-0001",
                   lat="29.46", lon="119.89", address="浦阳街道和平路")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == job["status_url"] == f"/v1/jobs/{job['job_id']}"
    assert job["status"] in ("queued", "running") and job["duplicate"] is False
    done = api.wait_job(keys["submitter"], job["job_id"])
    assert done["status"] == "done", done
    return done


def auth(key: str) -> dict[str, str]:
    return Api.auth(key)


# --------------------------------------------------------------------------- the path


def test_health_is_open_and_ready(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
    ready = api.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["mode"] == "embedded" and ready.json()["model_loaded"] is True
    assert api.http.get("/docs").status_code == 200
    assert "/v1/voice-notes" in api.http.get("/openapi.json").json()["paths"]


def test_voice_note_becomes_a_ticket(api: Api, keys: dict[str, str],
                                     done_note: dict[str, Any]) -> None:
    ticket_id = done_note["ticket_id"]
    assert done_note["ticket_url"] == f"/v1/tickets/{ticket_id}"
    assert done_note["attempts"] == 1 and done_note["audio_seconds"] > 10
    assert done_note["processing_seconds"] > 0

    mine = api.http.get(f"/v1/tickets/{ticket_id}", headers=auth(keys["submitter"])).json()
    assert mine["id"] == ticket_id and mine["source"] == "voice_note"
    assert "路灯" in mine["transcript"]["text"]
    assert mine["category"]["code"].startswith("city")
    assert mine["location"]["lat"] == pytest.approx(29.46)
    assert mine["submitter"]["client_ref"] == "app-0001"
    # the submitter sees the number masked; staff, who call back, see it whole
    assert mine["submitter"]["phone"] is None
    assert mine["submitter"]["phone_masked"] == "138****5678"
    staff = api.http.get(f"/v1/tickets/{ticket_id}", headers=auth(keys["staff"])).json()
    assert staff["submitter"]["phone"] == "13812345678"
    assert mine["audio"]["media_url"] == f"/v1/tickets/{ticket_id}/audio"
    assert mine["audio"]["sha256"] == hashlib.sha256(NOTE.read_bytes()).hexdigest()


def test_staff_gets_the_original_audio(api: Api, keys: dict[str, str],
                                       done_note: dict[str, Any]) -> None:
    url = f"/v1/tickets/{done_note['ticket_id']}/audio"
    r = api.http.get(url, headers=auth(keys["staff"]))
    assert r.status_code == 200
    assert r.content == NOTE.read_bytes()
    assert r.headers["content-type"] == "audio/amr"
    assert api.http.get(url, headers=auth(keys["submitter"])).status_code == 403


def test_duplicates_return_the_existing_job(api: Api, keys: dict[str, str],
                                            done_note: dict[str, Any]) -> None:
    # the same client_ref, even with other audio: the app retried its request
    again = api.upload(keys["submitter"], NOTE2, client_ref="app-0001")
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == done_note["job_id"] and again.json()["duplicate"]
    # the same audio resent without a client_ref within the window
    resent = api.upload(keys["submitter"], NOTE)
    assert resent.status_code == 200 and resent.json()["job_id"] == done_note["job_id"]
    # another submitter sending the same recording is a different complaint
    other = api.upload(keys["submitter-b"], NOTE, client_ref="app-0001")
    assert other.status_code == 202 and other.json()["job_id"] != done_note["job_id"]
    api.wait_job(keys["submitter-b"], other.json()["job_id"])


def test_ticket_list_filters_and_pages(api: Api, keys: dict[str, str],
                                       done_note: dict[str, Any]) -> None:
    staff = auth(keys["staff"])
    listed = api.http.get("/v1/tickets", headers=staff, params={"limit": 1}).json()
    assert listed["limit"] == 1 and len(listed["items"]) == 1
    assert listed["total"] >= 1
    only = api.http.get("/v1/tickets", headers=staff, params={
        "category": "city", "source": "voice_note", "urgency": "normal",
        "created_from": "2020-01-01T00:00:00+08:00"}).json()
    assert done_note["ticket_id"] in {t["id"] for t in only["items"]}
    none = api.http.get("/v1/tickets", headers=staff,
                        params={"created_to": "2020-01-01T00:00:00Z"}).json()
    assert none["total"] == 0 and none["next_offset"] is None
    naive = api.http.get("/v1/tickets", headers=staff, params={"created_to": "2020-01-01T00:00"})
    assert naive.status_code == 422
    bad = api.http.get("/v1/tickets", headers=staff, params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_request"


def test_tickets_reach_the_jsonl_file_and_the_webhook(api: Api, hook: Receiver,
                                                      done_note: dict[str, Any]) -> None:
    jsonl = Path(api.env["MINYIN_DATA_DIR"]) / "tickets.jsonl"
    ticket_id = done_note["ticket_id"]

    def in_file() -> bool:
        return jsonl.exists() and ticket_id in jsonl.read_text(encoding="utf-8")

    wait_until(in_file, 30, what="the ticket in tickets.jsonl")
    line = next(json.loads(x) for x in jsonl.read_text(encoding="utf-8").splitlines()
                if ticket_id in x)
    assert line["event_id"] == f"{ticket_id}:1"
    assert "13812345678" not in json.dumps(line)  # the file gets the public form

    # the webhook answered 500 six times; the relay kept the event and retried
    def delivered() -> list[tuple[dict[str, str], bytes]]:
        return [(h, b) for h, b in hook.requests
                if h.get(DELIVERY_HEADER) == f"{ticket_id}:1"]

    wait_until(lambda: len(hook.requests) > 6 and delivered(), 60, 0.2,
               "the webhook delivery after its 500s")
    headers, body = delivered()[-1]
    assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body,
                            headers[SIGNATURE_HEADER])
    assert json.loads(body)["ticket"]["submitter"]["phone"] == "13812345678"


def test_metrics(api: Api, keys: dict[str, str], done_note: dict[str, Any]) -> None:
    assert api.http.get("/metrics").status_code == 401
    assert api.http.get("/metrics", headers=auth(keys["submitter"])).status_code == 403
    text = api.http.get("/metrics", headers=auth(keys["staff"])).text
    for name in ('minyin_jobs{queue="voice",status="done"}', 'minyin_queue_depth{',
                 "minyin_audio_seconds_total", "minyin_processing_seconds_total",
                 "minyin_realtime_factor", "minyin_job_processing_seconds_bucket",
                 'minyin_outbox_events{state="pending"}'):
        assert name in text, name
    rtf = next(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("minyin_realtime_factor "))
    assert 0 < rtf < 5


# --------------------------------------------------------------------------- security


ROUTES = [("get", "/v1/jobs/J20261123-000000-00000000"), ("get", "/v1/tickets"),
          ("get", "/v1/tickets/T20261123-000000-00000000"),
          ("get", "/v1/tickets/T20261123-000000-00000000/audio"), ("get", "/metrics"),
          ("post", "/v1/voice-notes"), ("get", "/v1/keys"), ("post", "/v1/keys"),
          ("delete", "/v1/keys/K0"), ("get", "/v1/models")]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_valid_key(api: Api, method: str, path: str) -> None:
    for headers in ({}, auth("mny_not-a-real-key"), auth("garbage"),
                    {"Authorization": "Basic dXNlcjpwYXNz"}):
        r = api.http.request(method, path, headers=headers)
        assert r.status_code == 401, (method, path, headers, r.text)
        assert r.json()["error"]["code"] == "unauthorized"


def test_roles(api: Api, keys: dict[str, str]) -> None:
    sub, staff, admin = auth(keys["submitter"]), auth(keys["staff"]), auth(keys["admin"])
    for headers in (sub, staff):
        assert api.http.get("/v1/keys", headers=headers).status_code == 403
        assert api.http.get("/v1/models", headers=headers).status_code == 403
    assert api.http.get("/v1/models", headers=admin).json()["dialects"]
    made = api.http.post("/v1/keys", headers=admin, json={"name": "tmp", "role": "staff"})
    assert made.status_code == 201
    new_key = made.json()["key"]
    assert api.http.get("/v1/tickets", headers=auth(new_key)).status_code == 200
    listed = api.http.get("/v1/keys", headers=admin).json()
    assert all(k["key"] is None for k in listed)  # secrets are never shown again
    assert api.http.delete(f"/v1/keys/{made.json()['id']}", headers=admin).status_code == 204
    assert api.http.get("/v1/tickets", headers=auth(new_key)).status_code == 401


def test_a_submitter_cannot_read_another_submitters_work(
        api: Api, keys: dict[str, str], done_note: dict[str, Any]) -> None:
    other = auth(keys["submitter-b"])
    for path in (f"/v1/jobs/{done_note['job_id']}", f"/v1/tickets/{done_note['ticket_id']}"):
        r = api.http.get(path, headers=other)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    ids = {t["id"] for t in api.http.get("/v1/tickets", headers=other).json()["items"]}
    assert done_note["ticket_id"] not in ids
    mine = {t["id"] for t in api.http.get("/v1/tickets",
                                          headers=auth(keys["submitter"])).json()["items"]}
    assert done_note["ticket_id"] in mine


# --------------------------------------------------------------------------- bad uploads


def blob_count(api: Api) -> int:
    root = Path(api.env["MINYIN_DATA_DIR"]) / "audio"
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def post(api: Api, key: str, name: str, content: bytes, **form: str) -> httpx.Response:
    return api.http.post("/v1/voice-notes", headers=auth(key),
                         files={"audio": (name, content)}, data=form)


def test_bad_uploads_are_refused_with_a_code(api: Api, keys: dict[str, str],
                                            tmp_path: Path) -> None:
    key = make_key(api.env, "submitter", "bad-uploads")
    before = blob_count(api)
    cases: list[tuple[httpx.Response, int, str]] = [
        (post(api, key, "empty.amr", b""), 400, "empty"),
        (post(api, key, "x.amr", b"\x00\x01junk" * 100), 415, "not_audio"),
        (post(api, key, "../../etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n" * 20),
         415, "not_audio"),
        (post(api, key, "note.m4a", NOTE2.read_bytes()[:3000]), 422, "unreadable_audio."),
    ]
    long_wav = write_wav(tmp_path / "long.wav", tone(70, 16000), 16000)
    cases.append((post(api, key, "long.wav", long_wav.read_bytes()), 422, "audio_too_long"))
    for r, status, code in cases:
        assert r.status_code == status, r.text
        body = r.json()["error"]
        assert body["code"].startswith(code), body
        assert body["message"]
    assert "passwd" in cases[2][0].json()["error"]["message"]
    assert "/" not in cases[2][0].json()["error"]["message"].split(":")[0]
    assert blob_count(api) == before  # nothing refused was kept

    form_errors = [
        api.http.post("/v1/voice-notes", headers=auth(key), data={"phone": "1"}),
        post(api, key, "n.wav", NOTE2.read_bytes(), lat="29.4"),
        post(api, key, "n.wav", NOTE2.read_bytes(), lat="95", lon="10"),
        post(api, key, "n.wav", NOTE2.read_bytes(), dialect="klingon"),
        post(api, key, "n.wav", NOTE2.read_bytes(), dialect="/etc/passwd"),
        post(api, key, "n.wav", NOTE2.read_bytes(),
             dialect="../asr/data/profiles/mandarin.yaml"),
    ]
    for r in form_errors:
        assert r.status_code == 422, r.text
    for r in form_errors[3:]:
        assert r.json()["error"]["code"] == "unknown_dialect"


def test_path_traversal_filename_is_kept_as_a_plain_name(
        api: Api, keys: dict[str, str], tmp_path: Path) -> None:
    key = make_key(api.env, "submitter", "traversal")
    r = post(api, key, "../../../../tmp/evil.wav", NOTE2.read_bytes())
    assert r.status_code == 202, r.text
    data = Path(api.env["MINYIN_DATA_DIR"])
    assert not (Path("/tmp") / "evil.wav").exists()
    assert not list(data.parent.glob("evil*"))
    job = api.wait_job(key, r.json()["job_id"])
    audio = api.http.get(f"/v1/tickets/{job['ticket_id']}/audio", headers=auth(keys["staff"]))
    disposition = audio.headers["content-disposition"]
    assert "/" not in disposition and ".." not in disposition.replace("...", "")


def test_a_200_mb_upload_is_refused_before_it_is_stored(api: Api) -> None:
    key = make_key(api.env, "submitter", "big")
    before = blob_count(api)
    huge = b"\x00" * (200 * 1024 * 1024)
    r = post(api, key, "huge.wav", huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"

    # chunked, with no Content-Length to refuse by: counted while it streams
    boundary = "minyinboundary"

    def body() -> Iterator[bytes]:
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; "
               f"filename=\"huge.wav\"\r\nContent-Type: audio/wav\r\n\r\n").encode()
        for _ in range(200):
            yield b"\x00" * (1024 * 1024)
        yield f"\r\n--{boundary}--\r\n".encode()

    try:
        r = api.http.post("/v1/voice-notes", content=body(), headers={
            **auth(key), "Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 413, r.text
    except httpx.TransportError:
        pass  # the server answered 413 and closed while we were still sending
    assert blob_count(api) == before
    assert api.http.get("/healthz").status_code == 200


def test_rate_limit_answers_429(api: Api) -> None:
    key = make_key(api.env, "submitter", "greedy")
    statuses = [post(api, key, "e.amr", b"").status_code for _ in range(13)]
    assert statuses[:12] == [400] * 12  # 12/minute for uploads in this server
    last = post(api, key, "e.amr", b"")
    assert last.status_code == 429 and last.json()["error"]["code"] == "rate_limited"
    assert int(last.headers["retry-after"]) >= 1
    # reading is a separate, larger allowance
    assert api.http.get("/v1/tickets", headers=auth(key)).status_code == 200


def test_embedded_server_killed_mid_job_finishes_it_after_restart(tmp_path: Path) -> None:
    """Embedded mode: the job threads die with the server; the store keeps the job,
    and the restarted server takes it over once its lease ran out."""
    env = service_env(tmp_path, MINYIN_JOB_LEASE_SECONDS="4")
    key = make_key(env, "submitter")
    server = Api(env, tmp_path / "serve.log")
    try:
        r = server.upload(key, SAMPLES / "07_hotline_call_manhole_8k_stereo.wav")
        assert r.status_code == 202
        job_id = r.json()["job_id"]
        wait_until(lambda: server.job(key, job_id)["status"] == "running", 60, 0.05,
                   "the job to start")
    finally:
        server.proc.kill()  # SIGKILL, mid-job
        server.http.close()
    again = Api(env, tmp_path / "serve2.log")
    try:
        job = again.wait_job(key, job_id, timeout=240)
        assert job["status"] == "done" and job["attempts"] == 2
        listed = again.http.get("/v1/tickets", headers=auth(key)).json()
        assert [t["id"] for t in listed["items"]] == [job["ticket_id"]]
        assert listed["items"][0]["source"] == "hotline"
    finally:
        again.close()
