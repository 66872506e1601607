"""Ticket sinks and the outbox relay (pipeline/sinks.py) against real Redis, a real local
HTTP server and real files. Redis at 127.0.0.1:6379 (MINYIN_TEST_REDIS_URL overrides);
the Redis tests skip when it is not there."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from pipeline.config import Settings
from pipeline.sinks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    JsonlSink,
    MemoryOutbox,
    RedisStreamSink,
    SinkError,
    StreamConsumer,
    TicketEvent,
    WebhookSink,
    read_jsonl,
    relay,
    sinks_from_settings,
    verify_signature,
)
from pipeline.ticket_schema import Ticket

REDIS_URL = os.environ.get("MINYIN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once
PHONE = "13912345678"
SECRET = "s3cret-key"


def make_ticket(n: int = 0, transcript: str = "小区门口的路灯坏了一个星期了，晚上很黑。") -> Ticket:
    return Ticket(
        id=f"T20261123-073000-{n:08x}",
        created_at=datetime(2026, 11, 23, 7, 30, tzinfo=timezone.utc),
        source="voice_note",
        submitter={"phone": PHONE},
        audio={"sha256": hashlib.sha256(str(n).encode()).hexdigest(), "duration_s": 4.2,
               "format": "amr"},
        transcript={"text": transcript},
        language="zh",
        dialect="mandarin",
        kind="投诉",
        category={"code": "city.lighting", "label": "路灯", "department": "城管"},
        summary="路灯坏了",
        model={"name": "whisper-base", "version": "1.0.0"},
    )


def make_event(n: int = 0, revision: int = 1) -> TicketEvent:
    return TicketEvent.for_ticket(make_ticket(n), revision=revision)


# --- the envelope ----------------------------------------------------------------------


def test_event_id_is_stable_per_revision_and_repr_hides_phone() -> None:
    first, again, revised = make_event(1), make_event(1), make_event(1, revision=2)
    assert first.event_id == again.event_id == f"{first.ticket_id}:1"
    assert (first.type, revised.type) == ("ticket.created", "ticket.revised")
    assert revised.event_id == f"{first.ticket_id}:2"
    assert PHONE not in repr(first) and PHONE not in str(first)
    assert TicketEvent.model_validate_json(first.body(True)) == first
    with pytest.raises(ValueError):
        TicketEvent(ticket_id="T20261123-073000-00000009", ticket=first.ticket)


def test_without_contact_the_document_is_the_public_form() -> None:
    ticket = make_ticket(2)
    event = TicketEvent.for_ticket(ticket)
    assert event.document(False)["ticket"] == ticket.public_dict()
    assert event.document(True)["ticket"] == ticket.storage_dict()
    assert PHONE not in event.body(False) and PHONE in event.body(True)
    assert event.ticket["submitter"]["phone"] == PHONE  # redaction copied, not mutated


# --- Redis stream ----------------------------------------------------------------------


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    client.close()


@pytest.fixture
def stream(rclient: redis.Redis) -> Iterator[str]:
    name = f"minyin:test:{uuid.uuid4().hex}"
    yield name
    rclient.delete(name, *rclient.scan_iter(f"{name}:*"))


def test_stream_consumer_group_reads_acks_and_drops_duplicates(
    rclient: redis.Redis, stream: str
) -> None:
    sink = RedisStreamSink(REDIS_URL, stream, maxlen=1000)
    consumer = StreamConsumer(rclient, stream, "complaints", "c1")
    consumer.ensure_group()
    consumer.ensure_group()  # idempotent
    a, b = make_event(10), make_event(11)
    sink.publish(a)
    sink.publish(b)
    sink.publish(a)  # a retry after a lost reply: the stream holds it twice
    assert rclient.xlen(stream) == 3
    entry = rclient.xrange(stream, count=1)[0][1]
    assert entry["event_id"] == a.event_id and entry["revision"] == "1"
    assert entry["type"] == "ticket.created" and entry["ticket_id"] == a.ticket_id
    assert json.loads(entry["body"])["ticket"]["submitter"]["phone"] == PHONE  # trusted sink

    handled: list[TicketEvent] = []
    assert consumer.process(handled.append) == (2, 1)
    assert [e.event_id for e in handled] == [a.event_id, b.event_id]
    assert handled[0] == a
    assert rclient.xpending(stream, "complaints")["pending"] == 0  # all acked
    assert consumer.process(handled.append) == (0, 0)
    sink.close()


def test_stream_consumer_takes_over_unacked_entries(rclient: redis.Redis, stream: str) -> None:
    sink = RedisStreamSink(REDIS_URL, stream, maxlen=1000)
    sink.ensure_group("complaints")
    sink.publish(make_event(20))
    crashed = StreamConsumer(rclient, stream, "complaints", "crashed")
    assert len(crashed.read()) == 1  # read, never acked (the consumer died)

    def boom(event: TicketEvent) -> None:
        raise RuntimeError("handler failed")

    survivor = StreamConsumer(rclient, stream, "complaints", "survivor", claim_idle_ms=0)
    with pytest.raises(RuntimeError):
        survivor.process(boom)  # claimed, handler raised: stays pending
    assert rclient.xpending(stream, "complaints")["pending"] == 1
    got: list[TicketEvent] = []
    assert survivor.process(got.append) == (1, 0)
    assert got[0].event_id == make_event(20).event_id
    assert rclient.xpending(stream, "complaints")["pending"] == 0


def test_redis_down_leaves_event_pending_then_drains(rclient: redis.Redis, stream: str) -> None:
    dead = RedisStreamSink(DEAD_REDIS_URL, stream)
    with pytest.raises(SinkError) as info:
        dead.publish(make_event(30))
    assert info.value.transient

    outbox = MemoryOutbox()
    for n in (30, 31):
        outbox.add(make_event(n))
    started = time.monotonic()
    result = relay(outbox, [dead])
    assert time.monotonic() - started < 5  # a stopped Redis must not hang the relay
    assert result.sent == 0 and result.transient_errors == 1  # stopped after the first
    assert result.stopped_early
    assert len(outbox.pending(10)) == 2 and not outbox.parked

    live = RedisStreamSink(REDIS_URL, stream)  # Redis is back
    result = relay(outbox, [live])
    assert (result.sent, result.transient_errors) == (2, 0)
    assert outbox.pending(10) == []
    consumer = StreamConsumer(rclient, stream, "complaints", "c1")
    consumer.ensure_group()
    assert [m.event.ticket_id for m in consumer.read()] == [
        make_ticket(30).id, make_ticket(31).id
    ]


# --- webhook ---------------------------------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1 answering a scripted list of statuses (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/minyin"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[type[Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int]) -> Receiver:
        r = Receiver(statuses)
        made.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in made:
        r.close()


def fast_webhook(url: str, secret: str = SECRET, **kw: object) -> WebhookSink:
    return WebhookSink(url, secret, timeout=2.0, backoff_s=0.01, **kw)  # type: ignore[arg-type]


def test_webhook_retries_500_then_delivers_signed(receiver_factory) -> None:
    receiver = receiver_factory([500, 500, 503])
    sink = fast_webhook(receiver.url, attempts=5)
    event = make_event(40)
    sink.publish(event)
    assert len(receiver.requests) == 4
    headers, body = receiver.requests[-1]
    assert headers[DELIVERY_HEADER] == event.event_id
    assert headers[EVENT_HEADER] == "ticket.created"
    assert {h[DELIVERY_HEADER] for h, _ in receiver.requests} == {event.event_id}
    ts, sig = headers[TIMESTAMP_HEADER], headers[SIGNATURE_HEADER]
    assert sig.startswith("sha256=")
    assert verify_signature(SECRET, ts, body, sig)
    assert not verify_signature("wrong-secret", ts, body, sig)
    assert not verify_signature(SECRET, ts, body.replace(b"T2026", b"T2027"), sig)
    assert not verify_signature(SECRET, ts, body, sig, now=float(ts) + 3600)  # replay
    assert TicketEvent.model_validate_json(body) == event
    sink.close()


def test_webhook_gives_up_transient_after_few_attempts(receiver_factory) -> None:
    receiver = receiver_factory([500] * 10)
    sink = fast_webhook(receiver.url, attempts=3)
    with pytest.raises(SinkError) as info:
        sink.publish(make_event(41))
    assert info.value.transient and len(receiver.requests) == 3


def test_webhook_400_is_permanent_and_not_retried(receiver_factory) -> None:
    receiver = receiver_factory([400])
    sink = fast_webhook(receiver.url, attempts=5)
    with pytest.raises(SinkError) as info:
        sink.publish(make_event(42))
    assert not info.value.transient and len(receiver.requests) == 1

    outbox = MemoryOutbox()
    outbox.add(make_event(42))
    receiver.statuses = [422]
    result = relay(outbox, [sink])
    assert result.permanent_errors == 1 and not result.stopped_early
    assert outbox.pending(10) == [] and make_event(42).event_id in outbox.parked


def test_webhook_unreachable_is_transient() -> None:
    sink = fast_webhook("http://127.0.0.1:1/hook", attempts=2)
    with pytest.raises(SinkError) as info:
        sink.publish(make_event(43))
    assert info.value.transient


def test_relay_tracks_delivery_per_sink(
    rclient: redis.Redis, stream: str, receiver_factory
) -> None:
    receiver = receiver_factory([500, 500])  # the webhook is down for one relay pass
    sinks = [RedisStreamSink(REDIS_URL, stream), fast_webhook(receiver.url, attempts=2)]
    outbox = MemoryOutbox()
    outbox.add(make_event(50))
    outbox.add(make_event(51))

    first = relay(outbox, sinks)
    assert (first.sent, first.deliveries, first.transient_errors) == (0, 2, 1)
    assert first.blocked_sinks == {"webhook"}
    assert len(receiver.requests) == 2  # the second event did not hit the broken webhook
    assert [item.delivered for item in outbox.pending(10)] == [frozenset({"redis"})] * 2

    second = relay(outbox, sinks)
    assert (second.sent, second.deliveries) == (2, 2)
    assert rclient.xlen(stream) == 2  # Redis was not published to again
    assert outbox.pending(10) == [] and set(outbox.sent) == {
        make_event(50).event_id, make_event(51).event_id
    }


# --- JSONL -----------------------------------------------------------------------------


def _append_many(path: str, bodies: list[str]) -> None:
    sink = JsonlSink(path, include_contact=True)
    for body in bodies:
        sink.publish(TicketEvent.model_validate_json(body))


def test_jsonl_two_processes_append_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "var" / "tickets.jsonl"
    long_text = "水管爆了水一直往外冒。" * 800  # ~26 KB lines: more than one pipe/page write
    per_process = 25
    ctx = multiprocessing.get_context("spawn")  # no fork of a threaded pytest process
    procs = [
        ctx.Process(
            target=_append_many,
            args=(str(path), [
                TicketEvent.for_ticket(make_ticket(p * 1000 + i, long_text)).body(True)
                for i in range(per_process)
            ]),
        )
        for p in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    events = read_jsonl(path)
    assert len(events) == 2 * per_process
    assert len({e.event_id for e in events}) == 2 * per_process
    assert path.read_bytes().endswith(b"\n")


def test_jsonl_contact_per_option(tmp_path: Path) -> None:
    event = make_event(60)
    JsonlSink(tmp_path / "public.jsonl").publish(event)  # default: no contact on disk
    JsonlSink(tmp_path / "full.jsonl", include_contact=True).publish(event)
    assert PHONE not in (tmp_path / "public.jsonl").read_text(encoding="utf-8")
    public = read_jsonl(tmp_path / "public.jsonl")[0]
    assert public.ticket["submitter"] == {"phone": None, "phone_masked": "139****5678",
                                          "client_ref": None}
    assert read_jsonl(tmp_path / "full.jsonl")[0] == event
    # a torn last line (crash mid-write) is skipped by readers
    with (tmp_path / "full.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"event_id": "T2026')
    assert len(read_jsonl(tmp_path / "full.jsonl")) == 1


# --- settings --------------------------------------------------------------------------


def test_sinks_from_settings(tmp_path: Path) -> None:
    embedded = sinks_from_settings(Settings(data_dir=tmp_path, redis_url=None))
    assert [type(s) for s in embedded] == [JsonlSink]
    assert embedded[0].path == tmp_path / "tickets.jsonl"  # type: ignore[attr-defined]

    distributed = sinks_from_settings(
        Settings(data_dir=tmp_path, redis_url=REDIS_URL, stream_name="s", stream_maxlen=10,
                 webhook_url="http://127.0.0.1:1/h", webhook_secret=SECRET)
    )
    assert [s.name for s in distributed] == ["redis", "webhook"]
    assert distributed[0].stream == "s" and distributed[0].maxlen == 10  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="SECRET"):
        sinks_from_settings(Settings(data_dir=tmp_path, webhook_url="http://127.0.0.1:1/h"))
