"""Prometheus metrics, rendered from :mod:`state` at scrape time.

A custom collector over a private ``CollectorRegistry``: metrics are read from the state
when Prometheus asks, so no worker has to remember to update a gauge, and tests that build
several daemons in one process never share a metric.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .state import State

PREFIX = "laterbased_"


class StateCollector(Collector):
    """Turns the daemon's state into metric families on every scrape."""

    def __init__(self, state: State) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from daemon_metrics(self.state)


def daemon_metrics(state: State) -> Iterator[Metric]:
    build = InfoMetricFamily(f"{PREFIX}build", "laterbased version and Python runtime")
    build.add_metric([], {"version": __version__, "python": platform.python_version()})
    yield build
    up = GaugeMetricFamily(f"{PREFIX}up", "1 while the daemon is running and ready")
    up.add_metric([], 1.0 if state.ready else 0.0)
    yield up
    started = GaugeMetricFamily(
        f"{PREFIX}start_time_seconds", "Unix time the daemon started"
    )
    started.add_metric([], state.started_at)
    yield started


def build_registry(state: State) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
