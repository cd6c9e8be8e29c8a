"""The online state of users: their observed events, updated by feedback as it is accepted.

Two backends behind one interface (:class:`OnlineStore`):

- :class:`EmbeddedStore` (the default, nothing to install): the bundle's interaction snapshot plus the events
  accepted since, in process memory. At start it replays the durable feedback log, so a restart loses
  nothing that was acknowledged.
- :class:`RedisStore`: every user's events in Redis, shared by all workers and replicas. A materialize step
  loads the offline snapshot under a new version and then switches a pointer, so a half-finished load is
  never read. Reads are one round trip per request (a pipeline: the version pointer and the user's key).

A user's events are stored as packed fixed-width records (``EVENT_DTYPE``: item index, time in
microseconds), so an event is one Redis ``APPEND``, atomic and O(1), and reading a history is one ``GET``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recstack.models.inputs import Sequences
from recstack.ranking.features import DAY_US, ItemActivity

# One event: item index (int32 is enough for 2 billion items) and time in microseconds since the epoch.
EVENT_DTYPE = np.dtype([("item", "<i4"), ("time", "<i8")])


@dataclass(frozen=True)
class UserHistory:
    """One user's observed events, oldest first: ``items`` ``(n,)`` int64, ``times`` ``(n,)`` int64 (us)."""

    items: np.ndarray
    times: np.ndarray

    @classmethod
    def empty(cls) -> UserHistory:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64))

    @classmethod
    def from_bytes(cls, raw: bytes | None) -> UserHistory:
        if not raw:
            return cls.empty()
        if len(raw) % EVENT_DTYPE.itemsize:
            raise ValueError(
                f"a stored history of {len(raw)} bytes is not whole {EVENT_DTYPE.itemsize}-byte events"
            )
        rec = np.frombuffer(raw, dtype=EVENT_DTYPE)
        return cls(rec["item"].astype(np.int64), rec["time"].astype(np.int64))

    def to_bytes(self) -> bytes:
        rec = np.empty(len(self.items), dtype=EVENT_DTYPE)
        rec["item"], rec["time"] = self.items, self.times
        return rec.tobytes()

    def __len__(self) -> int:
        return len(self.items)

    def seen(self) -> np.ndarray:
        """Sorted distinct items (what ``filter_seen`` removes and retrieval excludes)."""
        return distinct(self.items)

    def last_time(self) -> int:
        """Time of the latest event (us), -1 when there is none."""
        return int(self.times.max()) if len(self.times) else -1


def distinct(values: np.ndarray) -> np.ndarray:
    """``np.unique(values)`` of a 1-d array (sorted distinct values), by a sort: numpy 2.3's hash-based
    unique costs ~14 us on a request's few hundred items, the sort ~6 us."""
    out = np.sort(values)
    if len(out) > 1:
        out = out[np.concatenate(([True], out[1:] != out[:-1]))]
    return out


def snapshot_history(snapshot: Sequences, user: int) -> UserHistory:
    """User index ``user``'s events in ``snapshot`` (no copy; 0 or out of range: empty)."""
    if user <= 0 or user >= len(snapshot.offsets) - 1:
        return UserHistory.empty()
    lo, hi = snapshot.offsets[user], snapshot.offsets[user + 1]
    return UserHistory(snapshot.items[lo:hi], snapshot.times[lo:hi])


def empty_sequences() -> Sequences:
    """A snapshot without users or events."""
    return Sequences(np.empty(0, np.int64), np.empty(0, np.int64), np.zeros(2, np.int64))


def event_bytes(item: int, time_us: int) -> bytes:
    rec = np.empty(1, dtype=EVENT_DTYPE)
    rec["item"], rec["time"] = item, time_us
    return rec.tobytes()


@dataclass(frozen=True)
class AcceptedEvent:
    """A feedback event the service accepted (already in its durable log).

    Attributes:
        event_id: unique per event: applying it twice is a no-op (the relay may replay it).
        user: raw user id. item: item index, 0 when the event does not join the history (a skip...).
        time_us: event time. payload: the logged record as JSON (what stream consumers read).
    """

    event_id: str
    user: str
    item: int
    time_us: int
    payload: str


