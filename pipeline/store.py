"""The store: jobs, tickets, segments, corrections, revisions, the outbox, API keys,
staff users and their sign-in sessions.

SQLAlchemy 2 models plus a small repository (`Store`). SQLite (a file under
`data_dir`) by default, PostgreSQL in production; the schema is made by the Alembic
migrations in `pipeline/migrations` (`upgrade(url)`), never by `create_all`, so that
both back ends run exactly the same DDL.

Concurrency rules the workers rely on:
- `claim_job` and `finish_job` decide with a single conditional UPDATE (status in the
  WHERE clause, rowcount checked), which both databases apply atomically, so two
  workers can never both run or both finish a job.
- `finish_job` writes the ticket, its segments and the outbox event in the same
  transaction as the job's `done`, so a ticket is published if and only if it is stored.
- `revise_ticket` (a staff save or approval) checks the revision the reviewer started
  from and the ORM's version counter (`tickets.revision`) checks it again in the UPDATE,
  so of two reviewers saving the same revision exactly one wins; the other gets
  `RevisionConflict` with who saved and when.
- Returned ORM objects are detached snapshots (`expire_on_commit=False`): read them
  freely, change the store only through `Store` methods.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    case,
    create_engine,
    delete,
    event,
    false,
    func,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from pipeline.config import Settings
from pipeline.ticket_schema import Ticket

JobStatus = Literal["queued", "running", "done", "failed"]
JobQueue = Literal["voice", "batch"]
TicketStatus = Literal["new", "in_review", "reviewed"]
Role = Literal["submitter", "staff", "admin"]
StaffRole = Literal["staff", "admin"]
RevisionAction = Literal["save", "approve"]

JOB_STATUSES: tuple[str, ...] = ("queued", "running", "done", "failed")
JOB_QUEUES: tuple[str, ...] = ("voice", "batch")
TICKET_STATUSES: tuple[str, ...] = ("new", "in_review", "reviewed")
ROLES: tuple[str, ...] = ("submitter", "staff", "admin")
STAFF_ROLES: tuple[str, ...] = ("staff", "admin")
# the varieties a ticket's transcript.variety may name, and a staff user may speak
STAFF_DIALECTS: tuple[str, ...] = ("mandarin", "cantonese", "wu", "min", "hakka",
                                   "southwestern", "other", "unknown")
# the review queue: what is still waiting for a person
WAITING_STATUSES: tuple[str, ...] = ("new", "in_review")
EVENT_TICKET_CREATED = "ticket.created"
EVENT_TICKET_REVISED = "ticket.revised"
API_KEY_PREFIX = "mny_"

# Stable constraint names, so later migrations can drop or alter them on both back ends.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _in(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both back ends.

    SQLite has no time zones and hands back naive values; naive datetimes are refused
    on the way in so that a local time can never be stored as if it were UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime; pass an aware (UTC) one")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON(),
        list[Any]: JSON(),
    }


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


class ApiKey(Base):
    """An API key. Only the SHA-256 of the key is stored.

    SHA-256 and not a slow password hash (bcrypt/argon2): keys are 256-bit random
    strings made by `create_api_key`, so guessing from a leaked hash is hopeless
    whatever the hash speed; slow hashes defend low-entropy human passwords. A fast,
    unsalted hash also lets `verify_api_key` find the key by an indexed lookup.
    """

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint(f"role IN ({_in(ROLES)})", name="role"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # first characters of the key, so an admin can tell keys apart without the secret
    key_prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    @property
    def active(self) -> bool:
        return self.revoked_at is None


class Batch(Base):
    """A hotline batch: one per output directory, so the same command resumes it."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    source: Mapped[str] = mapped_column(Text)
    out_dir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(JOB_STATUSES)})", name="status"),
        CheckConstraint(f"queue IN ({_in(JOB_QUEUES)})", name="queue"),
        # One job per client_ref and submitter. NULLs are distinct in a unique index,
        # so submissions without a key (CLI, embedded) get their own partial index.
        Index(
            "uq_jobs_submitter_client_ref",
            "submitter_id",
            "client_ref",
            unique=True,
            postgresql_where=text("client_ref IS NOT NULL AND submitter_id IS NOT NULL"),
            sqlite_where=text("client_ref IS NOT NULL AND submitter_id IS NOT NULL"),
        ),
        Index(
            "uq_jobs_anonymous_client_ref",
            "client_ref",
            unique=True,
            postgresql_where=text("client_ref IS NOT NULL AND submitter_id IS NULL"),
            sqlite_where=text("client_ref IS NOT NULL AND submitter_id IS NULL"),
        ),
        Index("ix_jobs_submitter_audio", "submitter_id", "audio_sha256", "created_at"),
        Index("ix_jobs_status_queue", "status", "queue", "created_at"),
        Index("ix_jobs_batch", "batch_id", "call_id"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    queue: Mapped[str] = mapped_column(String(16), default="voice")
    submitter_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id"))
    client_ref: Mapped[str | None] = mapped_column(String(128))
    audio_sha256: Mapped[str] = mapped_column(String(64))
    audio_filename: Mapped[str | None] = mapped_column(String(255))
    audio_bytes: Mapped[int | None]
    dialect: Mapped[str | None] = mapped_column(String(64))
    # intake form fields; the phone is personal data, stored but never logged
    phone: Mapped[str | None] = mapped_column(String(32))
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    address: Mapped[str | None] = mapped_column(Text)
    submitted_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    failure_code: Mapped[str | None] = mapped_column(String(64))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    # no foreign key: tickets.job_id already points here, and a cycle would need ALTERs
    ticket_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # the running worker refreshes heartbeat_at; older than the lease = a dead worker
    heartbeat_at: Mapped[datetime | None]
    worker: Mapped[str | None] = mapped_column(String(128))
    # last hand-off to the broker; NULL = not handed over yet (the broker was down)
    enqueued_at: Mapped[datetime | None]
    audio_seconds: Mapped[float | None] = mapped_column(Float)
    processing_seconds: Mapped[float | None] = mapped_column(Float)
    # hotline batches: the call this job transcribes
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"))
    call_id: Mapped[str | None] = mapped_column(String(200))
    source_path: Mapped[str | None] = mapped_column(Text)
    agent_id: Mapped[str | None] = mapped_column(String(64))
    caller_channel: Mapped[int | None]  # which stereo channel is the caller (None: 0)

    @property
    def planned_ticket_id(self) -> str:
        """The ticket id this job's ticket gets, the same on every retry."""
        return ticket_id_for(self.id)


class TicketRow(Base):
    __tablename__ = "tickets"
    __table_args__ = (
        CheckConstraint(f"status IN ({_in(TICKET_STATUSES)})", name="status"),
        Index("ix_tickets_created", "created_at", "id"),
        Index("ix_tickets_status_created", "status", "created_at"),
        Index("ix_tickets_category", "category_code"),
        Index("ix_tickets_review", "needs_review", "urgency", "created_at"),
        Index("ix_tickets_queue", "status", "urgency", "confidence"),
        Index("ix_tickets_variety", "variety"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), unique=True)
    # the ticket in its storage form (phone included); the columns below copy the
    # fields that lists filter on, so listing never parses JSON
    document: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="new")
    category_code: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))
    urgency: Mapped[str] = mapped_column(String(16))
    needs_review: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(16))
    dialect: Mapped[str] = mapped_column(String(64))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # optimistic locking: every ORM UPDATE checks and bumps it (StaleDataError if lost)
    revision: Mapped[int] = mapped_column(Integer)
    # duration-weighted mean segment confidence: the review queue's "least confident"
    confidence: Mapped[float | None] = mapped_column(Float)
    updated_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_by: Mapped[str | None] = mapped_column(String(200))
    reviewed_at: Mapped[datetime | None]
    # the caller's speech (transcript.variety, STAFF_DIALECTS) and whether the machine
    # text can be read; NULL (stored before 0009 without them): mandarin, readable
    variety: Mapped[str | None] = mapped_column(String(16))
    readable: Mapped[bool | None] = mapped_column(Boolean)

    __mapper_args__: ClassVar[dict[str, Any]] = {"version_id_col": revision}

    @property
    def ticket(self) -> Ticket:
        return Ticket.model_validate(self.document)


