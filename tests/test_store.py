"""The store (SQLite and PostgreSQL) and the content-addressed blob store.

Every store test runs on both back ends. PostgreSQL: MINYIN_TEST_POSTGRES_URL or
postgresql+psycopg://postgres@127.0.0.1:5432/test; each module run works in its own
freshly created schema (search_path), dropped afterwards. Skipped, with the reason,
only when the server cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.exc import IntegrityError

from asr.types import Segment, Transcript
from pipeline.blobs import BlobError, BlobStore, check_sha256
from pipeline.config import Settings
from pipeline.store import (
    ApiKey,
    Base,
    Job,
    OutboxEvent,
    SegmentRow,
    Store,
    TicketRow,
    create_engine_for,
    sanitise_filename,
    ticket_id_for,
    upgrade,
)
from pipeline.ticket_schema import Ticket
from pipeline.tickets import TicketContext, build_ticket

PG_URL = os.environ.get(
    "MINYIN_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
T0 = datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)
TABLES = ("outbox", "corrections", "ticket_revisions", "segments", "tickets", "jobs", "batches",
          "model_promotions", "repeat_history",
          "staff_sessions", "staff_users", "api_keys")

TEXTS = {
    "light": "我家楼下的路灯坏了好几天了，在朝阳区建国路。",
    "gas": "闻到很大的煤气味，燃气泄漏了，快来人。",
    "rubbish": "小区垃圾没人清理，臭得很。",
}


def sha(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def make_ticket(job: Job, kind: str = "light", *, created: datetime = T0) -> Ticket:
    words = TEXTS[kind]
    transcript = Transcript(
        text=words,
        segments=[
            Segment(0.0, 1.5, words[:6], avg_logprob=-0.2, no_speech_prob=0.01),
            Segment(1.5, 3.0, words[6:], avg_logprob=-0.4, no_speech_prob=0.02,
                    flags=["low_confidence"]),
        ],
        language="zh", language_probability=0.99, duration=3.0,
        model="whisper-base", model_version="1",
    )
    context = TicketContext(audio_sha256=job.audio_sha256, phone="13912345678",
                            client_ref=job.client_ref, ticket_id=job.planned_ticket_id)
    return build_ticket(transcript, context, review_confidence_below=0.45, now=created)


# --------------------------------------------------------------------------------------
# Back ends
# --------------------------------------------------------------------------------------


def _postgres_schema_url() -> Iterator[str]:
    try:
        admin = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to connect means: no server here
        pytest.skip(f"PostgreSQL unreachable at {PG_URL}: {type(exc).__name__}: {exc}")
    schema = f"minyin_test_{uuid.uuid4().hex[:12]}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        # search_path in the URL itself, so upgrade(url) and Store see the same schema
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(kind, url) of a database migrated to head once per module."""
    if request.param == "sqlite":
        template = tmp_path_factory.mktemp("sqlite") / "template.db"
        url = f"sqlite:///{template}"
        upgrade(url)
        yield "sqlite", str(template)
        return
    gen = _postgres_schema_url()
    url = next(gen)
    upgrade(url)
    try:
        yield "postgresql", url
    finally:
        gen.close()


@pytest.fixture()
def store(backend: tuple[str, str], tmp_path: Path) -> Iterator[Store]:
    kind, where = backend
    if kind == "sqlite":
        # a copy of the migrated template: a fresh database per test, without migrating
        db = tmp_path / "minyin.db"
        shutil.copy(where, db)
        st = Store.from_url(f"sqlite:///{db}")
    else:
        st = Store.from_url(where)
        with st.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    yield st
    st.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database (no tables) on each back end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    gen = _postgres_schema_url()
    yield next(gen)
    gen.close()


# --------------------------------------------------------------------------------------
# Migrations
# --------------------------------------------------------------------------------------


