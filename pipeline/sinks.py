"""Ticket sinks: where finished tickets go, and the relay that drains the outbox into them.

A finished ticket is written to the store and to an outbox row in one transaction; the
relay here reads pending outbox events, publishes each to every configured sink and marks
it sent only once every sink accepted it. Delivery is therefore **at-least-once**: a crash
or a lost reply between "the sink accepted" and "the outbox recorded it" publishes the
event again. Every event carries a stable ``event_id`` (``f"{ticket_id}:{revision}"``), so
consumers de-duplicate by ``event_id`` and, across revisions, keep the highest
``revision`` per ``ticket_id`` (a staff "approve" republishes the revised ticket with the
same ticket id and ``revision + 1``, type ``ticket.revised``).

One document everywhere: the JSON of `TicketEvent` is the Redis stream entry's ``body``
field, the webhook's POST body and the JSONL file's line.

Contact data (``ticket.submitter.phone``): the event holds the *storage* form of the
ticket (`Ticket.storage_dict`), because the complaint system has to be able to call the
citizen back. Each sink decides with ``include_contact`` whether the full number leaves:
- Redis stream and webhook: ``True`` by default. They are the complaint system's own feeds
  (a Redis it runs; an HMAC-signed endpoint its operators configured).
- JSONL file: ``False`` by default. It is a plain file on the host's disk that gets
  copied, tailed and attached to bug reports; the number stays in the store, reachable by
  ticket id. Without the contact the document equals `Ticket.public_dict`.

Import rule: this module knows nothing of the store. The relay works against the small
`OutboxSource` protocol; `MemoryOutbox` implements it for tests and for one-process use.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol, runtime_checkable

import httpx
import redis
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from tenacity import (
    retry,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential,
)

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.ticket_schema import Ticket

# ticket.repeated: a 重复件 (its ticket's duplicate_of names the first ticket: an update
# of that one, not a new dispatch); cluster.updated: a 一类事 formed or changed (`cluster`;
# `ticket` is the cluster's anchor, its event_id "<cluster id>:<version>")
EventType = Literal["ticket.created", "ticket.revised", "ticket.repeated", "cluster.updated"]


# --- the event -----------------------------------------------------------------------


def redact_contact(ticket: dict[str, Any]) -> dict[str, Any]:
    """The ticket document without the full phone (equal to `Ticket.public_dict`)."""
    doc = copy.deepcopy(ticket)
    submitter = doc.get("submitter")
    if isinstance(submitter, dict):
        submitter["phone"] = None
    return doc


class TicketEvent(BaseModel):
    """The envelope every sink publishes. ``event_id`` is stable per ticket revision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    ticket_id: str
    revision: int = Field(1, ge=1)
    type: EventType
    # storage form (with the phone): sinks redact it unless include_contact; repr=False so
    # logging an event does not leak the number
    ticket: dict[str, Any] = Field(repr=False)
    occurred_at: AwareDatetime
    cluster: dict[str, Any] | None = Field(None, description="cluster.updated only")
    # false: the speech is in a variety the model cannot read, the transcript is not to
    # be taken as what was said; a person must listen to the audio (audio_url)
    readable: bool = True
    audio_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = dict(data)
            revision = data.get("revision", 1)
            data.setdefault("event_id", f"{data.get('ticket_id')}:{revision}")
            data.setdefault("type", "ticket.created" if revision == 1 else "ticket.revised")
            data.setdefault("occurred_at", datetime.now(timezone.utc))
            ticket = data.get("ticket")
            if isinstance(ticket, dict):
                data.setdefault("readable", bool(
                    (ticket.get("transcript") or {}).get("readable", True)))
                data.setdefault("audio_url", (ticket.get("audio") or {}).get("media_url"))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> TicketEvent:
        if self.ticket.get("id") != self.ticket_id:
            raise ValueError("ticket.id differs from ticket_id")
        return self

    @classmethod
    def for_ticket(
        cls, ticket: Ticket, revision: int = 1, occurred_at: datetime | None = None
    ) -> TicketEvent:
        return cls(
            ticket_id=ticket.id,
            revision=revision,
            ticket=ticket.storage_dict(),
            occurred_at=occurred_at or datetime.now(timezone.utc),
        )

    def document(self, include_contact: bool) -> dict[str, Any]:
        doc = self.model_dump(mode="json")
        if not include_contact:
            doc["ticket"] = redact_contact(doc["ticket"])
        return doc

    def body(self, include_contact: bool) -> str:
        """Compact JSON, Chinese kept as UTF-8 (half the bytes of \\u escapes)."""
        return json.dumps(self.document(include_contact), ensure_ascii=False, separators=(",", ":"))


