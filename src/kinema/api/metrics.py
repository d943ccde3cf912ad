"""Prometheus metrics: tasks by state and queue depth per app (read from the store at scrape time, so every
API process reports the whole cluster), stage durations of finished tasks, and HTTP latency per route.

`kinema_queue_depth{app}` and `kinema_tasks_running{app}` are what an autoscaler watches: add workers for an
app while its queue is deep, remove them when both are zero."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kinema.apps.registry import list_apps
from kinema.domain.tasks import Task, TaskStatus
from kinema.store.tasks import TaskRepo

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class StoreCollector(Collector):
    def __init__(self) -> None:
        self.tasks: TaskRepo | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.tasks is None:
            return
        counts = self.tasks.counts_by_status()
        tasks = GaugeMetricFamily("kinema_tasks", "Tasks in the store by status.", labels=["status"])
        for status, count in sorted(counts.items()):
            tasks.add_metric([status], count)
        yield tasks
        by_app = self.tasks.counts_by_app([TaskStatus.queued, TaskStatus.running])
        apps = sorted({app.id for app in list_apps()} | {app for app, _ in by_app})
        depth = GaugeMetricFamily("kinema_queue_depth", "Tasks waiting for a worker, by app.", labels=["app"])
        running = GaugeMetricFamily(
            "kinema_tasks_running", "Tasks running on a worker, by app.", labels=["app"]
        )
        for app in apps:
            depth.add_metric([app], by_app.get((app, TaskStatus.queued.value), 0))
            running.add_metric([app], by_app.get((app, TaskStatus.running.value), 0))
        yield depth
        yield running


class Metrics:
    """One registry per server (so tests can run several servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._store_collector = StoreCollector()
        self.registry.register(self._store_collector)
        self.stage_seconds = Histogram(
            "kinema_stage_seconds",
            "Time spent in each stage of finished tasks.",
            ["app", "stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.finished = Counter(
            "kinema_tasks_finished",
            "Tasks that reached an end state.",
            ["app", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "kinema_http_request_duration_seconds",
            "HTTP request latency until the response starts.",
            ["method", "route", "status"],
            registry=self.registry,
        )

    def bind(self, tasks: TaskRepo) -> None:
        """Read task counts from this store at scrape time."""
        self._store_collector.tasks = tasks

    def task_finished(self, task: Task) -> None:
        self.finished.labels(task.app, task.status.value).inc()
        if task.output_meta is not None:
            for stage, seconds in task.output_meta.timings.items():
                if stage != "total":
                    self.stage_seconds.labels(task.app, stage).observe(seconds)


class HttpLatency:
    """ASGI middleware timing each request to its response start, labelled by route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        recorded = False

        async def timed_send(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.metrics.http_latency.labels(scope["method"], template, str(message["status"])).observe(
                    time.perf_counter() - started
                )
            await send(message)

        await self.app(scope, receive, timed_send)
