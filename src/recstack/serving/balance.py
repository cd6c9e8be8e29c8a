"""Keep-alive connections spread evenly over a server's worker processes.

BentoML's workers share one listening socket, and the kernel hands each new connection to whichever
worker wins the race to accept it. A client that keeps a few connections open (a load generator, an API
gateway, another service) can so end up with all of them on one worker: measured on ML-100K with 8
keep-alive connections and one worker per core, splits of 8/0, 6/2 and 5/3 were as common as 4/4, and at
8/0 one core served every request while the other idled (291 requests/s against 354 at 4/4). Nothing
moves a connection once it is accepted.

:class:`Rebalance` moves them: a worker holding more than its fair share of the server's active
connections answers one request with ``Connection: close``; the client reconnects, and the new
connection goes to a worker that is free to accept it, usually a less busy one. Connections are closed
one at a time, at most one per ``cooldown_s`` per worker, and only after a response is complete, so no
request is lost or delayed. (Proxies do the same for the same reason: Envoy's ``max_connection_duration``,
gRPC's ``MAX_CONNECTION_AGE``.)

Workers share their counts through :class:`WorkerSlots`, a small memory-mapped file named after the
server's process (the workers' parent). ``RECSTACK_REBALANCE=off`` turns it off.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

REBALANCE_ENV = "RECSTACK_REBALANCE"
# A connection counts as active while it sent a request within this long.
ACTIVE_S = 1.0
# A worker closes at most one connection per this long: the client's reconnect has time to land and the
# other workers' counts to catch up before the next one.
COOLDOWN_S = 0.1
# How often a worker publishes its count and reads the others' (on its next request).
REFRESH_S = 0.05
# A slot not refreshed for this long counts 0 connections (an idle worker receives no requests to
# refresh it on).
STALE_S = 2 * ACTIVE_S

_SLOT = struct.Struct("<qqd")  # pid, active connections, time.monotonic() of the update
MAX_WORKERS = 256


class WorkerSlots:
    """One slot per worker (``index`` 1-based, as BentoML numbers workers) in a file shared by the
    workers of one server: its pid, its active connections and when it last said so."""

    def __init__(self, path: Path, n_workers: int) -> None:
        if not 1 <= n_workers <= MAX_WORKERS:
            raise ValueError(f"n_workers={n_workers}: expected 1 to {MAX_WORKERS}")
        self.path, self.n_workers = path, n_workers
        size = _SLOT.size * n_workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zero-filled: no worker has published yet
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)

    @classmethod
    def for_server(cls, n_workers: int) -> WorkerSlots:
        """The slots of this process's server: a file named after the parent process (the worker
        supervisor, the same for every worker of a server), in ``/dev/shm`` where there is one."""
        shm = Path("/dev/shm")
        folder = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())
        _remove_orphans(folder)
        return cls(folder / f"recstack-workers-{os.getppid()}", n_workers)

    def publish(self, index: int, connections: int, now: float) -> None:
        _SLOT.pack_into(self._map, self._offset(index), os.getpid(), connections, now)

    def counts(self, now: float) -> list[int | None]:
        """Every worker's active connections, by index - 1: 0 for a slot not refreshed within
        ``STALE_S`` (an idle worker gets no request to refresh it on, and one that has never published
        is starting); None for a stale slot whose process is gone (a crashed worker not yet restarted:
        counting it, the others would keep closing connections that can only come back to them)."""
        out: list[int | None] = []
        for i in range(self.n_workers):
            pid, connections, at = _SLOT.unpack_from(self._map, i * _SLOT.size)
            if now - at <= STALE_S:
                out.append(connections)
            else:
                out.append(0 if pid == 0 or _alive(pid) else None)
        return out

    def _offset(self, index: int) -> int:
        if not 1 <= index <= self.n_workers:
            raise ValueError(f"worker index {index} outside 1..{self.n_workers}")
        return (index - 1) * _SLOT.size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_orphans(folder: Path) -> None:
    """Delete the slot files of servers that are gone (named after a process that no longer exists)."""
    for f in folder.glob("recstack-workers-*"):
        try:
            os.kill(int(f.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            f.unlink(missing_ok=True)
        except (ValueError, PermissionError):  # not ours to judge
            continue


def over_share(mine: int, counts: list[int]) -> bool:
    """Whether a worker with ``mine`` active connections holds more than its fair share of the server's
    (``counts``: every worker's, its own included): more than the total divided evenly, rounded up."""
    return _over(mine, sum(counts) - mine, max(len(counts), 1))


def _over(mine: int, others: int, workers: int) -> bool:
    """:func:`over_share` given the other workers' total: what a request checks (no list built)."""
    return mine > math.ceil((mine + others) / workers)


class Rebalance:
    """ASGI middleware: tracks this worker's active connections (by client address and port) and answers
    with ``Connection: close`` while the worker holds more than its fair share (see the module)."""

    def __init__(
        self,
        app: Any,
        slots: WorkerSlots | None = None,
        index: int | None = None,
        clock: Any = time.monotonic,
    ) -> None:
        self.app = app
        self.clock = clock
        self.slots, self.index = slots, index
        if slots is None and os.environ.get(REBALANCE_ENV, "on").strip().lower() not in ("off", "0", "false"):
            self.slots, self.index = _server_slots()
        self.seen: dict[tuple[str, int], float] = {}  # client (host, port) -> last request
        self.closed = 0
        self._refreshed = self._last_close = -math.inf
        self._counts: list[int | None] = []
        # As of the last refresh: the other live workers' connections, and how many workers are live.
        self._others, self._live = 0, 1

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        client = scope.get("client")
        if self.slots is None or scope["type"] != "http" or not client:
            await self.app(scope, receive, send)
            return
        client = tuple(client)  # ASGI allows any two-item iterable; a dict key must be hashable
        now = self.clock()
        self.seen[client] = now
        if now - self._refreshed > REFRESH_S:
            self._refresh(now)
        # This worker's count as of now (a new connection counts at once), the others' as of the refresh.
        mine = len(self.seen)
        if not (now - self._last_close > COOLDOWN_S and _over(mine, self._others, self._live)):
            await self.app(scope, receive, send)
            return
        self._last_close = now
        del self.seen[client]  # leaving: the others' share grows by it from the next refresh
        self.closed += 1

        async def closing(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
            await send(message)

        await self.app(scope, receive, closing)

    def _refresh(self, now: float) -> None:
        """Forget connections quiet for ``ACTIVE_S``, publish the count, read every worker's."""
        self._refreshed = now
        self.seen = {c: t for c, t in self.seen.items() if now - t <= ACTIVE_S}
        self.slots.publish(self.index, len(self.seen), now)
        self._counts = self.slots.counts(now)
        others = [c for i, c in enumerate(self._counts) if i != self.index - 1 and c is not None]
        self._others, self._live = sum(others), len(others) + 1


def _server_slots() -> tuple[WorkerSlots | None, int | None]:
    """This worker's slots and index under ``bentoml serve`` with more than one worker; (None, None)
    elsewhere (tests, scripts, one worker): nothing to balance."""
    from bentoml._internal.context import server_context

    from recstack.serving.workers import worker_count

    index, n = server_context.worker_index, worker_count()
    if index is None or n < 2 or index > n:
        return None, None
    return WorkerSlots.for_server(n), index