# --- the sink protocol -----------------------------------------------------------------


class SinkError(Exception):
    """The sink did not accept the event. ``transient``: try again later, same event."""

    def __init__(self, message: str, *, transient: bool, sink: str = "") -> None:
        super().__init__(message)
        self.transient = transient
        self.sink = sink


@runtime_checkable
class TicketSink(Protocol):
    # stable: the outbox records per-sink delivery under this name
    name: str

    def publish(self, event: TicketEvent) -> None:
        """Return once the sink durably accepted the event; raise `SinkError` otherwise."""
        ...


# --- Redis stream ----------------------------------------------------------------------


def _redis_client(url: str) -> redis.Redis:
    # Short timeouts and few reconnect tries: a stopped Redis must fail the publish in
    # about a second so the relay backs off, instead of hanging the loop.
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=2,
        socket_timeout=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


def _redis_error_is_transient(exc: redis.RedisError) -> bool:
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)):
        return True
    text = str(exc)
    # out of memory, loading, failover: the server will come back; WRONGTYPE etc. will not
    return text.startswith(("OOM", "LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN"))


class RedisStreamSink:
    """XADD each event to a stream that the complaint system reads with a consumer group.

    Entry fields: ``event_id``, ``ticket_id``, ``revision``, ``type``, ``body`` (the event
    JSON). Trimmed with approximate MAXLEN so a stalled consumer cannot fill Redis.
    At-least-once: if XADD reached Redis but the reply was lost, the relay publishes again
    and the stream holds the event twice; `StreamConsumer` drops the second by event_id.
    """

    def __init__(
        self,
        url: str,
        stream: str,
        maxlen: int | None = 100_000,
        *,
        include_contact: bool = True,
        name: str = "redis",
        client: redis.Redis | None = None,
    ) -> None:
        self.name = name
        self.stream = stream
        self.maxlen = maxlen
        self.include_contact = include_contact
        self.client = client or _redis_client(url)

    def publish(self, event: TicketEvent) -> None:
        fields = {
            "event_id": event.event_id,
            "ticket_id": event.ticket_id,
            "revision": str(event.revision),
            "type": event.type,
            "readable": "1" if event.readable else "0",
            "body": event.body(self.include_contact),
        }
        try:
            self.client.xadd(self.stream, fields, maxlen=self.maxlen, approximate=True)
        except redis.RedisError as exc:
            raise SinkError(
                f"XADD {self.stream}: {exc}",
                transient=_redis_error_is_transient(exc),
                sink=self.name,
            ) from exc

    def ensure_group(self, group: str, start_id: str = "0") -> None:
        ensure_group(self.client, self.stream, group, start_id)

    def close(self) -> None:
        self.client.close()