class SegmentRow(Base):
    __tablename__ = "segments"

    ticket_id: Mapped[str] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(primary_key=True)
    start: Mapped[float] = mapped_column(Float)
    end: Mapped[float] = mapped_column(Float)
    channel: Mapped[int] = mapped_column(default=0)
    speaker: Mapped[str | None] = mapped_column(String(32))
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    avg_logprob: Mapped[float] = mapped_column(Float)
    no_speech_prob: Mapped[float] = mapped_column(Float)
    flags: Mapped[list[Any]] = mapped_column(default=list)


class Correction(Base):
    """One staff change: a segment's text or a ticket field, before and after.

    `revision` is the ticket revision the change produced; one save may hold several
    rows (one per segment or field), all with the same revision.
    """

    __tablename__ = "corrections"
    __table_args__ = (
        CheckConstraint("target_kind IN ('segment', 'field')", name="target_kind"),
        UniqueConstraint("ticket_id", "revision", "target_kind", "target"),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    revision: Mapped[int]
    author: Mapped[str] = mapped_column(String(200))
    target_kind: Mapped[str] = mapped_column(String(16))
    # segment index as text ("3") or a field path ("location.district")
    target: Mapped[str] = mapped_column(String(200))
    before: Mapped[Any] = mapped_column(JSON, nullable=True)
    after: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxEvent(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        # one event per ticket revision and type: a replayed finish cannot publish twice
        UniqueConstraint("ticket_id", "revision", "event_type"),
        # the relay only ever scans unsent rows; keep that index small
        Index(
            "ix_outbox_unsent",
            "next_attempt_at",
            "id",
            postgresql_where=text("sent_at IS NULL"),
            sqlite_where=text("sent_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    ticket_id: Mapped[str] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"))
    revision: Mapped[int]
    event_type: Mapped[str] = mapped_column(String(64))
    # the ticket document to publish, storage form (phone included): the relay chooses
    # the public form for sinks that may not see it
    payload: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    # names of the sinks that accepted it (a retry skips them); parked: refused for good
    delivered_to: Mapped[list[Any]] = mapped_column(default=list,
                                                    server_default=text("'[]'"))
    parked_at: Mapped[datetime | None]


class StaffUser(Base):
    """A person who signs in to the review page. The password is an argon2id hash
    (`api.auth.hash_password`); the store never sees the password itself."""

    __tablename__ = "staff_users"
    __table_args__ = (CheckConstraint(f"role IN ({_in(STAFF_ROLES)})", name="role"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]
    # the varieties (STAFF_DIALECTS) this person understands, exactly as declared;
    # none declared: Mandarin only (`spoken_dialects`)
    dialects: Mapped[list[Any]] = mapped_column(default=list)


class StaffSession(Base):
    """A signed-in browser. `id` is the SHA-256 of the cookie's secret, so a leaked
    table does not sign anyone in. Signed in by a staff user or by a staff API key."""

    __tablename__ = "staff_sessions"
    __table_args__ = (Index("ix_staff_sessions_expires_at", "expires_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("staff_users.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class TicketRevision(Base):
    """One staff save or approval: who, when, and the whole document after it. The
    per-segment and per-field before/after pairs are `Correction` rows of the same
    revision (the training data for the next dialect model)."""

    __tablename__ = "ticket_revisions"
    __table_args__ = (CheckConstraint("action IN ('save', 'approve')", name="action"),)

    ticket_id: Mapped[str] = mapped_column(
        ForeignKey("tickets.id", ondelete="CASCADE"), primary_key=True)
    revision: Mapped[int] = mapped_column(primary_key=True)
    action: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str | None] = mapped_column(Text)
    document: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RevisionConflict(Exception):
    """The ticket moved on since the reviewer loaded it."""

    def __init__(self, ticket_id: str, expected: int, current: int,
                 updated_by: str | None, updated_at: datetime | None) -> None:
        who = updated_by or "the pipeline"
        when = f" at {updated_at:%Y-%m-%d %H:%M:%S} UTC" if updated_at else ""
        super().__init__(f"ticket {ticket_id} is at revision {current}, not {expected}: "
                         f"{who} saved it{when}")
        self.ticket_id, self.expected, self.current = ticket_id, expected, current
        self.updated_by, self.updated_at = updated_by, updated_at


@dataclass
class Change:
    """A segment's text (`target` = its index) or a ticket field (a dotted path)."""

    target_kind: Literal["segment", "field"]
    target: str
    before: Any
    after: Any


@dataclass
class Revised:
    row: TicketRow
    changes: list[Change]
    revision: TicketRevision | None  # None: nothing changed, nothing written
    published: bool = False


@dataclass
class RevisionEntry:
    revision: TicketRevision
    corrections: list[Correction]


class ModelPromotion(Base):
    """One promotion or rollback of the model the workers load; the newest row wins."""

    __tablename__ = "model_promotions"
    __table_args__ = (CheckConstraint("action IN ('promote', 'rollback')", name="action"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    # which registry: 'asr' (Whisper) or 'lm' (the character language model)
    kind: Mapped[str] = mapped_column(String(8), default="asr", server_default="asr")
    # what MINYIN_MODEL would say: "whisper-base" or a directory under models/ (NAME/VERSION)
    model: Mapped[str] = mapped_column(String(300))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(16))
    author: Mapped[str] = mapped_column(String(200))
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    validation_cer: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def new_job_id(now: datetime | None = None) -> str:
    """'J' + UTC date-time + 8 hex digits: sortable by submission time, like ticket ids."""
    now = (now or utcnow()).astimezone(timezone.utc)
    return f"J{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def ticket_id_for(job_id: str) -> str:
    """A job's ticket id: same time and random part, so retries rebuild the same id."""
    if not re.fullmatch(r"J\d{8}-\d{6}-[0-9a-f]{8}", job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return "T" + job_id[1:]


_UNSAFE_NAME = re.compile(r"[^\w.\- ]+", re.UNICODE)


def sanitise_filename(name: str | None, max_len: int = 200) -> str | None:
    """The uploaded file's base name, safe to show and to use in a download header.

    Kept only as a label (the blob is stored by hash): directories, control
    characters and anything outside letters, digits, '.', '-', '_' and space go.
    """
    if not name:
        return None
    name = unicodedata.normalize("NFKC", name)
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE_NAME.sub("_", name).strip(" .")
    return name[:max_len] or None


def hash_api_key(plain: str) -> str:
    return hashlib.sha256(plain.encode("utf-8")).hexdigest()


def create_engine_for(url: str, **kwargs: Any) -> Engine:
    """An Engine with the settings each back end needs for several workers at once."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": 30.0, **kwargs.pop("connect_args", {})}
        engine = create_engine(url, connect_args=connect_args, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            # WAL: readers do not block the writer (API reads while workers write)
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
            cur.execute("PRAGMA busy_timeout=30000")  # wait for the writer, do not fail
            cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, far fewer fsyncs
            cur.close()

        return engine
    # a pooled connection may have been dropped by the server or a proxy
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _links_only_since(s: Session, ticket_id: str, base: int, current: int) -> bool:
    """Whether every revision after `base` up to `current` is a relink: only staff
    saves and approvals write a `TicketRevision`; the store's 重复件 / 一类事 links bump
    the counter without one."""
    if not 1 <= base < current:
        return False
    later = s.scalar(select(func.count()).select_from(TicketRevision).where(
        TicketRevision.ticket_id == ticket_id, TicketRevision.revision > base))
    return not later


def upgrade(url: str | Engine, revision: str = "head") -> None:
    """`alembic upgrade head` from code; the scripts ship inside the package."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).resolve().parent / "migrations"))
    if isinstance(url, Engine):
        with url.begin() as conn:
            if conn.dialect.name == "postgresql":
                # API and workers may start together on a fresh database: one migrates,
                # the others wait here and then find nothing to do
                conn.execute(text("SELECT pg_advisory_xact_lock(20261123)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        if url.dialect.name == "sqlite":
            # the migration turned foreign keys off on a pooled connection; new
            # connections turn them on again (the connect event)
            url.dispose()
    else:
        # '%' is ConfigParser interpolation; URL-encoded passwords contain it
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        command.upgrade(cfg, revision)


# --------------------------------------------------------------------------------------
# Repository
# --------------------------------------------------------------------------------------


@dataclass
class TicketPage:
    items: list[TicketRow]
    total: int
    limit: int
    offset: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.items)
        return end if end < self.total else None


@dataclass
class JobStats:
    counts: dict[tuple[str, str], int]  # (status, queue) -> jobs
    audio_seconds: float  # summed over done jobs
    processing_seconds: float
    measured_jobs: int
    outbox_pending: int
    outbox_parked: int


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self._sqlite_dedup_lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, *, migrate: bool = False) -> Store:
        store = cls(create_engine_for(url))
        if migrate:
            store.upgrade()
        return store

    @classmethod
    def from_settings(cls, settings: Settings, *, migrate: bool = False) -> Store:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        return cls.from_url(settings.sqlalchemy_url, migrate=migrate)

    def upgrade(self) -> None:
        upgrade(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed on success, rolled back on any error."""
        with self.sessions.begin() as session:
            yield session

    # -- jobs --------------------------------------------------------------------------

    def create_job(
        self,
        *,
        audio_sha256: str,
        submitter_id: str | None = None,
        client_ref: str | None = None,
        queue: str = "voice",
        audio_filename: str | None = None,
        audio_bytes: int | None = None,
        dialect: str | None = None,
        phone: str | None = None,
        lat: float | None = None,
        lon: float | None = None,
        address: str | None = None,
        submitted_at: datetime | None = None,
        batch_id: str | None = None,
        call_id: str | None = None,
        source_path: str | None = None,
        agent_id: str | None = None,
        caller_channel: int | None = None,
        dedup_window: timedelta | float | None = 10.0,
        now: datetime | None = None,
    ) -> tuple[Job, bool]:
        """(job, created). An existing job comes back instead of a duplicate when

        - a client_ref is given: the same submitter already used it (any age, any status:
          an idempotency key always answers with its first result), or
        - no client_ref: the same submitter sent the same audio within `dedup_window`
          (minutes, or a timedelta; None turns it off) and that job has not failed (a
          resend after a failure is a retry and gets a new job).
        """
        if queue not in JOB_QUEUES:
            raise ValueError(f"queue must be one of {JOB_QUEUES}")
        if not re.fullmatch(r"[0-9a-f]{64}", audio_sha256):
            raise ValueError("audio_sha256 must be 64 lower-case hex digits")
        now = now or utcnow()
        client_ref = client_ref.strip() or None if client_ref else None
        if isinstance(dedup_window, (int, float)):
            dedup_window = timedelta(minutes=dedup_window)

        job = Job(
            id=new_job_id(now), status="queued", queue=queue, submitter_id=submitter_id,
            client_ref=client_ref, audio_sha256=audio_sha256,
            audio_filename=sanitise_filename(audio_filename), audio_bytes=audio_bytes,
            dialect=dialect, phone=phone.strip() if phone else None, lat=lat, lon=lon,
            address=address, submitted_at=submitted_at, attempts=0, created_at=now,
            batch_id=batch_id, call_id=call_id, source_path=source_path, agent_id=agent_id,
            caller_channel=caller_channel,
        )
        by_audio = client_ref is None and dedup_window is not None
        try:
            # the audio-window check and the insert must not interleave with a concurrent
            # upload of the same recording (a double tap): serialise them per submitter
            # and recording. client_refs need no lock: a unique index backs them.
            with self._dedup_lock(by_audio), self.session() as s:
                if by_audio and s.get_bind().dialect.name == "postgresql":
                    s.execute(select(func.pg_advisory_xact_lock(
                        func.hashtext(f"{submitter_id}:{audio_sha256}"))))
                existing = self._find_duplicate(s, submitter_id, client_ref, audio_sha256,
                                                dedup_window, now)
                if existing is not None:
                    return existing, False
                s.add(job)
        except IntegrityError:
            # a concurrent submission with the same client_ref won the unique index
            with self.session() as s:
                existing = self._find_duplicate(s, submitter_id, client_ref, audio_sha256,
                                                None, now)
            if existing is None:
                raise
            return existing, False
        return job, True

    def _dedup_lock(self, needed: bool) -> contextlib.AbstractContextManager[Any]:
        # SQLite: one process writes (embedded mode), so a process lock is enough
        if needed and self.engine.dialect.name == "sqlite":
            return self._sqlite_dedup_lock
        return contextlib.nullcontext()

    @staticmethod
    def _find_duplicate(s: Session, submitter_id: str | None, client_ref: str | None,
                        audio_sha256: str, window: timedelta | None,
                        now: datetime) -> Job | None:
        same_submitter = (Job.submitter_id.is_(None) if submitter_id is None
                          else Job.submitter_id == submitter_id)
        if client_ref is not None:
            # the client's own idempotency key decides alone: a new ref with the same
            # recording is a deliberate new submission
            return s.scalar(select(Job).where(same_submitter, Job.client_ref == client_ref))
        if window is not None:
            return s.scalar(
                select(Job)
                .where(same_submitter, Job.audio_sha256 == audio_sha256,
                       Job.created_at >= now - window, Job.status != "failed")
                .order_by(Job.created_at.desc(), Job.id.desc())
                .limit(1)
            )
        return None

    def batch(self, batch_id: str, *, source: str, out_dir: str) -> Batch:
        """The batch with this id, made on first use (a rerun finds the same one)."""
        with self.session() as s:
            row = s.get(Batch, batch_id)
            if row is None:
                row = Batch(id=batch_id, source=source, out_dir=out_dir, created_at=utcnow())
                s.add(row)
        return row

    def finish_batch(self, batch_id: str) -> None:
        with self.session() as s:
            s.execute(update(Batch).where(Batch.id == batch_id)
                      .values(finished_at=utcnow()).execution_options(synchronize_session=False))

    def done_job_for_audio(self, audio_sha256: str) -> Job | None:
        """A finished job for this recording, from any batch or upload."""
        with self.session() as s:
            return s.scalar(select(Job).where(Job.audio_sha256 == audio_sha256,
                                              Job.status == "done")
                            .order_by(Job.finished_at).limit(1))

    def get_jobs(self, job_ids: Sequence[str]) -> dict[str, Job]:
        with self.session() as s:
            return {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(list(job_ids))))}

    def get_job(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def claim_job(self, job_id: str, *, lease: timedelta | float = 120.0,
                  max_attempts: int | None = None, worker: str | None = None,
                  force: bool = False, now: datetime | None = None) -> Job | None:
        """queued -> running (attempts + 1); None if another worker has it or it is over.

        A running job whose heartbeat (`heartbeat`) is older than `lease` (seconds or a
        timedelta) belongs to a dead worker and may be claimed again; so may any running
        job with `force` (the broker redelivered the task because its worker died). One
        conditional UPDATE, so exactly one of several concurrent claimers gets it.
        """
        now = now or utcnow()
        if not isinstance(lease, timedelta):
            lease = timedelta(seconds=lease)
        last_sign = func.coalesce(Job.heartbeat_at, Job.started_at)
        if force:
            claimable = Job.status.in_(("queued", "running"))
        else:
            claimable = or_(Job.status == "queued",
                            (Job.status == "running") & (last_sign < now - lease))
        conditions = [Job.id == job_id, claimable]
        if max_attempts is not None:
            conditions.append(Job.attempts < max_attempts)
        with self.session() as s:
            result = s.execute(
                update(Job).where(*conditions)
                .values(status="running", attempts=Job.attempts + 1, started_at=now,
                        heartbeat_at=now, worker=worker, finished_at=None)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                return None
            return s.get(Job, job_id, populate_existing=True)

    def heartbeat(self, job_id: str, attempt: int, *, now: datetime | None = None) -> bool:
        """Keep a running job's lease; False once it is no longer ours (re-claimed, over)."""
        with self.session() as s:
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.status == "running",
                                  Job.attempts == attempt)
                .values(heartbeat_at=now or utcnow())
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def next_queued_job(self, *, queues: Sequence[str] = JOB_QUEUES) -> str | None:
        """The job to run next in-process: the first queue in `queues` wins, then age."""
        with self.session() as s:
            for queue in queues:
                job_id = s.scalar(select(Job.id).where(Job.status == "queued",
                                                       Job.queue == queue)
                                  .order_by(Job.created_at, Job.id).limit(1))
                if job_id is not None:
                    return job_id
        return None

    def mark_enqueued(self, job_ids: Sequence[str], *, now: datetime | None = None) -> None:
        if not job_ids:
            return
        with self.session() as s:
            s.execute(update(Job).where(Job.id.in_(list(job_ids)))
                      .values(enqueued_at=now or utcnow())
                      .execution_options(synchronize_session=False))

    def jobs_to_enqueue(self, *, enqueued_before: datetime | None = None,
                        limit: int = 500) -> list[Job]:
        """Queued jobs never handed to the broker, and with `enqueued_before` also those
        handed over before then (their message may have died with a restarted broker)."""
        cond = Job.enqueued_at.is_(None)
        if enqueued_before is not None:
            cond = or_(cond, Job.enqueued_at < enqueued_before)
        with self.session() as s:
            return list(s.scalars(select(Job).where(Job.status == "queued", cond)
                                  .order_by(Job.created_at, Job.id).limit(limit)))

    def requeue_stale_running(self, lease: timedelta | float, *,
                              now: datetime | None = None) -> list[str]:
        """Running jobs whose worker stopped beating go back to queued (not yet handed
        to the broker again); returns their ids."""
        now = now or utcnow()
        if not isinstance(lease, timedelta):
            lease = timedelta(seconds=lease)
        last_sign = func.coalesce(Job.heartbeat_at, Job.started_at)
        with self.session() as s:
            ids = list(s.scalars(select(Job.id).where(Job.status == "running",
                                                      last_sign < now - lease)))
            if ids:
                s.execute(update(Job).where(Job.id.in_(ids), Job.status == "running",
                                            last_sign < now - lease)
                          .values(status="queued", enqueued_at=None, worker=None)
                          .execution_options(synchronize_session=False))
        return ids

    def job_stats(self) -> JobStats:
        """Counts by (status, queue) and totals of the work done, for /metrics."""
        with self.session() as s:
            counts = {(st, q): int(n) for st, q, n in s.execute(
                select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue))}
            audio, processing, measured = s.execute(
                select(func.coalesce(func.sum(Job.audio_seconds), 0.0),
                       func.coalesce(func.sum(Job.processing_seconds), 0.0),
                       func.count(Job.processing_seconds))
                .where(Job.status == "done")
            ).one()
            outbox = s.scalar(select(func.count()).select_from(OutboxEvent)
                              .where(OutboxEvent.sent_at.is_(None),
                                     OutboxEvent.parked_at.is_(None)))
            parked = s.scalar(select(func.count()).select_from(OutboxEvent)
                              .where(OutboxEvent.parked_at.is_not(None),
                                     OutboxEvent.sent_at.is_(None)))
        return JobStats(counts=counts, audio_seconds=float(audio),
                        processing_seconds=float(processing), measured_jobs=int(measured),
                        outbox_pending=int(outbox or 0), outbox_parked=int(parked or 0))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def finish_job(self, job_id: str, ticket: Ticket, *, audio_seconds: float | None = None,
                   processing_seconds: float | None = None,
                   now: datetime | None = None) -> TicketRow:
        """Job done + ticket + segments + outbox event, all in one transaction.

        Idempotent: for a job already done, the stored ticket comes back and nothing
        is written (a retried or duplicated task may finish twice).
        """
        now = now or utcnow()
        with self.session() as s:
            # the UPDATE takes the row (PostgreSQL) or database (SQLite) write lock
            # first, so a concurrent finisher waits here and then finds 'done'
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.status != "done")
                .values(status="done", ticket_id=ticket.id, finished_at=now,
                        failure_code=None, failure_reason=None, heartbeat_at=None,
                        audio_seconds=audio_seconds, processing_seconds=processing_seconds)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                job = s.get(Job, job_id)
                if job is None:
                    raise LookupError(f"no job {job_id}")
                row = s.get(TicketRow, job.ticket_id) if job.ticket_id else None
                if row is None:
                    raise LookupError(f"job {job_id} is done but has no ticket")
                return row
            # 重复件 / 一类事 against the earlier tickets (pipeline.store_clusters)
            repeats = _repeats().before_save(s, ticket)
            ticket = repeats.ticket
            row = _ticket_row(ticket, job_id, now)
            s.add(row)
            s.flush()  # the ticket row first: segments and outbox point at it
            s.add_all(_segment_rows(ticket))
            s.add(OutboxEvent(ticket_id=ticket.id, revision=row.revision,
                              event_type=repeats.event_type, payload=row.document,
                              created_at=now, next_attempt_at=now, attempts=0))
            _repeats().after_save(s, repeats, now=now)
            return row

    def fail_job(self, job_id: str, code: str, reason: str, *, retry: bool = False,
                 now: datetime | None = None) -> bool:
        """Record why a job failed: 'failed' for good, or back to 'queued' with `retry`.

        False if the job is unknown or already done (a late failure report from a
        worker whose lease ran out must not undo another worker's success).
        """
        now = now or utcnow()
        with self.session() as s:
            result = s.execute(
                update(Job).where(Job.id == job_id, Job.status != "done")
                .values(status="queued" if retry else "failed", failure_code=code[:64],
                        failure_reason=reason[:4000], finished_at=None if retry else now,
                        heartbeat_at=None)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    # -- typed messages ------------------------------------------------------------------

    def ticket_for_client_ref(self, client_ref: str, *, submitter_id: str | None = None
                              ) -> Ticket | None:
        """The ticket this submitter's client_ref already made (voice note or message)."""
        with self.session() as s:
            job = self._find_duplicate(s, submitter_id, client_ref.strip(), "", None, utcnow())
            row = s.get(TicketRow, job.ticket_id) if job is not None and job.ticket_id else None
            return row.ticket if row is not None else None

    def save_message_ticket(self, ticket: Ticket, *, submitter_id: str | None = None,
                            content_sha256: str, now: datetime | None = None,
                            caller: str | None = None) -> tuple[Ticket, bool]:
        """A typed message's ticket: a done job (it carries the submitter and client_ref,
        whose unique index makes a resend idempotent), the ticket, its segments and the
        ticket.created event, in one transaction. (ticket, created): a concurrent resend
        with the same client_ref, or the same ticket id, gets the stored ticket back."""
        now = now or utcnow()
        client_ref = ticket.submitter.client_ref
        job = Job(id=new_job_id(now), status="done", queue="voice", submitter_id=submitter_id,
                  client_ref=client_ref, audio_sha256=content_sha256, attempts=0,
                  phone=ticket.submitter.phone, lat=ticket.location.lat,
                  lon=ticket.location.lon, address=ticket.location.submitted_address,
                  submitted_at=ticket.submitted_at, ticket_id=ticket.id, created_at=now,
                  started_at=now, finished_at=now)
        try:
            with self.session() as s:
                s.add(job)
                s.flush()  # the job first: the ticket row points at it
                repeats = _repeats().before_save(s, ticket, caller=caller)
                ticket = repeats.ticket
                row = _ticket_row(ticket, job.id, now)
                s.add(row)
                s.flush()
                s.add_all(_segment_rows(ticket))
                s.add(OutboxEvent(ticket_id=ticket.id, revision=row.revision,
                                  event_type=repeats.event_type, payload=row.document,
                                  created_at=now, next_attempt_at=now, attempts=0))
                _repeats().after_save(s, repeats, now=now)
        except IntegrityError:
            existing = (self.ticket_for_client_ref(client_ref, submitter_id=submitter_id)
                        if client_ref else None) or self.get_ticket(ticket.id)
            if existing is None:
                raise
            return existing, False
        return ticket, True

    def find_tickets(self, *, ids: Sequence[str] | None = None,
                     categories: Sequence[str] | None = None,
                     statuses: Sequence[str] | None = None,
                     created_from: datetime | None = None, created_to: datetime | None = None,
                     submitter_id: str | None = None, limit: int = 1000) -> list[TicketRow]:
        """Tickets by id list, exact category codes and review statuses, oldest first
        (Open311's requests.json): every filter given must hold; [from, to)."""
        conditions = _ticket_filters(statuses=statuses, category=None, urgency=None,
                                     source=None, created_from=created_from,
                                     created_to=created_to)
        if ids is not None:
            conditions.append(TicketRow.id.in_(list(ids)))
        if categories is not None:
            conditions.append(TicketRow.category_code.in_(list(categories)))
        if submitter_id is not None:
            conditions.append(TicketRow.job_id.in_(
                select(Job.id).where(Job.submitter_id == submitter_id)))
        with self.session() as s:
            return list(s.scalars(select(TicketRow).where(*conditions)
                                  .order_by(TicketRow.created_at.asc(), TicketRow.id.asc())
                                  .limit(limit)))

    # -- tickets -----------------------------------------------------------------------

    def get_ticket_row(self, ticket_id: str) -> TicketRow | None:
        with self.session() as s:
            return s.get(TicketRow, ticket_id)

    def get_ticket(self, ticket_id: str) -> Ticket | None:
        row = self.get_ticket_row(ticket_id)
        return row.ticket if row is not None else None

    def get_segments(self, ticket_id: str) -> list[SegmentRow]:
        with self.session() as s:
            return list(s.scalars(select(SegmentRow).where(SegmentRow.ticket_id == ticket_id)
                                  .order_by(SegmentRow.idx)))

    def list_tickets(
        self,
        *,
        status: str | None = None,
        category: str | None = None,
        urgency: str | None = None,
        needs_review: bool | None = None,
        source: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
        submitter_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
        oldest_first: bool = False,
    ) -> TicketPage:
        """Filtered tickets, newest first (id breaks ties, so pages never overlap).

        `category` matches the code or, given a prefix like "city", every code under
        it ("city.sanitation"). The created range is half-open: [from, to).
        `submitter_id`: only tickets of that key's uploads.
        """
        _check_page(limit, offset)
        conditions = _ticket_filters(statuses=(status,) if status is not None else None,
                                     category=category, urgency=urgency, source=source,
                                     created_from=created_from, created_to=created_to)
        if needs_review is not None:
            conditions.append(TicketRow.needs_review.is_(needs_review))
        if submitter_id is not None:
            conditions.append(TicketRow.job_id.in_(
                select(Job.id).where(Job.submitter_id == submitter_id)))
        order = ((TicketRow.created_at.asc(), TicketRow.id.asc()) if oldest_first
                 else (TicketRow.created_at.desc(), TicketRow.id.desc()))
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(TicketRow).where(*conditions))
            items = list(s.scalars(select(TicketRow).where(*conditions).order_by(*order)
                                   .limit(limit).offset(offset)))
        return TicketPage(items=items, total=int(total or 0), limit=limit, offset=offset)

    # -- outbox ------------------------------------------------------------------------

    def pending_outbox(self, limit: int = 100, *, now: datetime | None = None
                       ) -> list[OutboxEvent]:
        """Unsent events that are due, oldest first (the order tickets were stored).

        Several relays may read the same events: delivery is at least once, and sinks
        deduplicate by ticket id and revision.
        """
        now = now or utcnow()
        with self.session() as s:
            return list(s.scalars(
                select(OutboxEvent)
                .where(OutboxEvent.sent_at.is_(None), OutboxEvent.parked_at.is_(None),
                       OutboxEvent.next_attempt_at <= now)
                .order_by(OutboxEvent.id).limit(limit)
            ))

    def mark_sent(self, event_id: int, *, now: datetime | None = None) -> bool:
        """Call only after the sink accepted the event. False if it was already sent."""
        with self.session() as s:
            result = s.execute(
                update(OutboxEvent)
                .where(OutboxEvent.id == event_id, OutboxEvent.sent_at.is_(None))
                .values(sent_at=now or utcnow(), attempts=OutboxEvent.attempts + 1,
                        last_error=None)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def mark_failed_attempt(self, event_id: int, error: str, *, now: datetime | None = None,
                            base_delay: float = 5.0, max_delay: float = 3600.0) -> None:
        """Count a failed delivery and hold the event back (exponential backoff).

        Backoff so that a sink that is down is not hammered, and so that one poison
        event does not keep the relay from the events behind it.
        """
        now = now or utcnow()
        with self.session() as s:
            event_row = s.get(OutboxEvent, event_id, with_for_update=True)
            if event_row is None or event_row.sent_at is not None:
                return
            event_row.attempts += 1
            event_row.last_error = error[:4000]
            delay = min(max_delay, base_delay * 2 ** (event_row.attempts - 1))
            event_row.next_attempt_at = now + timedelta(seconds=delay)

    def mark_delivered(self, event_id: int, sink: str) -> None:
        """One sink accepted the event; a later retry for another sink skips this one."""
        with self.session() as s:
            row = s.get(OutboxEvent, event_id, with_for_update=True)
            if row is not None and sink not in (row.delivered_to or []):
                row.delivered_to = [*(row.delivered_to or []), sink]

    def park_event(self, event_id: int, error: str, *, now: datetime | None = None) -> None:
        """A sink refused the event for good: keep it, out of the relay's way, for a person."""
        with self.session() as s:
            row = s.get(OutboxEvent, event_id, with_for_update=True)
            if row is not None and row.sent_at is None:
                row.attempts += 1
                row.last_error = error[:4000]
                row.parked_at = now or utcnow()

    def requeue_event(self, event_id: int) -> None:
        with self.session() as s:
            row = s.get(OutboxEvent, event_id, with_for_update=True)
            if row is not None:
                row.parked_at = None
                row.next_attempt_at = utcnow()

    # -- staff review ------------------------------------------------------------------

    def review_queue(self, *, statuses: Sequence[str] | None = WAITING_STATUSES,
                     category: str | None = None, urgency: str | None = None,
                     source: str | None = None, created_from: datetime | None = None,
                     created_to: datetime | None = None, limit: int = 50,
                     offset: int = 0, dialect: str | None = None,
                     speaks: Sequence[str] | None = None,
                     route: bool = False) -> tuple[TicketPage, dict[str, int]]:
        """(page, counts): tickets for people, urgent first, then least confident,
        then oldest (id breaks ties, so pages never overlap). `counts` are per status
        plus `urgent` (waiting and urgent), under every filter but the status.

        `dialect`: only tickets of that variety (a NULL variety is Mandarin), or
        ``unreadable``: only those whose machine text cannot be read. `speaks`: the
        reviewer's varieties (`spoken_dialects`); before everything else, tickets in a
        variety they speak other than Mandarin come first, then the readable ones and
        those in Mandarin they speak, and last those not readable in a variety they
        do not speak.

        `route` (a signed-in person's queue, no `dialect` asked for): a ticket whose
        machine text cannot be read, in a variety some enabled staff user speaks, goes
        to those people only; nobody else's queue lists it (an explicit `dialect`
        filter still does). One in a variety nobody declared stays in everyone's
        queue, last, so it is never out of sight."""
        _check_page(limit, offset)
        others = _ticket_filters(statuses=None, category=category, urgency=urgency,
                                 source=source, created_from=created_from,
                                 created_to=created_to)
        variety = func.coalesce(TicketRow.variety, "mandarin")
        readable = func.coalesce(TicketRow.readable, true())
        if dialect == "unreadable":
            others.append(readable == false())
        elif dialect is not None:
            if dialect not in STAFF_DIALECTS:
                raise ValueError(f"unknown dialect {dialect!r}")
            others.append(variety == dialect)
        spoken = list(speaks) if speaks is not None else ["mandarin"]
        own = [v for v in spoken if v != "mandarin"]
        if route and dialect is None:
            elsewhere = sorted(self.covered_dialects() - set(spoken))
            if elsewhere:
                others.append(or_(readable == true(), variety.not_in(elsewhere)))
        where = [*others, TicketRow.status.in_(list(statuses))] if statuses else others
        routing = case(
            *([(variety.in_(own), 0)] if own else []),
            (or_(variety.in_(spoken), readable == true()), 1),
            else_=2)
        order = (routing, case((TicketRow.urgency == "urgent", 0), else_=1),
                 func.coalesce(TicketRow.confidence, 1.0).asc(),
                 TicketRow.created_at.asc(), TicketRow.id.asc())
        with self.session() as s:
            total = s.scalar(select(func.count()).select_from(TicketRow).where(*where))
            items = list(s.scalars(select(TicketRow).where(*where).order_by(*order)
                                   .limit(limit).offset(offset)))
            counts = {st: 0 for st in TICKET_STATUSES}
            for st, n in s.execute(select(TicketRow.status, func.count())
                                   .where(*others).group_by(TicketRow.status)):
                counts[st] = int(n)
            counts["urgent"] = int(s.scalar(
                select(func.count()).select_from(TicketRow)
                .where(*others, TicketRow.status.in_(WAITING_STATUSES),
                       TicketRow.urgency == "urgent")) or 0)
        return TicketPage(items=items, total=int(total or 0), limit=limit,
                          offset=offset), counts

    def revise_ticket(
        self,
        ticket_id: str,
        *,
        base_revision: int,
        author: str,
        action: RevisionAction,
        edit: Callable[[Ticket], tuple[Ticket, list[Change]]],
        comment: str | None = None,
        now: datetime | None = None,
    ) -> Revised:
        """A staff save or approval, in one transaction.

        Revisions that only relinked the ticket (重复件 / 一类事: `duplicate_of`,
        `repeat_count`, `cluster_id`, which a save never edits) do not conflict: the
        save applies on top of them. Any staff save or approval since does.

        `edit` turns the stored ticket into the revised one and lists what changed
        (`pipeline.review.apply_edit`); it may raise to refuse the edit. A save that
        changes nothing writes nothing. Otherwise: the ticket (revision + 1, status
        in_review, or reviewed on approval), its segments, a `TicketRevision`, a
        `Correction` per change, and on approval a ``ticket.revised`` outbox event.
        Raises `LookupError` for an unknown ticket and `RevisionConflict` when the
        ticket is no longer at `base_revision` (checked again by the UPDATE itself).
        """
        if action not in ("save", "approve"):
            raise ValueError("action must be save or approve")
        now = now or utcnow()
        try:
            with self.session() as s:
                row = s.get(TicketRow, ticket_id)
                if row is None:
                    raise LookupError(f"no ticket {ticket_id}")
                if row.revision != base_revision and not _links_only_since(
                        s, ticket_id, base_revision, row.revision):
                    raise RevisionConflict(ticket_id, base_revision, row.revision,
                                           row.updated_by, row.updated_at)
                before = row.ticket
                after, changes = edit(before)
                if not changes and action == "save":
                    return Revised(row=row, changes=[], revision=None)
                document = after.storage_dict()
                row.document = document
                row.category_code = after.category.code
                row.kind = after.kind
                row.urgency = after.urgency.level
                row.needs_review = after.review.needed
                row.confidence = ticket_confidence(after)
                row.variety, row.readable = document_variety(document)
                row.status = "reviewed" if action == "approve" else "in_review"
                row.updated_at = now
                row.updated_by = author
                if action == "approve":
                    row.reviewed_by, row.reviewed_at = author, now
                else:
                    row.reviewed_by, row.reviewed_at = None, None
                # the UPDATE carries "AND revision = base_revision" and bumps it
                s.flush()
                revision = row.revision
                by_idx = {seg.idx: seg for seg in s.scalars(
                    select(SegmentRow).where(SegmentRow.ticket_id == ticket_id))}
                for i, seg in enumerate(after.transcript.segments):
                    stored = by_idx.get(i)
                    if stored is not None and (stored.text, stored.flags) != (
                            seg.text, list(seg.flags)):
                        stored.text, stored.flags = seg.text, list(seg.flags)
                rev = TicketRevision(ticket_id=ticket_id, revision=revision, action=action,
                                     author=author, comment=comment, document=document,
                                     created_at=now)
                s.add(rev)
                s.add_all(Correction(ticket_id=ticket_id, revision=revision, author=author,
                                     target_kind=c.target_kind, target=c.target,
                                     before=c.before, after=c.after, created_at=now)
                          for c in changes)
                if action == "approve":
                    s.add(OutboxEvent(ticket_id=ticket_id, revision=revision,
                                      event_type=EVENT_TICKET_REVISED, payload=document,
                                      created_at=now, next_attempt_at=now, attempts=0))
                return Revised(row=row, changes=changes, revision=rev,
                               published=action == "approve")
        except StaleDataError:
            # another reviewer's UPDATE landed between our read and our write
            current = self.get_ticket_row(ticket_id)
            if current is None:
                raise LookupError(f"no ticket {ticket_id}") from None
            raise RevisionConflict(ticket_id, base_revision, current.revision,
                                   current.updated_by, current.updated_at) from None

    def ticket_history(self, ticket_id: str) -> list[RevisionEntry]:
        """Staff revisions, newest first, each with its corrections."""
        with self.session() as s:
            revisions = list(s.scalars(select(TicketRevision)
                                       .where(TicketRevision.ticket_id == ticket_id)
                                       .order_by(TicketRevision.revision.desc())))
            corrections: dict[int, list[Correction]] = {}
            for c in s.scalars(select(Correction).where(Correction.ticket_id == ticket_id)
                               .order_by(Correction.id)):
                corrections.setdefault(c.revision, []).append(c)
        return [RevisionEntry(r, corrections.get(r.revision, [])) for r in revisions]

    def approved_documents(self, *, since: datetime | None = None
                           ) -> list[tuple[TicketRevision, Job | None]]:
        """Each approved ticket's latest approval (the document as approved) with its job,
        oldest approval first: what the corrections export reads."""
        latest = (select(TicketRevision.ticket_id,
                         func.max(TicketRevision.revision).label("revision"))
                  .where(TicketRevision.action == "approve")
                  .group_by(TicketRevision.ticket_id).subquery())
        query = (select(TicketRevision, Job)
                 .join(latest, (TicketRevision.ticket_id == latest.c.ticket_id)
                       & (TicketRevision.revision == latest.c.revision))
                 .join(TicketRow, TicketRow.id == TicketRevision.ticket_id)
                 .outerjoin(Job, Job.id == TicketRow.job_id)
                 .order_by(TicketRevision.created_at, TicketRevision.ticket_id))
        if since is not None:
            query = query.where(TicketRevision.created_at >= since)
        with self.session() as s:
            return [(rev, job) for rev, job in s.execute(query)]

    # -- model registry ------------------------------------------------------------------

    def current_model(self, kind: str = "asr") -> ModelPromotion | None:
        """The newest promotion or rollback of `kind` ('asr' or 'lm'); None: nothing
        promoted (settings decide)."""
        with self.session() as s:
            return s.scalar(select(ModelPromotion).where(ModelPromotion.kind == kind)
                            .order_by(ModelPromotion.id.desc()).limit(1))

    def model_history(self, kind: str = "asr") -> list[ModelPromotion]:
        with self.session() as s:
            return list(s.scalars(select(ModelPromotion).where(ModelPromotion.kind == kind)
                                  .order_by(ModelPromotion.id.desc())))

    def record_promotion(self, *, model: str, name: str, version: str, action: str,
                         author: str, forced: bool = False,
                         validation_cer: float | None = None,
                         reason: str | None = None, kind: str = "asr") -> ModelPromotion:
        row = ModelPromotion(kind=kind, model=model, name=name, version=version, action=action,
                             author=author, forced=forced, validation_cer=validation_cer,
                             reason=reason, created_at=utcnow())
        with self.session() as s:
            s.add(row)
        return row

    # -- staff users and sessions --------------------------------------------------------

    def create_staff_user(self, username: str, password_hash: str, *, role: str = "staff",
                          display_name: str | None = None,
                          dialects: Sequence[str] = ()) -> StaffUser:
        if role not in STAFF_ROLES:
            raise ValueError(f"role must be one of {STAFF_ROLES}")
        _check_dialects(dialects)
        row = StaffUser(id="U" + secrets.token_hex(8), username=username,
                        display_name=display_name or username, role=role,
                        password_hash=password_hash, created_at=utcnow(),
                        dialects=list(dialects))
        try:
            with self.session() as s:
                s.add(row)
        except IntegrityError:
            raise ValueError(f"a user named {username!r} already exists") from None
        return row

    def covered_dialects(self) -> set[str]:
        """The varieties other than Mandarin that at least one enabled staff user
        declared: where an unreadable ticket has someone to go to."""
        with self.session() as s:
            declared = s.scalars(select(StaffUser.dialects)
                                 .where(StaffUser.disabled_at.is_(None)))
            return {d for ds in declared for d in (ds or [])
                    if d not in ("mandarin", "other", "unknown")}

    def get_staff_user(self, username: str) -> StaffUser | None:
        with self.session() as s:
            return s.scalar(select(StaffUser).where(StaffUser.username == username))

    def list_staff_users(self) -> list[StaffUser]:
        with self.session() as s:
            return list(s.scalars(select(StaffUser).order_by(StaffUser.username)))

    def update_staff_user(self, username: str, **values: Any) -> bool:
        """Set columns (password_hash, role, display_name, disabled_at, last_login_at,
        dialects)."""
        allowed = {"password_hash", "role", "display_name", "disabled_at", "last_login_at",
                   "dialects"}
        if set(values) - allowed:
            raise ValueError(f"only {sorted(allowed)} may change")
        if "dialects" in values:
            _check_dialects(values["dialects"])
            values["dialects"] = list(values["dialects"])
        with self.session() as s:
            result = s.execute(update(StaffUser).where(StaffUser.username == username)
                               .values(**values).execution_options(synchronize_session=False))
            if values.get("disabled_at") is not None or "password_hash" in values:
                # a disabled user or a changed password signs every browser out
                s.execute(delete(StaffSession).where(StaffSession.user_id.in_(
                    select(StaffUser.id).where(StaffUser.username == username))))
            return result.rowcount == 1  # type: ignore[attr-defined]

    def create_session(self, *, user_id: str | None = None, key_id: str | None = None,
                       ttl: timedelta, now: datetime | None = None) -> tuple[str, StaffSession]:
        """(cookie secret, row). Only the secret's hash is stored."""
        if (user_id is None) == (key_id is None):
            raise ValueError("a session belongs to a user or to a key")
        now = now or utcnow()
        token = secrets.token_urlsafe(32)
        row = StaffSession(id=hash_api_key(token), user_id=user_id, key_id=key_id,
                           csrf_token=secrets.token_urlsafe(32), created_at=now,
                           expires_at=now + ttl, last_seen_at=now)
        with self.session() as s:
            s.add(row)
            # sign-in is rare: a good moment to forget sessions that ran out
            s.execute(delete(StaffSession).where(StaffSession.expires_at < now))
        return token, row

    def get_session(self, token: str, *, now: datetime | None = None
                    ) -> tuple[StaffSession, StaffUser | ApiKey] | None:
        """The live session for this cookie secret and whom it signs in, or None
        (unknown, expired, user disabled, key revoked)."""
        if not token or len(token) > 200:
            return None
        now = now or utcnow()
        with self.session() as s:
            row = s.get(StaffSession, hash_api_key(token))
            if row is None or row.expires_at <= now:
                return None
            who: StaffUser | ApiKey | None
            if row.user_id is not None:
                who = s.get(StaffUser, row.user_id)
                if who is None or who.disabled_at is not None:
                    return None
            else:
                who = s.get(ApiKey, row.key_id)
                if who is None or who.revoked_at is not None:
                    return None
            if now - row.last_seen_at > timedelta(minutes=1):
                row.last_seen_at = now
            return row, who

    def delete_session(self, token: str) -> bool:
        with self.session() as s:
            result = s.execute(delete(StaffSession)
                               .where(StaffSession.id == hash_api_key(token)))
            return result.rowcount == 1  # type: ignore[attr-defined]

    # -- API keys ----------------------------------------------------------------------

    def create_api_key(self, name: str, role: str) -> tuple[str, ApiKey]:
        """(plain key, row). The plain key exists only in this return value: show it once."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        plain = API_KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
        row = ApiKey(id="K" + secrets.token_hex(8), name=name, role=role,
                     key_hash=hash_api_key(plain), key_prefix=plain[:10],
                     created_at=utcnow())
        with self.session() as s:
            s.add(row)
        return plain, row

    def verify_api_key(self, plain: str) -> ApiKey | None:
        """The active key row for this secret, or None (unknown, malformed or revoked)."""
        if not plain or not plain.startswith(API_KEY_PREFIX) or len(plain) > 200:
            return None
        digest = hash_api_key(plain)
        with self.session() as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        # the lookup already matched; compare_digest keeps the final check constant-time
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return row if row.revoked_at is None else None

    def revoke_api_key(self, key_id: str, *, now: datetime | None = None) -> bool:
        with self.session() as s:
            result = s.execute(
                update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=now or utcnow())
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def list_api_keys(self) -> list[ApiKey]:
        with self.session() as s:
            return list(s.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))


def _repeats() -> Any:
    """pipeline.store_clusters (imported late: it builds on this module's Base)."""
    from pipeline import store_clusters

    return store_clusters


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= 500:
        raise ValueError("limit must be 1..500")
    if offset < 0:
        raise ValueError("offset must be >= 0")


def _ticket_filters(*, statuses: Sequence[str] | None, category: str | None,
                    urgency: str | None, source: str | None, created_from: datetime | None,
                    created_to: datetime | None) -> list[Any]:
    """WHERE conditions on tickets shared by listing and the review queue. `category`
    matches the code or every code under a prefix; the created range is [from, to)."""
    conditions: list[Any] = []
    if statuses:
        conditions.append(TicketRow.status.in_(list(statuses)))
    if category is not None:
        prefix = category.rstrip(".")
        conditions.append(or_(TicketRow.category_code == prefix,
                              TicketRow.category_code.startswith(prefix + ".",
                                                                 autoescape=True)))
    if urgency is not None:
        conditions.append(TicketRow.urgency == urgency)
    if source is not None:
        conditions.append(TicketRow.source == source)
    if created_from is not None:
        conditions.append(TicketRow.created_at >= created_from)
    if created_to is not None:
        conditions.append(TicketRow.created_at < created_to)
    return conditions


def document_variety(document: dict[str, Any]) -> tuple[str, bool]:
    """(variety, readable) of a stored ticket document; documents from before dialect
    detection have neither: Mandarin, readable."""
    transcript = document.get("transcript") or {}
    variety = transcript.get("variety") or "mandarin"
    readable = transcript.get("readable")
    return variety, True if readable is None else bool(readable)


def _check_dialects(dialects: Sequence[str]) -> None:
    unknown = [d for d in dialects if d not in STAFF_DIALECTS]
    if unknown:
        raise ValueError(f"unknown dialect {unknown[0]!r}; known: {', '.join(STAFF_DIALECTS)}")


def spoken_dialects(declared: Sequence[str] | None) -> list[str]:
    """What a staff user speaks: the dialects declared, or Mandarin when none are."""
    return list(declared) if declared else ["mandarin"]


def parse_dialects(value: str) -> list[str]:
    """'wu,mandarin' as a list of STAFF_DIALECTS (order kept, repeats dropped);
    ValueError naming the first unknown name. An empty string: none declared."""
    out: list[str] = []
    for name in (part.strip().lower() for part in value.split(",")):
        if not name:
            continue
        if name not in STAFF_DIALECTS:
            raise ValueError(f"unknown dialect {name!r}; known: {', '.join(STAFF_DIALECTS)}")
        if name not in out:
            out.append(name)
    return out


def _ticket_row(ticket: Ticket, job_id: str | None, now: datetime) -> TicketRow:
    document = ticket.storage_dict()
    variety, readable = document_variety(document)
    return TicketRow(
        id=ticket.id, job_id=job_id, document=document, status="new",
        variety=variety, readable=readable,
        category_code=ticket.category.code, kind=ticket.kind, urgency=ticket.urgency.level,
        needs_review=ticket.review.needed, source=ticket.source, dialect=ticket.dialect,
        model_name=ticket.model.name, model_version=ticket.model.version,
        created_at=ticket.created_at, updated_at=now, confidence=ticket_confidence(ticket),
    )


def ticket_confidence(ticket: Ticket) -> float | None:
    """Mean segment confidence weighted by duration (plain mean if all are instants);
    None for a ticket without segments."""
    segments = ticket.transcript.segments
    if not segments:
        return None
    weights = [max(0.0, seg.end - seg.start) for seg in segments]
    total = sum(weights)
    if total <= 0:
        return round(sum(seg.confidence for seg in segments) / len(segments), 4)
    weighted = sum(seg.confidence * w for seg, w in zip(segments, weights, strict=True))
    return round(weighted / total, 4)


def _segment_rows(ticket: Ticket) -> list[SegmentRow]:
    return [
        SegmentRow(ticket_id=ticket.id, idx=i, start=seg.start, end=seg.end,
                   channel=seg.channel, speaker=seg.speaker, text=seg.text,
                   confidence=seg.confidence, avg_logprob=seg.avg_logprob,
                   no_speech_prob=seg.no_speech_prob, flags=list(seg.flags))
        for i, seg in enumerate(ticket.transcript.segments)
    ]


# the 重复件 / 一类事 tables build on Base: imported here so that Base.metadata is whole
# (the migrations test compares it with the database)
from pipeline import store_clusters as _store_clusters  # noqa: E402, F401
