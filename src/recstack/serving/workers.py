"""Process settings shared by recstack's BentoML service and the benchmark's floor service.

Both read the same environment, so a benchmark compares the two under the same worker settings (the
serving benchmark sets only their CPU affinity apart, leaving the floor's placement to the OS, its faster
one here):
``RECSTACK_WORKERS`` (worker processes, default one per core), ``RECSTACK_THREADS`` (threads of one
worker for blocking endpoints, default 8; ``/recommend`` is a coroutine and needs none) and
``RECSTACK_CPU_AFFINITY`` (``auto``, the default: each worker bound to a core of its own when the workers
are exactly as many as the cores the process may use; ``worker``: whenever there are enough cores;
``none``: the OS places every thread).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

AFFINITY_ENV = "RECSTACK_CPU_AFFINITY"
AFFINITY_MODES = ("auto", "worker", "none")


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


def worker_count() -> int:
    """How many worker processes the service runs (``RECSTACK_WORKERS``, or one per core as BentoML
    counts them: a container's CPU quota, not the host's cores)."""
    workers = service_settings()["workers"]
    if workers == "cpu_count":
        from bentoml._internal.resource import CpuResource

        return int(CpuResource.from_system()) or 1
    return workers


def configure_worker() -> int | None:
    """Set up a service worker process at import, before it listens: :func:`spread_connections`, then
    :func:`pin_worker`. Returns the core the worker is bound to (None: not bound)."""
    spread_connections()
    return pin_worker()


def pin_worker() -> int | None:
    """Bind this worker process (every thread it has, and every thread it starts later) to one core: the
    i-th worker to the i-th core it may use (``os.sched_getaffinity``, so a cpuset or ``taskset`` is
    respected). Returns the core, or None when the worker is left to the OS.

    ``RECSTACK_CPU_AFFINITY``:
    - ``auto`` (default): bind when the workers are exactly as many as those cores (the default one
      worker per core on a machine or cpuset of its own). Not when the process may run on more cores
      than it has workers, e.g. a container limited by a CPU quota on a shared host: every replica
      there would bind to the same first cores.
    - ``worker``: bind whenever there are at least as many cores as workers.
    - ``none``: never.

    Why: a request crosses threads twice (the event loop hands the model stages to a lane thread and takes
    the results back). Unbound, those threads drift apart across cores, and each hand-off wakes a thread
    on the other core, whose caches hold none of the request's data. Bound together they hand off on one
    core: on ML-100K, concurrency 8, about 12 % more requests/s here (``benchmarks/serving_load.py`` with
    ``--affinity none`` and without). This is the usual recipe for CPU inference with one process per
    core (PyTorch's ``torch.backends.xeon.run_cpu`` binds instances to cores the same way).
    """
    mode = os.environ.get(AFFINITY_ENV, "auto").strip().lower()
    if mode not in AFFINITY_MODES:
        raise ValueError(f"{AFFINITY_ENV}={mode!r}: expected one of {', '.join(AFFINITY_MODES)}")
    if mode == "none" or not hasattr(os, "sched_setaffinity"):
        return None
    from bentoml._internal.context import server_context

    index = server_context.worker_index  # 1-based; None outside a served worker (tests, scripts)
    cores = sorted(os.sched_getaffinity(0))
    n_workers = worker_count()
    enough = n_workers == len(cores) if mode == "auto" else n_workers <= len(cores)
    if index is None or len(cores) < 2 or not enough:
        return None
    core = cores[(index - 1) % len(cores)]
    for task in Path("/proc/self/task").iterdir():  # os.sched_setaffinity(0) binds the calling thread only
        try:
            os.sched_setaffinity(int(task.name), {core})
        except ProcessLookupError:  # a thread that ended meanwhile
            continue
    return core