def ensure_group(client: redis.Redis, stream: str, group: str, start_id: str = "0") -> None:
    """Create the consumer group (and the stream) if missing; idempotent.

    ``start_id="0"`` (default): a new group also reads what was published before it
    existed, which is what a complaint system joining late wants.
    """
    try:
        client.xgroup_create(stream, group, id=start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class StreamMessage(NamedTuple):
    message_id: str
    event: TicketEvent


class StreamConsumer:
    """A small consumer-group reader for the ticket stream (for the complaint system and
    our tests).

    `process` hands each event to ``handler`` and XACKs only after it returned, so a
    crash re-delivers (pending entries idle longer than ``claim_idle_ms`` are taken over
    with XAUTOCLAIM, also from dead consumers). Duplicates (same ``event_id``, from a
    producer retry or a re-delivery after the handler ran) are skipped with a per-group
    "seen" key kept ``seen_ttl_s``. Handlers should still upsert by ticket_id and ignore
    a ``revision`` lower than the one they hold.
    """

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        claim_idle_ms: int = 60_000,
        seen_ttl_s: int = 7 * 24 * 3600,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.claim_idle_ms = claim_idle_ms
        self.seen_ttl_s = seen_ttl_s

    @classmethod
    def from_url(
        cls, url: str, stream: str, group: str, consumer: str, **kw: Any
    ) -> StreamConsumer:
        return cls(_redis_client(url), stream, group, consumer, **kw)

    def ensure_group(self, start_id: str = "0") -> None:
        ensure_group(self.client, self.stream, self.group, start_id)

    def _seen_key(self, event_id: str) -> str:
        return f"{self.stream}:seen:{self.group}:{event_id}"

    @staticmethod
    def _parse(entries: Iterable[tuple[str, dict[str, str]]]) -> list[StreamMessage]:
        out = []
        for message_id, fields in entries:
            if fields is None:  # deleted (trimmed) while pending
                continue
            out.append(StreamMessage(message_id, TicketEvent.model_validate_json(fields["body"])))
        return out

    def claim_stale(self, count: int = 10) -> list[StreamMessage]:
        """Take over entries another consumer read but did not ack in claim_idle_ms."""
        _next, entries, *_deleted = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, "0-0", count=count
        )
        return self._parse(entries)

    def read(self, count: int = 10, block_ms: int | None = None) -> list[StreamMessage]:
        """New entries for this consumer (``>``); they stay pending until `ack`."""
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
        )
        return [m for _stream, entries in reply or [] for m in self._parse(entries)]

    def ack(self, message_id: str) -> None:
        self.client.xack(self.stream, self.group, message_id)

    def process(
        self,
        handler: Callable[[TicketEvent], None],
        count: int = 10,
        block_ms: int | None = None,
    ) -> tuple[int, int]:
        """Claim stale, read new, handle each once per event_id; -> (handled, skipped)."""
        handled = skipped = 0
        for message in self.claim_stale(count) + self.read(count, block_ms):
            key = self._seen_key(message.event.event_id)
            if self.client.exists(key):
                skipped += 1
            else:
                handler(message.event)  # raises: no ack, re-delivered after claim_idle_ms
                handled += 1
            with self.client.pipeline(transaction=True) as pipe:
                pipe.set(key, "1", ex=self.seen_ttl_s)
                pipe.xack(self.stream, self.group, message.message_id)
                pipe.execute()
        return handled, skipped


# --- webhook ---------------------------------------------------------------------------

SIGNATURE_HEADER = "X-Minyin-Signature"
TIMESTAMP_HEADER = "X-Minyin-Timestamp"
EVENT_HEADER = "X-Minyin-Event"
DELIVERY_HEADER = "X-Minyin-Delivery"


def sign(secret: str, timestamp: str, body: bytes | str) -> str:
    """``sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>``.

    The timestamp (Unix seconds, sent in X-Minyin-Timestamp) is inside the MAC so a
    captured request cannot be replayed later with a fresh timestamp.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else body
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + raw, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str,
    timestamp: str,
    body: bytes | str,
    signature: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """For receivers: check X-Minyin-Signature over the *raw* body as received.

    Rejects a timestamp more than ``tolerance_s`` away from ``now`` (replays). Receivers
    should also de-duplicate by X-Minyin-Delivery (the event_id): retries re-send it.
    """
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, SinkError) and exc.transient


class WebhookSink:
    """POST the event JSON, signed, retried briefly on transient failures.

    2xx accepted. 4xx other than 408/429: permanent (the receiver rejects this event;
    retrying the same bytes cannot help). 5xx, 408, 429, timeouts, connection errors:
    transient, retried ``attempts`` times with exponential backoff inside `publish`, all
    within about ``max_total_s``, then raised so the relay backs off and tries later.
    Each attempt is re-signed with a fresh timestamp; X-Minyin-Delivery stays the event_id.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        timeout: float = 5.0,
        *,
        include_contact: bool = True,
        name: str = "webhook",
        attempts: int = 4,
        backoff_s: float = 0.5,
        max_total_s: float = 15.0,
        client: httpx.Client | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a secret: receivers must be able to verify it")
        self.name = name
        self.url = url
        self.secret = secret
        self.include_contact = include_contact
        self.client = client or httpx.Client(timeout=timeout)
        self._publish_retrying = retry(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(attempts) | stop_after_delay(max_total_s),
            wait=wait_exponential(multiplier=backoff_s, max=max(backoff_s, max_total_s / 4)),
            reraise=True,
        )(self._post_once)

    def publish(self, event: TicketEvent) -> None:
        self._publish_retrying(event, event.body(self.include_contact).encode("utf-8"))

    def _post_once(self, event: TicketEvent, body: bytes) -> None:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            EVENT_HEADER: event.type,
            DELIVERY_HEADER: event.event_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self.secret, timestamp, body),
        }
        try:
            response = self.client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:  # connect/read timeouts, refused, reset
            raise SinkError(f"POST {self.url}: {exc!r}", transient=True, sink=self.name) from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        transient = status >= 500 or status in (408, 429)
        raise SinkError(f"POST {self.url}: HTTP {status}", transient=transient, sink=self.name)

    def close(self) -> None:
        self.client.close()