def test_migrations_from_empty_match_the_models(empty_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    upgrade(empty_url)
    upgrade(empty_url)  # already at head: a no-op
    engine = create_engine_for(empty_url)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            assert set(TABLES) | {"alembic_version"} <= names
            version = conn.scalar(text("SELECT version_num FROM alembic_version"))
            assert version == "0009_dialect_routing"
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            indexes = {ix["name"]: ix for ix in inspect(conn).get_indexes("jobs")}
            assert indexes["uq_jobs_submitter_client_ref"]["unique"]
    finally:
        engine.dispose()


def test_from_settings_sqlite_default(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "var", database_url=None)
    st = Store.from_settings(settings, migrate=True)
    try:
        assert (tmp_path / "var" / "minyin.db").is_file()
        with st.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        job, created = st.create_job(audio_sha256=sha(1))
        assert created and st.get_job(job.id) is not None
    finally:
        st.dispose()


# --------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------


def test_create_job_stores_form_fields(store: Store) -> None:
    _, key = store.create_api_key("app", "submitter")
    job, created = store.create_job(
        audio_sha256=sha(1), submitter_id=key.id, client_ref=" app-1 ", queue="voice",
        audio_filename="../../etc/语音 note\x00.amr", phone="13912345678",
        lat=39.9, lon=116.4, address="朝阳区建国路1号", dialect="sichuan", now=T0,
    )
    assert created
    got = store.get_job(job.id)
    assert got is not None
    assert got.status == "queued" and got.attempts == 0 and got.queue == "voice"
    assert got.client_ref == "app-1"
    assert got.audio_filename == "语音 note.amr"
    assert got.phone == "13912345678" and got.lat == pytest.approx(39.9)
    assert got.created_at == T0 and got.created_at.tzinfo is not None
    assert got.planned_ticket_id == "T" + got.id[1:]
    with pytest.raises(ValueError):
        store.create_job(audio_sha256="../../etc/passwd")
    with pytest.raises(ValueError):
        store.create_job(audio_sha256=sha(1), queue="nope")


def test_dedup_by_client_ref(store: Store) -> None:
    _, a = store.create_api_key("app a", "submitter")
    _, b = store.create_api_key("app b", "submitter")
    first, created = store.create_job(audio_sha256=sha(1), submitter_id=a.id,
                                      client_ref="r1", now=T0)
    assert created
    # same ref, other audio, a day later: still the same job (the ref is the identity)
    again, created = store.create_job(audio_sha256=sha(2), submitter_id=a.id,
                                      client_ref="r1", now=T0 + timedelta(days=1))
    assert not created and again.id == first.id
    other, created = store.create_job(audio_sha256=sha(1), submitter_id=b.id,
                                      client_ref="r1", now=T0)
    assert created and other.id != first.id
    anon1, created1 = store.create_job(audio_sha256=sha(3), client_ref="r1", now=T0)
    anon2, created2 = store.create_job(audio_sha256=sha(4), client_ref="r1", now=T0)
    assert created1 and not created2 and anon1.id == anon2.id


def test_unique_index_backs_the_client_ref_rule(store: Store) -> None:
    _, key = store.create_api_key("app", "submitter")
    store.create_job(audio_sha256=sha(1), submitter_id=key.id, client_ref="r1")
    # a racing insert that skipped the lookup is stopped by the database
    with pytest.raises(IntegrityError), store.session() as s:
        s.add(Job(id="J20261123-090000-00000001", audio_sha256=sha(2),
                  submitter_id=key.id, client_ref="r1"))


def test_dedup_by_audio_hash_within_window(store: Store) -> None:
    _, a = store.create_api_key("app a", "submitter")
    _, b = store.create_api_key("app b", "submitter")
    first, _ = store.create_job(audio_sha256=sha(1), submitter_id=a.id, now=T0)
    same, created = store.create_job(audio_sha256=sha(1), submitter_id=a.id,
                                     now=T0 + timedelta(minutes=9), dedup_window=10)
    assert not created and same.id == first.id
    # with a client_ref of its own, the same recording is a deliberate new submission
    fresh, created = store.create_job(audio_sha256=sha(1), submitter_id=a.id,
                                      client_ref="new-ref", now=T0 - timedelta(minutes=30))
    assert created and fresh.id != first.id
    later, created = store.create_job(audio_sha256=sha(1), submitter_id=a.id,
                                      now=T0 + timedelta(minutes=11), dedup_window=10)
    assert created and later.id != first.id
    other, created = store.create_job(audio_sha256=sha(1), submitter_id=b.id, now=T0)
    assert created and other.id != first.id
    _, created = store.create_job(audio_sha256=sha(1), submitter_id=b.id, now=T0,
                                  dedup_window=None)
    assert created
    # a resend after a failure is a retry, not a duplicate
    store.fail_job(later.id, "decode_error", "not audio")
    retry, created = store.create_job(audio_sha256=sha(1), submitter_id=a.id,
                                      now=T0 + timedelta(minutes=12), dedup_window=10)
    assert created and retry.id != later.id


def test_claim_is_exclusive_under_a_race(store: Store) -> None:
    jobs = [store.create_job(audio_sha256=sha(i), dedup_window=None)[0] for i in range(4)]
    for job in jobs:
        barrier = threading.Barrier(2)
        results: list[Job | None] = []

        def claim(job_id: str = job.id, barrier: threading.Barrier = barrier,
                  results: list[Job | None] = results) -> None:
            barrier.wait()
            results.append(store.claim_job(job_id))

        threads = [threading.Thread(target=claim) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        winners = [r for r in results if r is not None]
        assert len(results) == 2 and len(winners) == 1
        assert winners[0].status == "running" and winners[0].attempts == 1
        got = store.get_job(job.id)
        assert got is not None and got.attempts == 1


def test_claim_lease_and_max_attempts(store: Store) -> None:
    job, _ = store.create_job(audio_sha256=sha(1))
    assert store.claim_job(job.id, now=T0, lease=60) is not None
    assert store.claim_job(job.id, now=T0 + timedelta(seconds=30), lease=60) is None
    # the first worker went silent past its lease: another may take the job over
    again = store.claim_job(job.id, now=T0 + timedelta(seconds=61), lease=60)
    assert again is not None and again.attempts == 2
    assert again.started_at == T0 + timedelta(seconds=61)
    assert store.claim_job(job.id, now=T0 + timedelta(hours=1), lease=60,
                           max_attempts=2) is None
    assert store.claim_job("J20000101-000000-00000000") is None


def test_finish_job_writes_ticket_segments_outbox_once(store: Store) -> None:
    job, _ = store.create_job(audio_sha256=sha(1), client_ref="r1")
    assert store.claim_job(job.id) is not None
    ticket = make_ticket(job)
    row = store.finish_job(job.id, ticket)
    assert row.id == ticket.id and row.revision == 1 and row.status == "new"
    assert row.category_code == ticket.category.code and row.job_id == job.id
    # a duplicated task finishes again, even with a rebuilt ticket: nothing new
    again = store.finish_job(job.id, make_ticket(job, "gas"))
    assert again.id == ticket.id and again.category_code == ticket.category.code
    assert store.get_ticket(ticket.id) == ticket  # storage form: the phone survives
    assert store.get_ticket(ticket.id).submitter.phone == "13912345678"  # type: ignore[union-attr]
    done = store.get_job(job.id)
    assert done is not None and done.status == "done" and done.ticket_id == ticket.id
    assert done.finished_at is not None
    with store.session() as s:
        assert s.scalar(select(TicketRow.id).where(TicketRow.job_id == job.id)) == ticket.id
        assert len(s.scalars(select(TicketRow)).all()) == 1
        events = s.scalars(select(OutboxEvent)).all()
        segments = s.scalars(select(SegmentRow).order_by(SegmentRow.idx)).all()
    assert len(events) == 1
    assert events[0].payload == ticket.storage_dict() and events[0].revision == 1
    assert events[0].event_type == "ticket.created"
    assert [(g.idx, g.start, g.end, g.flags) for g in segments] == [
        (0, 0.0, 1.5, []), (1, 1.5, 3.0, ["low_confidence"])]
    assert store.get_segments(ticket.id)[1].text == ticket.transcript.segments[1].text
    with pytest.raises(LookupError):
        store.finish_job("J20000101-000000-00000000", ticket)


def test_finish_job_race_writes_one_ticket(store: Store) -> None:
    job, _ = store.create_job(audio_sha256=sha(1))
    store.claim_job(job.id)
    ticket = make_ticket(job)
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def finish() -> None:
        barrier.wait()
        try:
            results.append(store.finish_job(job.id, ticket).id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors and results == [ticket.id, ticket.id]
    assert len(store.pending_outbox()) == 1


def test_fail_job_records_reason(store: Store) -> None:
    job, _ = store.create_job(audio_sha256=sha(1))
    store.claim_job(job.id)
    assert store.fail_job(job.id, "asr_timeout", "model took too long", retry=True)
    queued = store.get_job(job.id)
    assert queued is not None and queued.status == "queued"
    assert queued.failure_code == "asr_timeout" and queued.finished_at is None
    store.claim_job(job.id)
    assert store.fail_job(job.id, "decode_error", "x" * 10_000, now=T0)
    failed = store.get_job(job.id)
    assert failed is not None and failed.status == "failed" and failed.attempts == 2
    assert failed.failure_code == "decode_error" and failed.failure_reason is not None
    assert len(failed.failure_reason) == 4000 and failed.finished_at == T0
    assert store.claim_job(job.id) is None
    # a late success still counts; a late failure after success does not undo it
    store.finish_job(job.id, make_ticket(job))
    assert not store.fail_job(job.id, "late", "worker lost its lease")
    done = store.get_job(job.id)
    assert done is not None and done.status == "done" and done.failure_code is None
    assert not store.fail_job("J20000101-000000-00000000", "x", "y")


# --------------------------------------------------------------------------------------
# Tickets
# --------------------------------------------------------------------------------------


def _stored(store: Store, n: int, kind: str, created: datetime) -> Ticket:
    job, _ = store.create_job(audio_sha256=sha(f"{kind}{n}"), dedup_window=None, now=created)
    ticket = make_ticket(job, kind, created=created)
    store.finish_job(job.id, ticket)
    return ticket


def test_list_tickets_filters_and_pages(store: Store) -> None:
    kinds = ["light", "gas", "rubbish", "light", "gas", "light", "rubbish"]
    tickets = [_stored(store, i, k, T0 + timedelta(minutes=i % 3))  # created_at ties
               for i, k in enumerate(kinds)]
    by_kind = {k: [t for t, kk in zip(tickets, kinds, strict=True) if kk == k] for k in TEXTS}
    every = store.list_tickets(limit=500)
    assert every.total == 7 and len(every.items) == 7
    keys = [(r.created_at, r.id) for r in every.items]
    assert keys == sorted(keys, reverse=True)
    # pages of 3 walk the same order with no gap and no overlap
    seen: list[str] = []
    offset: int | None = 0
    while offset is not None:
        page = store.list_tickets(limit=3, offset=offset)
        assert page.total == 7
        seen += [r.id for r in page.items]
        offset = page.next_offset
    assert seen == [r.id for r in every.items]
    oldest = store.list_tickets(oldest_first=True)
    assert [r.id for r in oldest.items] == seen[::-1]

    gas_code = by_kind["gas"][0].category.code
    assert {r.id for r in store.list_tickets(category=gas_code).items} == {
        t.id for t in by_kind["gas"]}
    city = store.list_tickets(category="city")
    assert city.total == 5 and all(r.category_code.startswith("city.") for r in city.items)
    assert store.list_tickets(category="cit").total == 0
    urgent = store.list_tickets(urgency="urgent")
    assert {r.id for r in urgent.items} == {t.id for t in by_kind["gas"]}
    review = store.list_tickets(needs_review=True)
    assert review.total == sum(t.review.needed for t in tickets)
    assert store.list_tickets(needs_review=False).total == 7 - review.total
    assert store.list_tickets(status="new").total == 7
    assert store.list_tickets(status="reviewed").total == 0
    window = store.list_tickets(created_from=T0 + timedelta(minutes=1),
                                created_to=T0 + timedelta(minutes=2))
    assert {r.id for r in window.items} == {
        t.id for i, t in enumerate(tickets) if i % 3 == 1}
    assert store.list_tickets(source="voice_note", urgency="urgent").total == 2
    with pytest.raises(ValueError):
        store.list_tickets(limit=0)


def test_ticket_revision_is_optimistically_locked(store: Store) -> None:
    from sqlalchemy.orm.exc import StaleDataError

    ticket = _stored(store, 1, "light", T0)
    with store.session() as s:
        row = s.get(TicketRow, ticket.id)
        assert row is not None
        row.status = "in_review"
    assert store.get_ticket_row(ticket.id).revision == 2  # type: ignore[union-attr]
    # a second editor still holding revision 2 loses after the first one saved
    with store.session() as s1:
        stale = s1.get(TicketRow, ticket.id)
    with store.session() as s2:
        fresh = s2.get(TicketRow, ticket.id)
        assert fresh is not None
        fresh.status = "reviewed"
    with pytest.raises(StaleDataError), store.session() as s3:
        assert stale is not None
        stale = s3.merge(stale, load=False)
        stale.status = "new"


# --------------------------------------------------------------------------------------
# Outbox
# --------------------------------------------------------------------------------------


def test_outbox_pending_sent_and_backoff(store: Store) -> None:
    tickets = [_stored(store, i, "light", T0 + timedelta(seconds=i)) for i in range(3)]
    now = datetime.now(timezone.utc) + timedelta(seconds=1)
    pending = store.pending_outbox(now=now)
    assert [e.ticket_id for e in pending] == [t.id for t in tickets]
    assert [e.id for e in pending] == sorted(e.id for e in pending)
    assert [e.id for e in store.pending_outbox(limit=2, now=now)] == [e.id for e in pending[:2]]

    assert store.mark_sent(pending[0].id, now=now)
    assert not store.mark_sent(pending[0].id, now=now)  # second accept is a no-op

    store.mark_failed_attempt(pending[1].id, "sink 503", now=now, base_delay=5)
    assert [e.id for e in store.pending_outbox(now=now)] == [pending[2].id]
    later = store.pending_outbox(now=now + timedelta(seconds=6))
    assert [e.id for e in later] == [pending[1].id, pending[2].id]
    assert later[0].attempts == 1 and later[0].last_error == "sink 503"
    store.mark_failed_attempt(pending[1].id, "sink 503 again", now=now, base_delay=5)
    assert [e.id for e in store.pending_outbox(now=now + timedelta(seconds=6))] == [
        pending[2].id]  # second failure: 10 s

    store.mark_sent(pending[1].id)
    store.mark_sent(pending[2].id)
    assert store.pending_outbox(now=now + timedelta(days=1)) == []
    with store.session() as s:
        sent = s.scalars(select(OutboxEvent).order_by(OutboxEvent.id)).all()
    assert all(e.sent_at is not None for e in sent)
    assert sent[1].attempts == 3 and sent[1].last_error is None
    store.mark_failed_attempt(pending[0].id, "after sent", now=now)  # ignored
    assert store.pending_outbox(now=now + timedelta(days=1)) == []


# --------------------------------------------------------------------------------------
# API keys
# --------------------------------------------------------------------------------------


def test_api_keys_hashed_verify_revoke(store: Store) -> None:
    plain, row = store.create_api_key("hotline ops", "staff")
    assert plain.startswith("mny_") and len(plain) >= 40
    assert row.key_hash == hashlib.sha256(plain.encode()).hexdigest()
    with store.engine.connect() as conn:
        stored = conn.execute(text("SELECT * FROM api_keys")).mappings().all()
    assert len(stored) == 1
    assert not any(plain == v or (isinstance(v, str) and plain in v)
                   for v in stored[0].values())
    found = store.verify_api_key(plain)
    assert found is not None and found.id == row.id and found.role == "staff"
    assert store.verify_api_key(plain + "x") is None
    assert store.verify_api_key("") is None
    assert store.verify_api_key("not-a-key") is None
    other_plain, _ = store.create_api_key("admin", "admin")
    assert other_plain != plain
    assert store.revoke_api_key(row.id)
    assert not store.revoke_api_key(row.id)
    assert store.verify_api_key(plain) is None
    assert store.verify_api_key(other_plain) is not None
    assert [k.name for k in store.list_api_keys()] == ["hotline ops", "admin"]
    with pytest.raises(ValueError):
        store.create_api_key("x", "root")
    with pytest.raises(IntegrityError), store.session() as s:  # the database agrees
        s.add(ApiKey(id="Kbad", name="x", role="root", key_hash="0" * 64, key_prefix="x"))


# --------------------------------------------------------------------------------------
# Helpers (no database)
# --------------------------------------------------------------------------------------


def test_ids_and_filenames() -> None:
    assert ticket_id_for("J20261123-090000-0123abcd") == "T20261123-090000-0123abcd"
    with pytest.raises(ValueError):
        ticket_id_for("../x")
    assert sanitise_filename(None) is None
    assert sanitise_filename("..") is None
    assert sanitise_filename("C:\\Users\\x\\voice.m4a") == "voice.m4a"
    assert sanitise_filename("a<b>|c.mp3") == "a_b_c.mp3"


# --------------------------------------------------------------------------------------
# BlobStore
# --------------------------------------------------------------------------------------


def test_blob_put_layout_and_read(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "audio")
    data = b"#!AMR\n" + os.urandom(3 * (1 << 20) + 17)  # several chunks
    digest = blobs.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = blobs.path(digest)
    assert path == tmp_path / "audio" / digest[:2] / digest[2:4] / digest
    assert blobs.exists(digest) and blobs.size(digest) == len(data)
    with blobs.open(digest) as fh:
        assert fh.read() == data
    assert blobs.verify(digest)
    assert not os.access(path, os.W_OK) or os.geteuid() == 0  # read-only (root ignores)
    source = tmp_path / "in.wav"
    source.write_bytes(b"RIFF" + b"\0" * 100)
    assert blobs.put(source) == hashlib.sha256(source.read_bytes()).hexdigest()
    with source.open("rb") as fh:
        assert blobs.put(fh) == hashlib.sha256(source.read_bytes()).hexdigest()
    assert [p.name for p in (tmp_path / "audio").iterdir() if p.is_file()] == []  # no temps
    assert not blobs.exists(sha("missing"))
    with pytest.raises(FileNotFoundError):
        blobs.open(sha("missing"))


def test_blob_never_overwritten(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"original")
    path = blobs.path(digest)
    before = path.stat()
    assert blobs.put(b"original") == digest
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # a damaged blob under the name is reported, and left alone for inspection
    path.chmod(0o644)
    path.write_bytes(b"damaged!!")
    with pytest.raises(BlobError):
        blobs.put(b"original")
    assert path.read_bytes() == b"damaged!!"
    assert not blobs.verify(digest)


def test_blob_concurrent_puts_of_the_same_bytes(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    data = os.urandom(1 << 18)
    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(blobs.put(data)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 4
    assert blobs.path(results[0]).read_bytes() == data
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []


@pytest.mark.parametrize("bad", [
    "../../etc/passwd", "/etc/passwd", "A" * 64, "a" * 63, "a" * 65,
    "..%2f" + "a" * 59, "a" * 62 + "/.", "", "g" * 64,
])
def test_blob_refuses_malformed_names(tmp_path: Path, bad: str) -> None:
    blobs = BlobStore(tmp_path)
    for call in (blobs.path, blobs.exists, blobs.open, check_sha256):
        with pytest.raises(ValueError):
            call(bad)


# --------------------------------------------------------------------------------------
# The outbox as the relay's source (pipeline.outbox over pipeline.sinks.relay)
# --------------------------------------------------------------------------------------


class RecordingSink:
    def __init__(self, name: str, fail: str | None = None) -> None:
        self.name, self.fail, self.events = name, fail, []

    def publish(self, event) -> None:
        from pipeline.sinks import SinkError

        if self.fail:
            raise SinkError(f"{self.name} says no", transient=self.fail == "transient",
                            sink=self.name)
        self.events.append(event)


def test_relay_over_the_store_outbox(store: Store) -> None:
    from pipeline.outbox import StoreOutbox
    from pipeline.sinks import relay

    ticket = _stored(store, 1, "light", T0)
    outbox = StoreOutbox(store)
    stream, webhook = RecordingSink("redis"), RecordingSink("webhook", fail="transient")

    first = relay(outbox, [stream, webhook])
    assert first.sent == 0 and len(stream.events) == 1
    (row,) = store.pending_outbox(now=datetime.now(timezone.utc) + timedelta(hours=2))
    assert row.delivered_to == ["redis"] and row.attempts == 1 and "webhook" in row.last_error
    assert stream.events[0].event_id == f"{ticket.id}:1"  # what consumers de-duplicate on

    store.requeue_event(row.id)  # due again now, instead of after its backoff
    webhook.fail = None
    second = relay(outbox, [stream, webhook])
    assert second.sent == 1
    assert len(stream.events) == 1, "the stream already had it: not published again"
    assert [e.ticket_id for e in webhook.events] == [ticket.id]
    assert store.pending_outbox(now=datetime.now(timezone.utc) + timedelta(days=1)) == []


def test_permanently_refused_event_is_parked(store: Store) -> None:
    from pipeline.outbox import StoreOutbox
    from pipeline.sinks import relay

    _stored(store, 2, "light", T0)
    outbox = StoreOutbox(store)
    result = relay(outbox, [RecordingSink("webhook", fail="permanent")])
    assert result.permanent_errors == 1
    later = datetime.now(timezone.utc) + timedelta(days=1)
    assert store.pending_outbox(now=later) == []  # parked, out of the relay's way
    with store.session() as s:
        (parked,) = s.scalars(select(OutboxEvent)).all()
    assert parked.parked_at is not None and parked.sent_at is None
    store.requeue_event(parked.id)
    assert len(store.pending_outbox(now=later)) == 1


# --------------------------------------------------------------------------------------
# Leases, hand-off and the job queue the workers use
# --------------------------------------------------------------------------------------


def test_heartbeat_keeps_the_lease_and_force_takes_over(store: Store) -> None:
    job, _ = store.create_job(audio_sha256=sha(1))
    first = store.claim_job(job.id, now=T0, lease=60, worker="a:1")
    assert first is not None and first.worker == "a:1"
    # beating at +50 s keeps it ours at +100 s
    assert store.heartbeat(job.id, first.attempts, now=T0 + timedelta(seconds=50))
    assert store.claim_job(job.id, now=T0 + timedelta(seconds=100), lease=60) is None
    # the broker redelivered: the holder is dead, whatever its last beat said
    taken = store.claim_job(job.id, now=T0 + timedelta(seconds=101), lease=60,
                            worker="b:2", force=True)
    assert taken is not None and taken.attempts == 2 and taken.worker == "b:2"
    assert not store.heartbeat(job.id, first.attempts)  # the old holder learns it lost
    assert store.heartbeat(job.id, taken.attempts)


def test_stale_running_jobs_are_requeued_and_handed_over_again(store: Store) -> None:
    a, _ = store.create_job(audio_sha256=sha(1))
    b, _ = store.create_job(audio_sha256=sha(2))
    store.mark_enqueued([a.id, b.id], now=T0)
    store.claim_job(a.id, now=T0, lease=60)
    assert [j.id for j in store.jobs_to_enqueue()] == []
    # b's message may have died with the broker: re-sent when asked for older hand-offs
    assert [j.id for j in store.jobs_to_enqueue(enqueued_before=T0 + timedelta(1))] == [b.id]
    assert store.requeue_stale_running(60, now=T0 + timedelta(seconds=30)) == []
    assert store.requeue_stale_running(60, now=T0 + timedelta(seconds=61)) == [a.id]
    again = store.get_job(a.id)
    assert again is not None and again.status == "queued" and again.enqueued_at is None
    assert [j.id for j in store.jobs_to_enqueue()] == [a.id]


def test_next_queued_job_takes_voice_before_batch(store: Store) -> None:
    bulk, _ = store.create_job(audio_sha256=sha(1), queue="batch", now=T0)
    voice, _ = store.create_job(audio_sha256=sha(2), queue="voice",
                                now=T0 + timedelta(minutes=5))
    assert store.next_queued_job() == voice.id
    store.claim_job(voice.id)
    assert store.next_queued_job() == bulk.id
    assert store.next_queued_job(queues=["voice"]) is None


def test_job_stats_sum_the_work(store: Store) -> None:
    job, _ = store.create_job(audio_sha256=sha(1), client_ref="r1")
    store.create_job(audio_sha256=sha(2), queue="batch")
    store.claim_job(job.id)
    store.finish_job(job.id, make_ticket(job), audio_seconds=15.0, processing_seconds=3.0)
    stats = store.job_stats()
    assert stats.counts == {("done", "voice"): 1, ("queued", "batch"): 1}
    assert (stats.audio_seconds, stats.processing_seconds) == (15.0, 3.0)
    assert stats.outbox_pending == 1 and stats.outbox_parked == 0
    store.ping()


def test_concurrent_uploads_of_one_recording_make_one_job(store: Store) -> None:
    """A double tap: the same recording from one submitter, at the same moment, with and
    without a client_ref."""
    import threading

    _, key = store.create_api_key("app", "submitter")
    for client_ref in (None, "tap-1"):
        barrier = threading.Barrier(6)
        results: list[tuple[str, bool]] = []

        def submit(ref: str | None = client_ref, barrier: threading.Barrier = barrier,
                   results: list[tuple[str, bool]] = results) -> None:
            barrier.wait()
            job, created = store.create_job(audio_sha256=sha(f"tap{ref}"),
                                            submitter_id=key.id, client_ref=ref)
            results.append((job.id, created))

        threads = [threading.Thread(target=submit) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len({job_id for job_id, _ in results}) == 1, (client_ref, results)
        assert sum(created for _, created in results) == 1


def test_optimistic_lock_on_ticket_revisions(store: Store, tmp_path: Path) -> None:
    """Reviewers racing on one ticket: exactly one save per revision lands, on
    SQLite and PostgreSQL, however the reads and writes interleave."""
    from pipeline.review import TicketEdit, apply_edit
    from pipeline.store import RevisionConflict, utcnow
    from tests.review_seed import seed_ticket

    blobs = BlobStore(tmp_path / "audio")
    row = seed_ticket(store, blobs, "light")
    wins: list[int] = []
    conflicts: list[RevisionConflict] = []
    barrier = threading.Barrier(6)

    def save(i: int) -> None:
        def edit(ticket: Ticket) -> tuple[Ticket, list[Any]]:
            barrier.wait()  # every reviewer has read revision 1 before anyone writes
            return apply_edit(ticket, TicketEdit(revision=1, fields={"summary": f"摘要{i}"}),
                              author=f"r{i}", now=utcnow())
        try:
            store.revise_ticket(row.id, base_revision=1, author=f"r{i}", action="save",
                                edit=edit)
            wins.append(i)
        except RevisionConflict as e:
            conflicts.append(e)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(conflicts) == 5
    assert all(c.current == 2 and c.updated_by == f"r{wins[0]}" for c in conflicts)
    final = store.get_ticket_row(row.id)
    assert final is not None and final.revision == 2
    assert final.document["summary"] == f"摘要{wins[0]}"
    assert len(store.ticket_history(row.id)) == 1


def test_a_relink_by_the_store_does_not_conflict_with_a_reviewer(store: Store,
                                                                  tmp_path: Path) -> None:
    """The store links a ticket into a 一类事 while a reviewer has it open: the save lands
    on top of the link; a staff save in between still conflicts."""
    from pipeline.review import TicketEdit, apply_edit
    from pipeline.store import RevisionConflict, utcnow
    from pipeline.store_clusters import _set_document
    from tests.review_seed import seed_ticket

    row = seed_ticket(store, BlobStore(tmp_path / "audio"), "light")
    with store.session() as s:
        _set_document(s, row.id, utcnow(), cluster_id="c-1")
    relinked = store.get_ticket_row(row.id)
    assert relinked is not None and relinked.revision == 2

    def edit(summary: str, base: int) -> Any:
        return lambda t: apply_edit(t, TicketEdit(revision=base, fields={"summary": summary}),
                                    author="alice", now=utcnow())

    done = store.revise_ticket(row.id, base_revision=1, author="alice", action="save",
                               edit=edit("王丽的摘要", 1))
    assert done.row.revision == 3
    saved = store.get_ticket_row(row.id)
    assert saved is not None and saved.document["cluster_id"] == "c-1"
    assert saved.document["summary"] == "王丽的摘要"
    with pytest.raises(RevisionConflict) as e:
        store.revise_ticket(row.id, base_revision=2, author="bob", action="save",
                            edit=edit("赵强的摘要", 2))
    assert e.value.current == 3
