"""Metrics read from the store (and broker) at scrape time.

They hold for the whole deployment, whichever worker host did the work: jobs by
state and queue, queue depth, audio and processing seconds in total, the real-time
factor, the outbox backlog. Per-job histograms of the process that ran the job are in
`pipeline.metrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline.store import JOB_QUEUES, JOB_STATUSES, Store

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    def __init__(self, store: Store, dispatcher: Any) -> None:
        self.store = store
        self.dispatcher = dispatcher

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("minyin_store_up", "1 if the store answered this scrape")
        try:
            stats = self.store.job_stats()
        except Exception:
            log.warning("metrics: store unreachable", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("minyin_jobs", "Jobs by state and queue",
                                 labels=["status", "queue"])
        for status in JOB_STATUSES:
            for queue in JOB_QUEUES:
                jobs.add_metric([status, queue], stats.counts.get((status, queue), 0))
        yield jobs
        depth = GaugeMetricFamily("minyin_queue_depth",
                                  "Jobs waiting: queued in the store (source=store), "
                                  "messages in the broker (source=broker)",
                                  labels=["queue", "source"])
        for queue in JOB_QUEUES:
            depth.add_metric([queue, "store"], stats.counts.get(("queued", queue), 0))
        try:
            for queue, n in self.dispatcher.queue_depths().items():
                depth.add_metric([queue, "broker"], n)
        except Exception:
            log.warning("metrics: broker unreachable")
        yield depth
        audio = CounterMetricFamily("minyin_audio_seconds", "Audio transcribed (done jobs)")
        audio.add_metric([], stats.audio_seconds)
        yield audio
        processing = CounterMetricFamily("minyin_processing_seconds",
                                         "Worker time spent on done jobs")
        processing.add_metric([], stats.processing_seconds)
        yield processing
        rtf = GaugeMetricFamily("minyin_realtime_factor",
                                "Processing seconds per audio second over all done jobs")
        rtf.add_metric([], stats.processing_seconds / stats.audio_seconds
                       if stats.audio_seconds else 0.0)
        yield rtf
        outbox = GaugeMetricFamily("minyin_outbox_events", "Ticket events not yet published",
                                   labels=["state"])
        outbox.add_metric(["pending"], stats.outbox_pending)
        outbox.add_metric(["parked"], stats.outbox_parked)
        yield outbox
