"""Distributed mode for real: `minyin serve` + `minyin worker` (Celery, prefork)
subprocesses, PostgreSQL as the store (a schema of its own), a private redis-server
per test (so it can be stopped), the Redis ticket stream read with a consumer group.

Faults: a pool process killed with SIGKILL mid-job, the whole worker killed and
replaced, Redis stopped while uploads arrive, bulk work queued ahead of a voice note.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import create_engine, func, select, text

from pipeline.config import Settings
from pipeline.jobs import accept_upload, blob_store
from pipeline.sinks import StreamConsumer
from pipeline.store import Job, Store, TicketRow
from tests.service import MINYIN, Api, PrivateRedis, Proc, make_key, service_env, wait_until
from tests.test_store import _postgres_schema_url

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
NOTE = SAMPLES / "02_gas_smell_stairwell.m4a"
CALL = SAMPLES / "07_hotline_call_manhole_8k_stereo.wav"  # the longest: 35 s, two channels
PREFIX = "mtest"


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from _postgres_schema_url()


class Deployment:
    """One API, N workers, one private Redis, one PostgreSQL schema."""

    def __init__(self, tmp: Path, pg_url: str, **extra: str) -> None:
        self.tmp = tmp
        self.redis = PrivateRedis(tmp)
        env = {"MINYIN_REDIS_URL": self.redis.url, "MINYIN_DATABASE_URL": pg_url,
               "MINYIN_REDIS_PREFIX": PREFIX, "MINYIN_JOB_LEASE_SECONDS": "8",
               "MINYIN_UPLOAD_RATE_LIMIT": "1000/minute", **extra}
        self.env = service_env(tmp / "data", **env)
        self.settings = Settings(data_dir=tmp / "data", redis_url=self.redis.url,
                                 database_url=pg_url, redis_prefix=PREFIX)
        self.store = Store.from_settings(self.settings, migrate=True)
        self.workers: list[Proc] = []
        self.api: Api | None = None
        self.key = make_key(self.env, "submitter")
        self.staff = make_key(self.env, "staff")

    def start_worker(self, *args: str) -> Proc:
        n = len(self.workers)
        proc = Proc([*MINYIN, "worker", "--name", f"w{n}@%h", "--loglevel", "INFO", *args],
                    self.env, self.tmp / f"worker{n}.log")
        self.workers.append(proc)
        return proc

    def start_api(self) -> Api:
        self.api = Api(self.env, self.tmp / "serve.log", wait_ready=False)
        return self.api

    def wait_workers(self, n: int = 1) -> None:
        assert self.api is not None

        def ready() -> bool:
            r = self.api.http.get("/readyz")  # type: ignore[union-attr]
            return r.status_code == 200 and r.json().get("workers", 0) >= n

        try:
            wait_until(ready, 120, 0.3, f"{n} worker(s) with a loaded model")
        except AssertionError:
            logs = "\n".join(w.tail() for w in self.workers)
            raise AssertionError(f"workers not ready:\n{logs}") from None

    def job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        assert job is not None
        return job

    def tickets_for(self, job_id: str) -> int:
        with self.store.session() as s:
            return int(s.scalar(select(func.count()).select_from(TicketRow)
                                .where(TicketRow.job_id == job_id)) or 0)

    def close(self) -> None:
        if self.api is not None:
            self.api.close()
        for w in self.workers:
            w.stop()
        self.redis.stop()
        self.store.dispose()

    def logs(self) -> str:
        parts = [w.tail(40) for w in self.workers]
        if self.api is not None:
            parts.append(self.api.proc.tail(40))
        return "\n---\n".join(parts)


@pytest.fixture
def deploy(tmp_path: Path, pg_url: str) -> Iterator[Deployment]:
    d = Deployment(tmp_path, pg_url)
    yield d
    d.close()


def stream_events(d: Deployment) -> list[Any]:
    client = redis.Redis.from_url(d.redis.url, decode_responses=True)
    consumer = StreamConsumer(client, d.settings.ticket_stream, "complaints", "c1")
    consumer.ensure_group()
    events = []
    while batch := consumer.read(count=100):
        for message in batch:
            events.append(message.event)
            consumer.ack(message.message_id)
    client.close()
    return events


def test_upload_is_run_by_a_worker_and_published_to_the_stream(deploy: Deployment) -> None:
    api = deploy.start_api()
    deploy.start_worker()
    deploy.wait_workers(1)
    r = api.upload(deploy.key, NOTE, phone="13900001111", client_ref="d-1")
    assert r.status_code == 202, r.text
    job = api.wait_job(deploy.key, r.json()["job_id"])
    assert job["status"] == "done", deploy.logs()
    assert deploy.job(job["job_id"]).worker.split(":")[0]  # host:pid of the worker
    ticket = api.http.get(f"/v1/tickets/{job['ticket_id']}", headers=api.auth(deploy.key))
    assert "煤气" in ticket.json()["transcript"]["text"] or "燃气" in ticket.text

    def published() -> list[Any]:
        return [e for e in stream_events(deploy) if e.ticket_id == job["ticket_id"]]

    events = wait_until(published, 30, 0.3, "the ticket on the Redis stream")
    assert events[0].event_id == f"{job['ticket_id']}:1"
    assert events[0].ticket["submitter"]["phone"] == "13900001111"  # the complaint system
    metrics = api.http.get("/metrics", headers=api.auth(deploy.staff)).text
    assert 'minyin_queue_depth{queue="voice",source="broker"} 0.0' in metrics


def test_pool_process_killed_mid_job_is_redelivered_and_finishes_once(
        deploy: Deployment) -> None:
    api = deploy.start_api()
    worker = deploy.start_worker()
    deploy.wait_workers(1)
    r = api.upload(deploy.key, CALL)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    wait_until(lambda: deploy.job(job_id).status == "running", 60, 0.05, "the job to start")
    children = worker.children()
    assert children, "a prefork worker has a pool process"
    pool_pid = int(deploy.job(job_id).worker.split(":")[1])
    assert pool_pid in {c.pid for c in children}
    import os
    import signal

    os.kill(pool_pid, signal.SIGKILL)  # the process running the model, mid-job
    job = api.wait_job(deploy.key, job_id, timeout=240)
    assert job["status"] == "done", deploy.logs()
    assert job["attempts"] >= 2
    assert deploy.tickets_for(job_id) == 1
    assert worker.alive()  # Celery replaced its pool process


def test_whole_worker_killed_then_replaced(deploy: Deployment) -> None:
    api = deploy.start_api()
    first = deploy.start_worker()
    deploy.wait_workers(1)
    r = api.upload(deploy.key, CALL)
    job_id = r.json()["job_id"]
    wait_until(lambda: deploy.job(job_id).status == "running", 60, 0.05, "the job to start")
    first.kill()  # SIGKILL to the worker and its pool: nothing acknowledges, nothing requeues
    assert deploy.job(job_id).status == "running"
    deploy.start_worker()
    # the sweep finds the job's heartbeat stale (lease 8 s) and hands it over again
    job = api.wait_job(deploy.key, job_id, timeout=240)
    assert job["status"] == "done", deploy.logs()
    assert deploy.tickets_for(job_id) == 1


def test_redis_stopped_while_uploads_arrive(tmp_path: Path, pg_url: str) -> None:
    deploy = Deployment(tmp_path, pg_url, MINYIN_OUTBOX_RETRY_BASE_SECONDS="1")
    try:
        _redis_outage(deploy)
    finally:
        deploy.close()


def _redis_outage(deploy: Deployment) -> None:
    api = deploy.start_api()
    deploy.start_worker()
    deploy.wait_workers(1)
    # a job in flight when Redis goes: it finishes into the store and its ticket waits
    # in the outbox
    running = api.upload(deploy.key, CALL).json()["job_id"]
    wait_until(lambda: deploy.job(running).status == "running", 60, 0.05, "the job to start")
    deploy.redis.stop()
    answers = [api.upload(deploy.key, path, client_ref=f"outage-{i}")
               for i, path in enumerate([NOTE, SAMPLES / "05_garbage_not_collected.wav",
                                         SAMPLES / "09_medical_insurance_question.mp3"])]
    # accepted (stored, handed to the broker later) or refused with 503; never lost
    assert {a.status_code for a in answers} <= {202, 503}, [a.text for a in answers]
    accepted = [a.json()["job_id"] for a in answers if a.status_code == 202]
    assert accepted, "the API keeps accepting while the broker is down"
    assert api.http.get("/readyz").status_code == 503
    for job_id in accepted:
        assert deploy.job(job_id).status == "queued"
    wait_until(lambda: deploy.job(running).status == "done", 240, 0.2,
               "the running job to finish without Redis")
    assert deploy.store.job_stats().outbox_pending == 1  # not published: no Redis
    deploy.redis.start()  # an empty Redis: no queue, no stream survived
    restarted = time.monotonic()
    for job_id in accepted:
        job = api.wait_job(deploy.key, job_id, timeout=240)
        assert job["status"] == "done", deploy.logs()
    accepted.append(running)
    client = redis.Redis.from_url(deploy.redis.url, decode_responses=True)

    def all_published() -> bool:
        entries = client.xrange(deploy.settings.ticket_stream)
        ids = {json.loads(fields["body"])["ticket_id"] for _, fields in entries}
        return {deploy.job(j).ticket_id for j in accepted} <= ids

    wait_until(all_published, 90, 0.5, "the outbox to drain into the restarted Redis")
    print(f"all {len(accepted)} published {time.monotonic() - restarted:.1f} s after "
          "Redis came back")
    assert deploy.tickets_for(running) == 1
    client.close()


def test_voice_notes_go_before_queued_bulk_work(deploy: Deployment, tmp_path: Path) -> None:
    """Three hotline files wait in `batch`; a voice note arriving after them runs next."""
    api = deploy.start_api()
    blobs = blob_store(deploy.settings)
    batch_ids = []
    for i in range(3):
        accepted = accept_upload(deploy.store, blobs, deploy.settings, CALL,
                                 filename=f"call-{i}.wav", client_ref=f"b-{i}", queue="batch")
        batch_ids.append(accepted.job.id)
    # handed to the broker by the API's sweep (no worker is running yet)
    wait_until(lambda: all(deploy.job(j).enqueued_at for j in batch_ids), 30, 0.2,
               "the batch jobs to be enqueued")
    r = api.upload(deploy.key, NOTE)
    voice_id = r.json()["job_id"]
    deploy.start_worker()
    job = api.wait_job(deploy.key, voice_id, timeout=240)
    assert job["status"] == "done"
    started = sorted([(deploy.job(j).started_at, j) for j in [*batch_ids, voice_id]
                      if deploy.job(j).started_at is not None])
    assert started[0][1] == voice_id, started


def test_worker_refuses_to_start_without_redis(tmp_path: Path) -> None:
    import subprocess

    env = service_env(tmp_path)
    out = subprocess.run([*MINYIN, "worker"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and "MINYIN_REDIS_URL" in out.stderr


def test_migrations_run_once_when_services_start_together(pg_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.store import upgrade

    engines = [create_engine(pg_url) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(upgrade, engines))
    with engines[0].connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    for e in engines:
        e.dispose()
