"""Prometheus metrics built from the components' ``statistics()`` snapshots.

Every long-lived object in Ballast exposes ``statistics()`` returning a frozen dataclass; this
module turns those snapshots into Prometheus samples at scrape time, so counters are never
duplicated in two places. Each node has its own registry (several nodes may share a process
under ``ballast up``), labelled with the node id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
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


@dataclasses.dataclass(frozen=True)
class LabelledCounter:
    """A counter with labels beyond ``node``, read from a mapping at scrape time.

    Attributes:
        name: the family name without ``_total`` (``ballast_s3_operation_requests``).
        documentation: the HELP text.
        labels: the label names, in the order of the mapping's key tuples.
        values: returns ``{(label values...): count}``.
    """

    name: str
    documentation: str
    labels: tuple[str, ...]
    values: Callable[[], Mapping[tuple[str, ...], float]]


class LabelledCountersCollector(Collector):
    """Exposes :class:`LabelledCounter` families, each sample also labelled with the node."""

    def __init__(self, node_id: str, counters: Iterable[LabelledCounter]) -> None:
        self._node_id = node_id
        self._counters = list(counters)

    def collect(self) -> Iterator[Metric]:
        """Read every counter's mapping afresh (called at each scrape)."""
        for counter in self._counters:
            family = CounterMetricFamily(
                counter.name, counter.documentation, labels=["node", *counter.labels]
            )
            for label_values, value in sorted(counter.values().items()):
                family.add_metric([self._node_id, *label_values], float(value))
            yield family


def node_registry(
    node_id: str,
    sources: Iterable[tuple[str, Callable[[], object]]],
    counters: Iterable[LabelledCounter] = (),
) -> CollectorRegistry:
    """Build a registry exporting ``sources`` (pairs of component name and snapshot getter)
    and, optionally, labelled ``counters``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatisticsCollector(node_id, sources))
    counters = list(counters)
    if counters:
        registry.register(LabelledCountersCollector(node_id, counters))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """Render a registry in the Prometheus text exposition format."""
    return generate_latest(registry)
