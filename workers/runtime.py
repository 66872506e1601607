"""How accepted jobs reach a worker, in both ways minyin runs.

- `EmbeddedExecutor` (no ``MINYIN_REDIS_URL``): threads in the API process take queued
  jobs straight from the store, voice before batch, and run them. The store is the queue.
- `CeleryDispatcher` (``MINYIN_REDIS_URL`` set): the API publishes a Celery task per
  job; `minyin worker` processes run them.

Either way the store is the truth and the broker only a hint: `sweep()` (run every few
seconds by `Maintenance`) puts jobs of dead workers back in the queue and hands the
broker every queued job it may have lost (never handed over because Redis was down at
upload, or dropped by a Redis restart). A job handed over twice runs once: the claim
in the store decides.

`Maintenance` also runs the outbox relay: finished tickets to the complaint queue.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Protocol

import redis

from pipeline.config import Settings
from pipeline.jobs import JobContext, run_job
from pipeline.outbox import StoreOutbox
from pipeline.sinks import TicketSink, relay_forever, sinks_from_settings
from pipeline.store import Job, Store, utcnow

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def submit(self, job: Job) -> bool:
        """Hand a new job to the workers now; False if that has to wait for the sweep."""
        ...

    def sweep(self) -> None: ...

    def readiness(self) -> dict[str, object]:
        """{"ready": bool, ...details} for /readyz."""
        ...

    def queue_depths(self) -> dict[str, int]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


class EmbeddedExecutor:
    """In-process job threads. One thread by default: CTranslate2 already uses every
    core for one job, so more threads only interleave jobs."""

    def __init__(self, ctx: JobContext, threads: int | None = None) -> None:
        self.ctx = ctx
        self.threads = threads or ctx.settings.embedded_workers
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self.model_loaded = threading.Event()
        self.model_error: str | None = None

    def start(self) -> None:
        threading.Thread(target=self._load, name="minyin-model-load", daemon=True).start()
        for i in range(self.threads):
            t = threading.Thread(target=self._loop, name=f"minyin-job-{i}", daemon=True)
            t.start()
            self._workers.append(t)

    def _load(self) -> None:
        try:
            self.ctx.pipeline.transcriber  # noqa: B018 - load once, before the first job
        except Exception as e:  # readyz reports it; jobs wait
            self.model_error = f"{type(e).__name__}: {e}"
            log.exception("model failed to load")
            return
        self.model_loaded.set()
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._workers:
            t.join(timeout=5)

    def submit(self, job: Job) -> bool:
        self._wake.set()
        return True

    def _loop(self) -> None:
        store = self.ctx.store
        failures = 0
        while not self._stop.is_set():
            if not self.model_loaded.is_set():
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                job_id = store.next_queued_job()
                if job_id is None:
                    self._wake.wait(1.0)
                    self._wake.clear()
                    continue
                run = run_job(self.ctx, job_id)
                failures = failures + 1 if run.outcome == "retry" else 0
            except Exception:  # the store is away: keep the thread, back off
                log.exception("embedded worker loop")
                failures += 1
            if failures:
                self._stop.wait(min(30.0, 0.5 * 2 ** failures))

    def sweep(self) -> None:
        if self.ctx.store.requeue_stale_running(self.ctx.settings.job_lease_seconds):
            self._wake.set()

    def readiness(self) -> dict[str, object]:
        return {"ready": self.model_loaded.is_set(), "mode": "embedded",
                "model_loaded": self.model_loaded.is_set(), "model_error": self.model_error}

    def queue_depths(self) -> dict[str, int]:
        return {}  # the store's queued counts are the queue


class CeleryDispatcher:
    """Publishes Celery tasks; knows the broker well enough to re-dispatch after loss."""

    # a job handed over this long ago and still queued while the broker's queues are
    # empty was lost (or is waiting for a retry countdown: running it twice is harmless)
    LOST_AFTER_S = 30.0

    def __init__(self, settings: Settings, store: Store) -> None:
        from workers.celery_app import QUEUES, make_celery

        self.settings = settings
        self.store = store
        self.app = make_celery(settings)
        self.queues = QUEUES
        self.redis = redis.Redis.from_url(settings.redis_url or "", socket_timeout=3,
                                          socket_connect_timeout=3)
        self._run_id: str | None = None

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.redis.close()

    def _publish(self, job: Job) -> None:
        from workers.celery_app import TASK_NAME

        self.app.send_task(TASK_NAME, args=[job.id], queue=job.queue, routing_key=job.queue,
                           retry=False)

    def submit(self, job: Job) -> bool:
        try:
            self._publish(job)
        except Exception as e:  # broker away: the job is stored; the sweep hands it over
            log.warning("could not enqueue %s now (%s); the sweep will", job.id, e)
            return False
        self.store.mark_enqueued([job.id])
        return True

    def _broker_state(self) -> tuple[str, int]:
        run_id = str(self.redis.info("server").get("run_id", ""))
        depth = sum(self.queue_depths().values())
        return run_id, depth

    def sweep(self) -> None:
        lease = self.settings.job_lease_seconds
        revived = self.store.requeue_stale_running(lease)
        if revived:
            log.warning("jobs of dead workers back in the queue: %s", revived)
        try:
            run_id, depth = self._broker_state()
        except redis.RedisError:
            return  # broker away; jobs stay queued in the store
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            before = utcnow()  # every queued job's message may have died with it
            log.warning("Redis restarted; re-dispatching queued jobs")
        elif depth == 0:
            before = utcnow() - timedelta(seconds=self.LOST_AFTER_S)
        else:
            before = None
        jobs = self.store.jobs_to_enqueue(enqueued_before=before)
        sent: list[str] = []
        for job in jobs:
            try:
                self._publish(job)
            except Exception as e:
                log.warning("re-dispatch stopped: %s", e)
                break
            sent.append(job.id)
        self.store.mark_enqueued(sent)

    def queue_depths(self) -> dict[str, int]:
        prefix = self.settings.redis_prefix
        pipe = self.redis.pipeline()
        for q in self.queues:
            pipe.llen(f"{prefix}:{q}")
        return dict(zip(self.queues, (int(n) for n in pipe.execute()), strict=True))

    def workers(self) -> list[str]:
        from workers.celery_app import beat_key

        return [k.decode() if isinstance(k, bytes) else k
                for k in self.redis.scan_iter(match=beat_key(self.settings) + "*", count=100)]

    def readiness(self) -> dict[str, object]:
        try:
            self.redis.ping()
            workers = self.workers()
        except redis.RedisError as e:
            return {"ready": False, "mode": "distributed", "broker": f"unreachable: {e}"}
        return {"ready": bool(workers), "mode": "distributed", "broker": "ok",
                "workers": len(workers)}


def make_dispatcher(settings: Settings, ctx: JobContext | None = None,
                    store: Store | None = None) -> Dispatcher:
    if settings.redis_url:
        return CeleryDispatcher(settings, store or (ctx.store if ctx else
                                                    Store.from_settings(settings)))
    if ctx is None:
        ctx = JobContext.from_settings(settings)
    return EmbeddedExecutor(ctx)


class Maintenance:
    """Background threads of a serving process: the outbox relay and the job sweep."""

    def __init__(self, settings: Settings, store: Store, dispatcher: Dispatcher, *,
                 relay: bool = True, sweep_every_s: float = 5.0,
                 sinks: list[TicketSink] | None = None) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = dispatcher
        self.sweep_every_s = sweep_every_s
        self.sinks = sinks if sinks is not None else (sinks_from_settings(settings)
                                                      if relay else [])
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_relay_error: str | None = None

    def start(self) -> None:
        self._threads.append(threading.Thread(target=self._sweep_loop, name="minyin-sweep",
                                              daemon=True))
        if self.sinks:
            self._threads.append(threading.Thread(target=self._relay_loop,
                                                  name="minyin-relay", daemon=True))
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close is not None:
                close()

    def _sweep_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.dispatcher.sweep()
            except Exception:
                log.exception("sweep")
            self._stop.wait(self.sweep_every_s)

    def _relay_loop(self) -> None:
        outbox = StoreOutbox(self.store,
                             retry_base_s=self.settings.outbox_retry_base_seconds)
        while not self._stop.is_set():
            try:
                relay_forever(outbox, self.sinks, self._stop, idle_s=0.5)
            except Exception as e:  # the store is away: wait and go on
                self.last_relay_error = f"{type(e).__name__}: {e}"
                log.exception("relay")
                self._stop.wait(2.0)