# --- JSONL file ------------------------------------------------------------------------


class JsonlSink:
    """Append one event JSON per line; flushed and fsynced before `publish` returns.

    An exclusive ``fcntl.flock`` around each append lets several processes (API, worker
    pool) share one file without interleaving; the line goes out in one ``write`` on an
    O_APPEND descriptor. Readers skip a last line without a newline (a crash mid-write).
    """

    def __init__(
        self, path: str | Path, *, include_contact: bool = False, name: str = "jsonl"
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.include_contact = include_contact

    def publish(self, event: TicketEvent) -> None:
        line = (event.body(self.include_contact) + "\n").encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                view = memoryview(line)
                while view:  # a regular file writes it all at once; loop just in case
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)  # also releases the lock
        except OSError as exc:  # disk full, permissions: retry later, the event waits
            raise SinkError(f"append {self.path}: {exc}", transient=True, sink=self.name) from exc


def read_jsonl(path: str | Path) -> list[TicketEvent]:
    """Events in a JSONL sink file, skipping a torn last line."""
    text = Path(path).read_text(encoding="utf-8")
    lines = text.split("\n")[:-1]  # whatever follows the last newline is incomplete
    return [TicketEvent.model_validate_json(line) for line in lines if line.strip()]


# --- from settings ---------------------------------------------------------------------


def sinks_from_settings(
    settings: Settings, *, jsonl_include_contact: bool = False
) -> list[TicketSink]:
    """Embedded (no redis_url): the JSONL file. Distributed: the Redis stream. Either way
    a webhook too when webhook_url is set (it then requires webhook_secret)."""
    sinks: list[TicketSink] = []
    if settings.redis_url:
        sinks.append(
            RedisStreamSink(settings.redis_url, settings.ticket_stream, settings.stream_maxlen)
        )
    else:
        sinks.append(JsonlSink(settings.tickets_jsonl, include_contact=jsonl_include_contact))
    if settings.webhook_url:
        if not settings.webhook_secret:
            raise ValueError("MINYIN_WEBHOOK_URL is set but MINYIN_WEBHOOK_SECRET is not")
        sinks.append(WebhookSink(settings.webhook_url, settings.webhook_secret))
    return sinks


# --- outbox and relay ------------------------------------------------------------------


class OutboxItem(NamedTuple):
    event_id: str
    event: TicketEvent
    delivered: frozenset[str] = frozenset()  # names of sinks that already accepted it


class OutboxSource(Protocol):
    """What the relay needs from an outbox (the store's table implements it).

    - ``pending(limit)``: events not yet sent and not parked, oldest first.
    - ``mark_delivered(event_id, sink)``: one sink accepted; remember it, so a retry after
      another sink failed does not publish to this one again.
    - ``mark_sent(event_id)``: every sink accepted; no longer pending.
    - ``mark_failed(event_id, sink, error, permanent)``: record the error (attempts,
      last_error). ``permanent``: park the event (dead letter) so it stops coming back;
      a person looks at it and can re-queue it.
    """

    def pending(self, limit: int) -> Sequence[OutboxItem]: ...

    def mark_delivered(self, event_id: str, sink: str) -> None: ...

    def mark_sent(self, event_id: str) -> None: ...

    def mark_failed(self, event_id: str, sink: str, error: str, permanent: bool) -> None: ...


