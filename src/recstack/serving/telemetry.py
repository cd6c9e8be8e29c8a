"""recstack's Prometheus metrics (besides BentoML's own): stage latency, served paths, fallbacks, cache.

Metrics are created on first use, not at import: BentoML workers set ``PROMETHEUS_MULTIPROC_DIR`` after
the service module is imported, and a ``prometheus_client`` metric created before that would never reach
the ``/metrics`` endpoint.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

# Per-stage latency buckets (seconds): sub-millisecond ANN searches up to budget overruns.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Metrics:
    stage_seconds: Any  # Histogram{stage}
    served: Any  # Counter{surface, path}
    fallbacks: Any  # Counter{reason}
    cache: Any  # Counter{result}
    cache_hit_ratio: Any  # Gauge
    feedback: Any  # Counter{event_type}
    rejected: Any  # Counter{endpoint, field}
    batch_size: Any  # Histogram{stage}


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """The process's metric objects (created once)."""
    global _metrics
    with _lock:
        if _metrics is None:
            import prometheus_client as pc

            _metrics = Metrics(
                stage_seconds=pc.Histogram(
                    "recstack_stage_seconds",
                    "Time spent per funnel stage",
                    ["stage"],
                    buckets=LATENCY_BUCKETS,
                ),
                served=pc.Counter(
                    "recstack_served", "Responses by surface and serving path", ["surface", "path"]
                ),
                fallbacks=pc.Counter("recstack_fallbacks", "Fallbacks taken, by reason", ["reason"]),
                cache=pc.Counter("recstack_cache_requests", "Result-cache lookups", ["result"]),
                cache_hit_ratio=pc.Gauge(
                    "recstack_cache_hit_ratio",
                    "Result-cache hit ratio of this worker",
                    multiprocess_mode="mostrecent",
                ),
                feedback=pc.Counter("recstack_feedback_events", "Feedback events accepted", ["event_type"]),
                rejected=pc.Counter(
                    "recstack_rejected_requests", "Requests refused with a 4xx", ["endpoint", "field"]
                ),
                batch_size=pc.Histogram(
                    "recstack_batch_size",
                    "Requests per model batch (the stage lanes batch concurrent requests)",
                    ["stage"],
                    buckets=BATCH_BUCKETS,
                ),
            )
        return _metrics
