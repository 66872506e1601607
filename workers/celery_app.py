"""The Celery app: `minyin worker` runs it, the API (distributed mode) enqueues into it.

Tasks carry job ids, never audio: the original is in the blob store, the job in the
database, so a message lost with a restarted Redis costs nothing that the
dispatcher's sweep (`workers.runtime`) cannot hand over again.

Delivery rules:
- ``acks_late`` + ``reject_on_worker_lost``: a message is acknowledged only after the
  job ended; a pool process killed mid-job sends its message back at once, marked
  redelivered, and the next run takes the job over (`run_job(force=True)`).
- ``worker_prefetch_multiplier=1``: a busy worker holds no second voice note that an
  idle one could run.
- Queues ``voice`` and ``batch`` with kombu's ``queue_order_strategy=priority``: a
  worker always takes a waiting voice note before the next hotline file, so bulk work
  never starves voice notes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import worker_process_init, worker_process_shutdown
from kombu import Exchange, Queue

from pipeline.config import Settings, get_settings
from pipeline.jobs import JobContext, run_job

log = logging.getLogger(__name__)

TASK_NAME = "minyin.transcribe"
QUEUES = ("voice", "batch")  # in priority order
WORKER_BEAT_S = 10


def beat_key(settings: Settings, name: str = "") -> str:
    return f"{settings.redis_prefix}:worker:{name}"


def make_celery(settings: Settings) -> Celery:
    app = Celery("minyin", broker=settings.redis_url or "memory://", set_as_current=False)
    app.conf.update(
        task_queues=[Queue(q, Exchange(q), routing_key=q) for q in QUEUES],
        task_default_queue="voice",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # status and results live in the store
        task_serializer="json",
        accept_content=["json"],
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options={
            "global_keyprefix": f"{settings.redis_prefix}:",
            "queue_order_strategy": "priority",
            "visibility_timeout": settings.broker_visibility_timeout,
            "socket_timeout": 10,
            "socket_connect_timeout": 3,
        },
        # the API publishes while a client waits: fail fast, the sweep hands over later
        task_publish_retry=False,
    )
    return app


settings = get_settings()
app = make_celery(settings)

_ctx: JobContext | None = None
_beat_stop = threading.Event()


def context() -> JobContext:
    """This process's job context; the model is loaded once, on first use."""
    global _ctx
    if _ctx is None:
        _ctx = JobContext.from_settings(settings)
    return _ctx


def _beat(ctx: JobContext) -> None:
    """Tell the API (readyz) that a worker with a loaded model is alive."""
    client = redis.Redis.from_url(settings.redis_url or "", socket_timeout=5)
    key = beat_key(settings, f"{socket.gethostname()}:{os.getpid()}")
    info = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "model": ctx.pipeline.model_ref.name, "device": settings.device,
                       "compute_type": settings.compute_type})
    while True:
        # Redis away: the broker connection logs it; beat again later
        with contextlib.suppress(redis.RedisError):
            client.set(key, info, ex=WORKER_BEAT_S * 3)
        if _beat_stop.wait(WORKER_BEAT_S):
            break
    with contextlib.suppress(redis.RedisError):
        client.delete(key)


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    ctx = context()
    ctx.pipeline.transcriber  # noqa: B018 - load the model before the first task
    threading.Thread(target=_beat, args=(ctx,), name="minyin-beat", daemon=True).start()
    log.info("worker process %d ready: model %s on %s", os.getpid(),
             ctx.pipeline.model_ref.name, settings.device)


@worker_process_shutdown.connect
def _stop_beat(**_: Any) -> None:
    _beat_stop.set()


def _backoff(retries: int) -> float:
    return min(300.0, 5.0 * 2 ** retries)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
          max_retries=None)
def transcribe(self: Task, job_id: str) -> dict[str, Any]:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    run = run_job(context(), job_id, force=redelivered)
    if run.outcome == "retry":
        # the job is queued again in the store; run_job fails it after job_max_attempts
        raise self.retry(countdown=_backoff(self.request.retries))
    if run.outcome == "busy" and self.request.retries < 5:
        # a worker with a fresh heartbeat holds it; look again once its lease could lapse
        raise self.retry(countdown=settings.job_lease_seconds)
    return {"job_id": run.job_id, "outcome": run.outcome, "ticket_id": run.ticket_id}
