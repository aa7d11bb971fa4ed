"""Prometheus metrics, read from the database and Redis at scrape time.

The figures are facts about the shared stores, not about one API process,
so they are computed when ``/metrics`` is scraped (a custom collector)
instead of being counted in memory: several API replicas report the same
numbers, and a restart loses nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import timedelta

from prometheus_client.core import (
    CollectorRegistry,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from core.db.models import Candidate, CandidateStatus, Job, JobStatus, utcnow
from core.db.session import session_factory
from core.errors import QueueUnavailable
from core.queue import queue_depths, redis_from_url
from core.settings import Settings
from service.stall import stalls

# Trial durations range from a tenth of a second (adaptive BN on a small net) to an hour.
BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
RATE_WINDOW_S = 60


class StoreCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = redis_from_url(settings.redis_url)

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        depth = GaugeMetricFamily(
            "prunesearch_queue_depth", "Tasks waiting in each RQ queue.", labels=["queue"]
        )
        try:
            for name, count in queue_depths(self.redis).items():
                depth.add_metric([name], count)
        except QueueUnavailable:
            pass  # no samples: /readyz says why
        yield depth

    def _database(self) -> Iterator[Metric]:
        with session_factory(self.settings.database_url)() as s:
            by_state = dict(s.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            since = utcnow() - timedelta(seconds=RATE_WINDOW_S)
            recent = s.scalar(
                select(func.count()).where(
                    Candidate.finished_at.is_not(None), Candidate.finished_at >= since
                )
            )
            durations = [
                float(t.get("total_s", 0.0))
                for t in s.scalars(
                    select(Candidate.timings).where(
                        Candidate.status.in_([CandidateStatus.complete, CandidateStatus.failed])
                    )
                )
                if t and "total_s" in t
            ]
            searching = s.scalars(select(Job).where(Job.status == JobStatus.searching)).all()
            stalled = len(stalls(s, searching, self.settings))
        jobs = GaugeMetricFamily("prunesearch_jobs", "Jobs in each state.", labels=["state"])
        for state in JobStatus:
            jobs.add_metric([state.value], by_state.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "prunesearch_jobs_stalled",
            "Searching jobs with no finished trial for max(stall_floor_s, stall_factor x "
            "their median trial time).",
            value=stalled,
        )
        yield GaugeMetricFamily(
            "prunesearch_trials_per_second",
            f"Trials finished per second over the last {RATE_WINDOW_S} s.",
            value=(recent or 0) / RATE_WINDOW_S,
        )
        counts = [sum(d <= b for d in durations) for b in BUCKETS]
        yield HistogramMetricFamily(
            "prunesearch_trial_duration_seconds",
            "Wall time of scored trials (complete or failed), from their own timings.",
            buckets=[(str(b), c) for b, c in zip(BUCKETS, counts, strict=True)]
            + [("+Inf", len(durations))],
            sum_value=sum(durations),
        )


@functools.cache
def _registry(settings_json: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StoreCollector(Settings.model_validate_json(settings_json)))
    return registry


def registry(settings: Settings) -> CollectorRegistry:
    """The registry of one configuration (one per process and settings)."""
    return _registry(settings.model_dump_json())
