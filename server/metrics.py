"""Prometheus metrics of one app instance, in its own ``CollectorRegistry`` (no process globals: two apps in one
test process, or a Ray replica next to the ingress, never share or clash).

Label cardinality is bounded on purpose: the HTTP metrics use the route *template* (``/adapters/{task}``), never
the raw path, and the per-task metrics use the task name only once it resolved to a published adapter (a flood of
made-up names cannot create series).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from server.predictor import Predictor
    from vpetl.petl.bank import AdapterBank

__all__ = ["CONTENT_TYPE_LATEST", "Metrics", "UNRESOLVED_TASK"]

UNRESOLVED_TASK = "-"  # task label of requests whose task did not resolve (invalid or unknown name)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class _AdapterCacheCollector(Collector):
    """Reads the bank's cache counters at scrape time (the cache keeps them; copying would drift)."""

    def __init__(self, bank: AdapterBank) -> None:
        self.bank = bank

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self.bank.cache.stats
        for name, value, doc in (
            ("hits", stats.hits, "adapter cache lookups that found the adapter"),
            ("misses", stats.misses, "adapter cache lookups that did not"),
            ("loads", stats.loads, "adapters decoded into the cache"),
            ("evictions", stats.evictions, "adapters dropped from the cache (budget or stale version)"),
        ):
            yield CounterMetricFamily(f"vpetl_adapter_cache_{name}", doc, value=value)
        cache = self.bank.cache
        yield GaugeMetricFamily("vpetl_adapter_cache_entries", "adapters resident in the cache", value=len(cache))
        yield GaugeMetricFamily("vpetl_adapter_cache_bytes", "bytes of resident adapters", value=cache.resident_bytes)
        yield GaugeMetricFamily("vpetl_adapter_cache_budget_bytes", "cache byte budget", value=cache.budget_bytes)


class _ReplicaCollector(Collector):
    """Per-replica gauges from stats dicts gathered at scrape time."""

    def __init__(self, replicas: list[dict[str, Any]]) -> None:
        self.replicas = replicas

    def collect(self) -> Iterator[GaugeMetricFamily]:
        series = {
            "queue_depth": ("clips waiting in the replica's micro-batcher", lambda r: r.get("queue_depth", 0)),
            "batches": ("model batches the replica ran", lambda r: r.get("batches", 0)),
            "cache_hits": ("adapter cache hits", lambda r: r.get("cache", {}).get("hits", 0)),
            "cache_misses": ("adapter cache misses", lambda r: r.get("cache", {}).get("misses", 0)),
            "cache_loads": ("adapters decoded into the cache", lambda r: r.get("cache", {}).get("loads", 0)),
            "cache_entries": ("adapters resident", lambda r: r.get("cache", {}).get("entries", 0)),
            "cache_bytes": ("bytes of resident adapters", lambda r: r.get("cache", {}).get("bytes", 0)),
            "fallbacks": ("tasks served from an older version: their current one does not load here",
                          lambda r: len(r.get("load_failures") or {})),
        }
        for name, (doc, value) in series.items():
            family = GaugeMetricFamily(f"vpetl_replica_{name}", doc, labels=["replica", "node"])
            for r in self.replicas:
                family.add_metric([str(r.get("replica", "local")), str(r.get("node", ""))], float(value(r)))
            yield family


class Metrics:
    """The app's metrics. ``bind`` connects the predictor-side gauges once the predictor exists."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "vpetl_http_requests", "HTTP requests by route template, method and status", ["route", "method", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "vpetl_http_request_duration_seconds", "HTTP request latency by route template and method",
            ["route", "method"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.predictions = Counter(
            "vpetl_predictions", "POST /predict requests by task and HTTP status", ["task", "status"], registry=r
        )
        self.predict_seconds = Histogram(
            "vpetl_predict_duration_seconds", "POST /predict latency by task and HTTP status", ["task", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram("vpetl_batch_size", "clips per model batch", buckets=BATCH_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "vpetl_queue_wait_seconds", "time a clip waited for its batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("vpetl_queue_depth", "clips waiting in the micro-batcher queue", registry=r)
        self.adapter_load_seconds = Histogram(
            "vpetl_adapter_load_seconds", "time to fetch, validate and decode an adapter on a cache miss",
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def bind(self, predictor: Predictor, bank: AdapterBank) -> None:
        """Gauges that read live state at scrape time."""
        self.queue_depth.set_function(lambda: predictor.batcher.queue_depth)
        self.registry.register(_AdapterCacheCollector(bank))

    # ---------------------------------------------------------------------------------------- callbacks
    def on_batch(self, size: int, waits: list[float]) -> None:
        self.batch_size.observe(size)
        for wait in waits:
            self.queue_wait.observe(wait)

    def on_load(self, task: str, seconds: float) -> None:
        self.adapter_load_seconds.observe(seconds)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(route, method, str(status)).inc()
        self.http_seconds.labels(route, method).observe(seconds)

    def observe_prediction(self, task: str, status: int, seconds: float) -> None:
        self.predictions.labels(task, str(status)).inc()
        self.predict_seconds.labels(task, str(status)).observe(seconds)

    def render(self, replicas: list[dict[str, Any]] | None = None) -> bytes:
        """The Prometheus text exposition of this registry, plus one labelled series per predictor replica
        (``vpetl_replica_*``, from :meth:`Predictor.stats`) when given: what an ingress knows of its replicas."""
        text = generate_latest(self.registry)
        if replicas:
            registry = CollectorRegistry()
            registry.register(_ReplicaCollector(replicas))
            text += generate_latest(registry)
        return text