class OnlineStore(ABC):
    """Per-user event histories for the service: read per request, appended by feedback."""

    name: str
    streams = False  # whether accepted events also go to a stream of this backend (else the log is it)

    def accept(self, event: AcceptedEvent) -> bool:
        """Apply an accepted event: its item joins the user's history. False when it was applied before."""
        if event.item > 0:
            self.append(event.user, event.item, event.time_us)
        return True

    @abstractmethod
    def histories(self, users: Sequence[str]) -> list[UserHistory]:
        """The histories of ``users`` (raw user ids; unknown ones may have events too), in one round trip."""

    @abstractmethod
    def append(self, user: str, item: int, time_us: int) -> None:
        """Record that ``user`` engaged with item index ``item`` at ``time_us``; visible to the next read."""

    def item_activity(self, items: np.ndarray) -> ItemActivity:
        """Engagements with ``items`` (indices) since the snapshot, for the ranker's item features."""
        return ItemActivity.empty()

    @abstractmethod
    def forget(self, user: str) -> None:
        """Remove every event of ``user`` from the online state, snapshot included, now."""

    def health(self) -> dict:
        return {"backend": self.name, "available": True}

    def close(self) -> None:
        """Release connections."""


class EmbeddedStore(OnlineStore):
    """The bundle's snapshot (read-only, shared) plus the events accepted since, in memory."""

    name = "embedded"

    def __init__(self, snapshot: Sequences, user_index: Callable[[str], int]) -> None:
        self.snapshot, self.user_index = snapshot, user_index
        self._recent: dict[str, list[tuple[int, int]]] = {}
        self._applied: set[str] = set()  # ids applied by this worker that its log follower has not met yet
        self._forgotten: set[str] = set()  # the snapshot is read-only: their events are masked instead
        self._item_times: dict[int, list[int]] = {}  # item -> engagement times since the snapshot
        self._lock = threading.Lock()

    def base(self, user: str) -> UserHistory:
        """The snapshot's events of ``user`` (no copy); nothing for a forgotten user."""
        if user in self._forgotten:
            return UserHistory.empty()
        return snapshot_history(self.snapshot, self.user_index(user))

    def forget(self, user: str) -> None:
        with self._lock:
            self._forgotten.add(user)
            self._recent.pop(user, None)

    def histories(self, users: Sequence[str]) -> list[UserHistory]:
        out = []
        for u in users:
            base = self.base(u)
            with self._lock:
                recent = list(self._recent.get(u, ()))
            if recent:
                items, times = np.array(recent, dtype=np.int64).T
                base = UserHistory(np.concatenate([base.items, items]), np.concatenate([base.times, times]))
            out.append(base)
        return out

    def accept(self, event: AcceptedEvent) -> bool:
        """Apply ``event`` unless it was already (the log follower meets this worker's own events too)."""
        with self._lock:
            if event.event_id in self._applied:
                self._applied.discard(event.event_id)  # met once more at most: by the follower
                return False
            self._applied.add(event.event_id)
        if event.item > 0:
            self.append(event.user, event.item, event.time_us)
        return True

    def forget_applied(self, event_id: str) -> bool:
        """For the log follower: True (and forgotten) when ``event_id`` was applied here already."""
        with self._lock:
            if event_id in self._applied:
                self._applied.discard(event_id)
                return True
            return False

    def recent(self) -> dict[str, UserHistory]:
        """The events accepted since the snapshot, by user."""
        with self._lock:
            pairs = {u: np.array(ev, dtype=np.int64).reshape(-1, 2) for u, ev in self._recent.items()}
        return {u: UserHistory(a[:, 0].copy(), a[:, 1].copy()) for u, a in pairs.items()}

    def append(self, user: str, item: int, time_us: int) -> None:
        with self._lock:
            self._recent.setdefault(user, []).append((item, time_us))
            self._item_times.setdefault(item, []).append(time_us)

    def item_activity(self, items: np.ndarray) -> ItemActivity:
        # Python ints from one tolist(), not int() per numpy scalar: a request asks about its 200
        # candidates, and the per-element loop cost ~0.1 ms of them even with no events to find.
        with self._lock:
            times = self._item_times
            found = [(i, list(times[i])) for i in np.asarray(items).tolist() if i in times] if times else []
        if not found:
            return ItemActivity.empty()
        its = np.concatenate([np.full(len(t), i, dtype=np.int64) for i, t in found])
        times = np.concatenate([np.array(t, dtype=np.int64) for _, t in found])
        return ItemActivity(its, times, np.ones(len(times)))


