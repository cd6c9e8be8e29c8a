"""Process settings shared by recstack's BentoML service and the benchmark's floor service.

Both read the same environment, so a benchmark compares the two under identical worker settings:
``RECSTACK_WORKERS`` (worker processes, default one per core) and ``RECSTACK_THREADS`` (threads of one
worker for blocking endpoints, default 8; ``/recommend`` is a coroutine and needs none).
"""

from __future__ import annotations

import os
from typing import Any


def spread_connections() -> None:
    """Make workers sharing one listening socket take turns accepting connections.

    libuv (uvloop, under uvicorn) otherwise accepts every pending connection in one go, so the first
    worker to wake takes all the keep-alive connections and the others idle: measured here, the second of
    two workers served no request at all at concurrency 8 (BentoML issue #5426). One accept per wake-up
    spreads them. libuv reads the variable when a worker starts listening, after the service module is
    imported, so calling this at import time is enough.
    """
    os.environ.setdefault("UV_TCP_SINGLE_ACCEPT", "1")


def service_settings() -> dict[str, Any]:
    """Keyword arguments for ``@bentoml.service``: workers, threads and the request timeout."""
    # One worker process per core by default: the funnel is mostly GIL-bound Python and numpy, so one
    # process serializes concurrent requests onto one core.
    workers = os.environ.get("RECSTACK_WORKERS", "cpu_count")
    return {
        "workers": workers if workers == "cpu_count" else int(workers),
        "threads": int(os.environ.get("RECSTACK_THREADS", "8")),
        "traffic": {"timeout": 30},
    }
