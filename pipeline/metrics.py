"""Prometheus metrics observed where the work happens (the process that runs a job).

Counts that must be true across every worker host (jobs by state, queue depth, audio
and processing seconds in total) are read from the store at scrape time instead
(`api.metrics`); these process-local histograms add the distributions.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

JOB_RUNS = Counter("minyin_job_runs_total", "Job runs in this process, by outcome",
                   ["queue", "outcome"])
PROCESSING_SECONDS = Histogram(
    "minyin_job_processing_seconds", "Decode to ticket, seconds per job", ["queue"],
    buckets=(0.5, 1, 2, 3, 4, 6, 8, 12, 20, 30, 60, 120, 300, 600, 1800),
)
AUDIO_SECONDS = Histogram(
    "minyin_job_audio_seconds", "Audio duration per job, seconds", ["queue"],
    buckets=(2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600),
)
REALTIME_FACTOR = Histogram(
    "minyin_job_realtime_factor", "Processing seconds per audio second, per job", ["queue"],
    buckets=(0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5),
)