@dataclass
class RelayResult:
    sent: int = 0  # events every sink accepted (marked sent)
    deliveries: int = 0  # single (event, sink) acceptances
    transient_errors: int = 0
    permanent_errors: int = 0
    blocked_sinks: set[str] = field(default_factory=set)  # sinks skipped after a transient error

    @property
    def stopped_early(self) -> bool:
        return bool(self.blocked_sinks)

    def add(self, other: RelayResult) -> None:
        self.sent += other.sent
        self.deliveries += other.deliveries
        self.transient_errors += other.transient_errors
        self.permanent_errors += other.permanent_errors
        self.blocked_sinks |= other.blocked_sinks


def relay(outbox: OutboxSource, sinks: Sequence[TicketSink], limit: int = 100) -> RelayResult:
    """One pass over up to ``limit`` pending events; returns the counts.

    A sink that fails transiently is skipped for the rest of the pass (it is down; later
    events would only fail too, and would reach it out of order); the other sinks go on.
    A permanent error concerns only that event: it is recorded (and parked by the outbox).
    """
    result = RelayResult()
    names = [s.name for s in sinks]
    if len(set(names)) != len(names):
        raise ValueError(f"sink names must be unique: {names}")
    for item in outbox.pending(limit):
        if result.blocked_sinks >= set(names):
            break
        missing = False
        for sink in sinks:
            if sink.name in item.delivered:
                continue
            if sink.name in result.blocked_sinks:
                missing = True
                continue
            try:
                sink.publish(item.event)
            except SinkError as exc:
                missing = True
                outbox.mark_failed(item.event_id, sink.name, str(exc), not exc.transient)
                if exc.transient:
                    result.transient_errors += 1
                    result.blocked_sinks.add(sink.name)
                else:
                    result.permanent_errors += 1
                continue
            outbox.mark_delivered(item.event_id, sink.name)
            result.deliveries += 1
        if not missing:
            outbox.mark_sent(item.event_id)
            result.sent += 1
    return result


def relay_forever(
    outbox: OutboxSource,
    sinks: Sequence[TicketSink],
    stop: threading.Event,
    *,
    limit: int = 100,
    idle_s: float = 1.0,
    backoff_s: float = 0.5,
    max_backoff_s: float = 30.0,
) -> RelayResult:
    """Relay until ``stop`` is set: poll every ``idle_s`` when idle, back off
    exponentially (up to ``max_backoff_s``) while a sink fails, reset on success."""
    total = RelayResult()
    failures = 0
    while not stop.is_set():
        result = relay(outbox, sinks, limit)
        total.add(result)
        if result.stopped_early:
            failures += 1
            stop.wait(min(max_backoff_s, backoff_s * 2 ** (failures - 1)))
        else:
            failures = 0
            if result.sent + result.permanent_errors < limit:  # drained: wait for more
                stop.wait(idle_s)
    return total


class MemoryOutbox:
    """`OutboxSource` in memory, thread-safe: for tests and single-process runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, TicketEvent] = {}  # insertion order = pending order
        self._delivered: dict[str, set[str]] = {}
        self.sent: dict[str, TicketEvent] = {}
        self.parked: dict[str, str] = {}  # event_id -> last permanent error
        self.errors: list[tuple[str, str, str, bool]] = []

    def add(self, event: TicketEvent) -> None:
        with self._lock:
            if event.event_id in self.sent:
                return  # the same revision again: already published
            self._events[event.event_id] = event
            self._delivered.setdefault(event.event_id, set())

    def pending(self, limit: int) -> list[OutboxItem]:
        with self._lock:
            items = [
                OutboxItem(eid, ev, frozenset(self._delivered[eid]))
                for eid, ev in self._events.items()
                if eid not in self.parked
            ]
        return items[:limit]

    def mark_delivered(self, event_id: str, sink: str) -> None:
        with self._lock:
            self._delivered[event_id].add(sink)

    def mark_sent(self, event_id: str) -> None:
        with self._lock:
            self.sent[event_id] = self._events.pop(event_id)
            self._delivered.pop(event_id, None)

    def mark_failed(self, event_id: str, sink: str, error: str, permanent: bool) -> None:
        with self._lock:
            self.errors.append((event_id, sink, error, permanent))
            if permanent:
                self.parked[event_id] = error

    def requeue(self, event_id: str) -> None:
        """After a person fixed the cause of a permanent error."""
        with self._lock:
            self.parked.pop(event_id, None)
