"""The one settings object. Nothing else in minyin reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MINYIN_", extra="ignore")

    # --- model ---
    model: str = Field(
        "whisper-base",
        description="'whisper-base' (bundled), a local CTranslate2 directory, "
        "or a faster-whisper model name",
    )
    models_dir: Path = REPO_ROOT / "models"
    device: str = "cpu"  # cpu | cuda | auto
    # float32 on CPU, measured again with the LM on (bench/accuracy.py, README): int8 is
    # 25-45% faster at the same total errors over four sets (260 vs 256 of 2,471
    # characters), but worse on the complaint notes (samples/ 9.8% vs 7.9%, shared
    # audio 13.9% vs 12.3%) and better on read sentences (9.2% vs 10.8%); complaint
    # notes are what tickets are made of. float16 or int8_float16 on a GPU.
    compute_type: str = "float32"
    cpu_threads: int = 0  # 0: all cores
    # windows decoded together; 4 on CPU keeps the encoder's attention buffers ~300 MB
    # smaller than 8 at the same speed; raise it on a GPU
    batch_size: int = 4
    beam_size: int = 5
    language: str = "zh"
    dialect: str = "mandarin"
    # the deployment's dialect profiles (names or YAML paths, comma-separated): speech
    # detected as one of their varieties gets a second pass with that profile unless
    # the upload named a profile; empty: every upload uses its named or default profile
    dialect_profiles: str = ""
    # the deployment's region, e.g. 浙江省金华市浦江县: its towns, villages and
    # communities join the gazetteer, and its default dialect profile is used when an
    # upload names none (unset: no region names, `dialect` as the default)
    region: str | None = None
    # the character language model for n-best rescoring and phonetic correction: a
    # directory under models_dir/lm (or a path); "none" turns both off. The registry's
    # current LM (minyin lm promote) takes precedence.
    lm: str = "default"

    # --- audio ---
    max_audio_seconds: float = 3600.0
    max_upload_bytes: int = 100 * 1024 * 1024
    # Denoise only when the estimated SNR is below this (dB), and gently. Measured with
    # bench/denoise_threshold.py: spectral gating gains Whisper ~1 CER point only in very
    # heavy street noise and costs points elsewhere (at strength 0.8 it hurt everywhere;
    # on the real far-field meeting clip, estimated 8.7 dB, it cost 3-10 chars of 58).
    denoise_below_snr_db: float = 8.0
    denoise_strength: float = 0.5
    vad_aggressiveness: int = 2
    max_window_seconds: float = 30.0
    # speech regions closer than this may share one Whisper window (pauses left out)
    merge_gap_seconds: float = 2.0

    # --- ticket review ---
    review_confidence_below: float = 0.45

    # --- ticket categories ---
    # the county's own departments, time limits and keywords per category code
    # (see pipeline/data/county.example.yaml); None: the shipped taxonomy as it is
    county_file: Path | None = None
    # the category classifier: a directory under models_dir/classifier (or a path);
    # the registry's current one (minyin tickets promote) takes precedence
    classifier: str = "default"
    # the dialect detector (variety and readability of each window): a directory under
    # models_dir/detector (or a path), "rules" for the untrained default; "default" is
    # the registry's current one (minyin dialect promote), else the rules
    detector: str = "default"

    # --- storage ---
    data_dir: Path = REPO_ROOT / "var"  # originals (content-addressed), SQLite, JSONL sink
    # SQLAlchemy URL; None: SQLite at data_dir/minyin.db. PostgreSQL in production,
    # e.g. postgresql+psycopg://user@host/db
    database_url: str | None = None

    # --- distributed mode and the complaint queue ---
    redis_url: str | None = None  # set: Celery broker + Redis stream sink; unset: embedded
    stream_name: str | None = None  # None: "<redis_prefix>:tickets"
    stream_maxlen: int = 100_000  # approximate trim, so a stalled consumer cannot fill Redis
    webhook_url: str | None = None
    webhook_secret: str | None = None  # HMAC-SHA256 key for the signature header
    # a sink that refused an event: wait this long, doubling per attempt (max 1 hour)
    outbox_retry_base_seconds: float = 5.0
    jsonl_path: Path | None = None  # None: data_dir/tickets.jsonl (the embedded sink)
    # prefix of every Redis key minyin makes (Celery queues, worker beats, rate limits),
    # so several deployments or test runs can share one Redis
    redis_prefix: str = "minyin"
    # a broker message not acknowledged within this many seconds is delivered again
    # (its worker is taken for dead); keep it above the longest job you expect
    broker_visibility_timeout: int = 3600

    # --- jobs and workers ---
    # a running job's worker beats every job_lease_seconds / 4; a job that missed its
    # beats this long belongs to a dead worker and is taken over
    job_lease_seconds: float = 60.0
    job_max_attempts: int = 4  # transient failures (worker death, errors) before "failed"
    # same audio from the same submitter within this many minutes: the same job
    dedup_window_minutes: float = 10.0
    embedded_workers: int = 1  # in-process job threads when redis_url is unset
    worker_concurrency: int = 1  # Celery worker processes per `minyin worker` (model each)

    # --- API ---
    # per key, in `limits` notation ("60/minute", "10/second;500/hour"); reads include
    # status polling, so a phone back end with many notes in flight needs room
    rate_limit: str = "600/minute"
    upload_rate_limit: str = "30/minute"
    # sign-in attempts to the review page, per username and per client address
    login_rate_limit: str = "10/minute"
    # a signed-in browser stays signed in this long (a working day)
    session_hours: float = 12.0
    # the session cookie's Secure flag; None: set when the request came over https
    # (behind a TLS proxy, run uvicorn with --proxy-headers or set this true)
    cookie_secure: bool | None = None

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'minyin.db'}"

    @property
    def ticket_stream(self) -> str:
        return self.stream_name or f"{self.redis_prefix}:tickets"

    @property
    def tickets_jsonl(self) -> Path:
        return self.jsonl_path or self.data_dir / "tickets.jsonl"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
