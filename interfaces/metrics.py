"""Prometheus metrics built from the components' ``statistics()`` snapshots.

Every long-lived object in Ballast exposes ``statistics()`` returning a frozen dataclass; this
module turns those snapshots into Prometheus samples at scrape time, so counters are never
duplicated in two places. Each node has its own registry (several nodes may share a process
under ``ballast up``), labelled with the node id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


def flatten(snapshot: object, prefix: str = "") -> Iterator[tuple[str, float]]:
    """Yield ``(name, value)`` for every numeric field of a (nested) statistics dataclass."""
    if not dataclasses.is_dataclass(snapshot) or isinstance(snapshot, type):
        return
    for field in dataclasses.fields(snapshot):
        value: Any = getattr(snapshot, field.name)
        name = f"{prefix}{field.name}"
        if isinstance(value, int | float):  # bool is an int: exported as 0/1
            yield name, float(value)
        elif dataclasses.is_dataclass(value):
            yield from flatten(value, f"{name}_")


class StatisticsCollector(Collector):
    """Exposes the numeric fields of several components' statistics as gauges."""

    def __init__(self, node_id: str, sources: Iterable[tuple[str, Callable[[], object]]]) -> None:
        self._node_id = node_id
        self._sources = list(sources)

    def collect(self) -> Iterator[Metric]:
        """Take a fresh snapshot of every source (called at each scrape)."""
        for component, snapshot in self._sources:
            for name, value in flatten(snapshot()):
                family = GaugeMetricFamily(
                    f"ballast_{component}_{name}",
                    f"{component} statistic {name}",
                    labels=["node"],
                )
                family.add_metric([self._node_id], value)
                yield family


def node_registry(
    node_id: str, sources: Iterable[tuple[str, Callable[[], object]]]
) -> CollectorRegistry:
    """Build a registry exporting ``sources`` (pairs of component name and snapshot getter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatisticsCollector(node_id, sources))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Render a registry in the Prometheus text exposition format."""
    return generate_latest(registry)