class OnlineStateUnavailable(RuntimeError):
    """The online backend cannot be read or written right now (the message says why)."""


class RedisStore(OnlineStore):
    """Users' histories in Redis under a versioned namespace.

    Keys: ``{ns}:version`` names the live version; ``{ns}:{version}:h:{user}`` holds the user's events.
    :meth:`materialize` writes a whole new version, then moves the pointer; readers follow the pointer,
    which they read in the same pipeline as the histories (one round trip).
    """

    name = "redis"

    streams = True

    def __init__(
        self,
        url: str,
        namespace: str = "recstack",
        timeout_s: float = 0.05,
        idempotency_ttl_s: int = 7 * 86400,
        stream_maxlen: int = 10_000_000,
    ) -> None:
        import redis  # serving extra: only needed with this backend

        self.url, self.ns = url, namespace
        self.idempotency_ttl_s, self.stream_maxlen = idempotency_ttl_s, stream_maxlen
        self.retry_after_s = 0.5
        self._open_until, self._last_error = 0.0, ""
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self.client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=0
        )
        self._version: bytes | None = None
        # Atomic: append an event to the live version and, while a materialize runs, to the pending one.
        self._append = self.client.register_script(
            """
            local live = redis.call('GET', KEYS[1])
            local pending = redis.call('GET', KEYS[2])
            if not live and not pending then return 0 end
            if live then redis.call('APPEND', ARGV[1] .. ':' .. live .. ':h:' .. ARGV[2], ARGV[3]) end
            if pending and pending ~= live then
                redis.call('APPEND', ARGV[1] .. ':' .. pending .. ':h:' .. ARGV[2], ARGV[3])
            end
            return 1
            """
        )
        # Idempotent per event id (the idempotency key lives idempotency_ttl_s): the event's item joins
        # the live (and pending) history, and the event goes to the stream. Returns 1 applied, 2 applied
        # before, 0 no materialized state (nothing done, so a later retry applies it).
        self._accept = self.client.register_script(
            """
            if not redis.call('SET', KEYS[3], 1, 'NX', 'EX', ARGV[5]) then return 2 end
            if ARGV[3] ~= '' then
                local live = redis.call('GET', KEYS[1])
                local pending = redis.call('GET', KEYS[2])
                if not live and not pending then
                    redis.call('DEL', KEYS[3])
                    return 0
                end
                for _, v in ipairs({live, pending}) do
                    if v and (v == live or pending ~= live) then
                        redis.call('APPEND', ARGV[1] .. ':' .. v .. ':h:' .. ARGV[2], ARGV[3])
                        redis.call('HINCRBY', ARGV[1] .. ':' .. v .. ':ipop:' .. ARGV[7], ARGV[8], 1)
                    end
                end
            end
            redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[6], '*', 'event', ARGV[4])
            return 1
            """
        )
        # Engagements per item and day since the snapshot, of the live version.
        self._item_days = self.client.register_script(
            """
            local live = redis.call('GET', KEYS[1])
            if not live then return false end
            local out = {}
            for i = 2, #ARGV do
                out[#out + 1] = redis.call('HGETALL', ARGV[1] .. ':' .. live .. ':ipop:' .. ARGV[i])
            end
            return out
            """
        )
        # The snapshot goes before any events appended to the pending version meanwhile (they are newer).
        self._prepend = self.client.register_script(
            "redis.call('SET', KEYS[1], ARGV[1] .. (redis.call('GET', KEYS[1]) or '')) return 1"
        )

    def _key(self, version: bytes, user: str) -> str:
        return f"{self.ns}:{version.decode()}:h:{user}"

    @property
    def pointer(self) -> str:
        return f"{self.ns}:version"

    def version(self) -> str | None:
        v = self.call(self.client.get, self.pointer)
        return v.decode() if v else None

    def circuit_open(self) -> bool:
        """Whether calls fail at once right now (a recent failure; see :meth:`call`)."""
        return time.monotonic() < self._open_until

    def call(self, fn, *args, **kwargs):
        """``fn(...)`` on Redis; its connection errors and timeouts become :class:`OnlineStateUnavailable`.

        A circuit breaker: after a failure, calls fail at once for ``retry_after_s`` (no request waits out
        the timeout again while Redis is away or slow; the event loop stays free), then one call probes.
        """
        if time.monotonic() < self._open_until:
            raise OnlineStateUnavailable(f"redis at {self.url} failed {self._last_error}; retrying shortly")
        try:
            return fn(*args, **kwargs)
        except self._errors as exc:
            self._open_until, self._last_error = time.monotonic() + self.retry_after_s, f"({exc})"
            raise OnlineStateUnavailable(f"redis at {self.url}: {exc}") from exc

    def histories(self, users: Sequence[str]) -> list[UserHistory]:
        return self.read(users)[0]

    def read(
        self, users: Sequence[str], also_get: Sequence[str] = ()
    ) -> tuple[list[UserHistory], list[bytes | None]]:
        """The users' histories and the values of the keys ``also_get`` (e.g. the shared cache's entry for
        the request), in one round trip: a pipeline of GET pointer, MGET histories, MGET the keys."""
        for _ in range(2):  # a second pass only when a materialize switched the version meanwhile
            version = self._version
            pipe = self.client.pipeline(transaction=False)
            pipe.get(self.pointer)
            if version is not None and users:
                pipe.mget([self._key(version, u) for u in users])
            if also_get:
                pipe.mget(list(also_get))
            res = self.call(pipe.execute)
            live = res[0]
            if live is None:
                raise OnlineStateUnavailable(
                    f"redis at {self.url} holds no materialized state ({self.pointer})"
                )
            if live == version:
                hist = [UserHistory.from_bytes(r) for r in (res[1] if users else [])]
                return hist, (res[-1] if also_get else [])
            self._version = live
        raise OnlineStateUnavailable("the online state version changed twice during one read")

    def append(self, user: str, item: int, time_us: int) -> None:
        ok = self.call(
            self._append, keys=[self.pointer, self.pending], args=[self.ns, user, event_bytes(item, time_us)]
        )
        if not ok:
            raise OnlineStateUnavailable(f"redis at {self.url} holds no materialized state ({self.pointer})")

    @property
    def stream(self) -> str:
        """The Redis stream of accepted feedback events (monitoring consumes it)."""
        return f"{self.ns}:events"

    def accept(self, event: AcceptedEvent, client: Any = None) -> bool:
        """Apply ``event`` once (see :class:`AcceptedEvent`); ``client``: a pipeline to queue it on."""
        keys = [self.pointer, self.pending, f"{self.ns}:seen:{event.event_id}", self.stream]
        blob = event_bytes(event.item, event.time_us) if event.item > 0 else b""
        day = event.time_us // DAY_US
        args = [
            self.ns,
            event.user,
            blob,
            event.payload,
            self.idempotency_ttl_s,
            self.stream_maxlen,
            event.item,
            day,
        ]
        if client is not None:
            self._accept(keys=keys, args=args, client=client)
            return True
        status = self.call(self._accept, keys=keys, args=args)
        if status == 0:
            raise OnlineStateUnavailable(f"redis at {self.url} holds no materialized state ({self.pointer})")
        return status == 1

    def item_activity(self, items: np.ndarray) -> ItemActivity:
        """Daily engagement counts of ``items`` since the snapshot (one round trip), dated at day start."""
        if not len(items):
            return ItemActivity.empty()
        reply = self.call(self._item_days, keys=[self.pointer], args=[self.ns, *[int(i) for i in items]])
        if not reply:
            raise OnlineStateUnavailable(f"redis at {self.url} holds no materialized state ({self.pointer})")
        rows = [
            (int(item), int(fields[j]), int(fields[j + 1]))
            for item, fields in zip(items, reply, strict=True)
            for j in range(0, len(fields), 2)
        ]
        if not rows:
            return ItemActivity.empty()
        a = np.array(rows, dtype=np.int64)
        return ItemActivity(a[:, 0], a[:, 1] * DAY_US, a[:, 2].astype(np.float64))

    @property
    def pending(self) -> str:
        return f"{self.ns}:pending"

    def materialize(
        self,
        snapshot: Sequences,
        user_ids: Sequence[str],
        version: str,
        since_snapshot: Callable[[], dict[str, UserHistory]] | None = None,
        batch: int = 1000,
    ) -> int:
        """Load ``snapshot`` (user index ``u`` is ``user_ids[u - 1]``) as ``version`` and make it live.

        While it loads, feedback appends to both the live version and the new one (the ``pending``
        pointer), and each user's events are written *before* whatever arrived meanwhile, so no accepted
        event is lost.

        Args:
            since_snapshot: called once the double writes are on; returns the events accepted before that
                which the snapshot does not hold (the service's feedback log since the data was cut), by
                user. They go after the user's snapshot. (An event acknowledged in the very milliseconds
                the double writes start can be counted twice: a repeated item in a history, never a loss.)

        Returns the number of users written.
        """
        if self.call(self.client.exists, f"{self.ns}:{version}:done"):
            raise ValueError(f"online state version {version!r} already exists in {self.url}")
        self.call(self.client.set, self.pending, version)
        recent = since_snapshot() if since_snapshot is not None else {}
        forgotten = {m.decode() for m in self.call(self.client.smembers, self.forgotten)}
        n = 0
        pipe = self.client.pipeline(transaction=False)
        key = version.encode()
        known = set(user_ids)
        for u, uid in enumerate([*user_ids, *(r for r in recent if r not in known)], start=1):
            if uid in forgotten:
                continue
            h = snapshot_history(snapshot, u) if u <= len(user_ids) else UserHistory.empty()
            blob = h.to_bytes() + (recent[uid].to_bytes() if uid in recent else b"")
            if blob:
                self._prepend(keys=[self._key(key, str(uid))], args=[blob], client=pipe)
                n += 1
            if len(pipe) >= batch:
                self.call(pipe.execute)
        self.call(pipe.execute)
        old = self.call(self.client.get, self.pointer)
        # The switch: one transaction moves the pointer and ends the double writes.
        tx = self.client.pipeline(transaction=True)
        tx.set(f"{self.ns}:{version}:done", 1).set(self.pointer, version).delete(self.pending)
        self.call(tx.execute)
        self._version = key
        if old is not None and old.decode() != version:
            self.drop_version(old.decode())
        return n

    def forget(self, user: str) -> None:
        """Delete the user's events in the live and pending versions, and keep them out of later loads."""
        live, pending = self.call(self.client.mget, [self.pointer, self.pending])
        tx = self.client.pipeline(transaction=True)
        for v in {live, pending} - {None}:
            tx.delete(self._key(v, user))
        tx.sadd(self.forgotten, user)
        self.call(tx.execute)

    @property
    def forgotten(self) -> str:
        """Users forgotten since the last load (the next snapshot no longer holds them)."""
        return f"{self.ns}:forgotten"

    def drop_version(self, version: str) -> int:
        """Delete every key of an old version (not the live one); returns how many."""
        if self.version() == version:
            raise ValueError(f"{version!r} is the live online state version")
        n = 0
        for key in self.client.scan_iter(match=f"{self.ns}:{version}:*", count=1000):
            n += self.call(self.client.unlink, key)
        return n

    def health(self) -> dict:
        try:
            live = self.version()
        except OnlineStateUnavailable as exc:
            return {"backend": self.name, "available": False, "error": str(exc)}
        return {"backend": self.name, "available": live is not None, "version": live}

    def close(self) -> None:
        self.client.close()
