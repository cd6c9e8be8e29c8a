"""The per-(user, surface, k, context) result cache: TTL with jitter, LRU-bounded, invalidated per user."""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class ResultCache:
    """Thread-safe TTL + LRU cache whose keys start with a user id, so feedback can drop a user's entries.

    Each entry lives ``ttl * (1 +- jitter)`` seconds: spreading expiries keeps a burst of cached users from
    all missing (and hitting the models) at the same moment.
    """

    def __init__(
        self,
        ttl_seconds: float,
        jitter: float = 0.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
    ) -> None:
        self.ttl, self.jitter, self.max_entries, self._clock = ttl_seconds, jitter, max_entries, clock
        self._rng = random.Random(seed)
        self._data: OrderedDict[tuple, tuple[float, Any]] = OrderedDict()
        self._by_user: dict[str, set[tuple]] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, user: str, key: Hashable) -> Any | None:
        full = (user, key)
        with self._lock:
            entry = self._data.get(full)
            if entry is None or entry[0] <= self._clock():
                if entry is not None:
                    self._drop(full)
                self.misses += 1
                return None
            self._data.move_to_end(full)
            self.hits += 1
            return entry[1]

    def put(self, user: str, key: Hashable, value: Any) -> None:
        full = (user, key)
        ttl = self.ttl * (1 + self.jitter * (2 * self._rng.random() - 1))
        with self._lock:
            self._data[full] = (self._clock() + ttl, value)
            self._data.move_to_end(full)
            self._by_user.setdefault(user, set()).add(full)
            while len(self._data) > self.max_entries:
                self._drop(next(iter(self._data)))

    def invalidate_user(self, user: str) -> int:
        """Drop every entry of ``user``; returns how many there were."""
        with self._lock:
            keys = self._by_user.pop(user, set())
            for k in keys:
                self._data.pop(k, None)
            return len(keys)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._by_user.clear()

    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __len__(self) -> int:
        return len(self._data)

    def _drop(self, full: tuple) -> None:
        self._data.pop(full, None)
        keys = self._by_user.get(full[0])
        if keys is not None:
            keys.discard(full)
            if not keys:
                del self._by_user[full[0]]


class SharedResultCache:
    """The second cache tier: responses in Redis, shared by every worker and replica.

    Keys are ``{namespace}:cache:{user}:{digest of the key}``, so forgetting a user can find theirs; each
    lives ``ttl * (1 +- jitter)`` seconds. A Redis error is a miss (the answer is computed), never a
    failed request. An entry holds the user's state ``marker`` it was computed at: read in the same round
    trip as that state (see :meth:`key` and :meth:`decode`), it is a hit only when the state is unchanged.
    """

    def __init__(
        self,
        client: Any,
        namespace: str,
        ttl_seconds: float,
        jitter: float,
        decode: Callable[[bytes], Any],
        seed: int | None = None,
        skip: Callable[[], bool] = lambda: False,
    ) -> None:
        import redis

        self.client, self.ns, self.ttl, self.jitter, self._decode = (
            client,
            namespace,
            ttl_seconds,
            jitter,
            decode,
        )
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._rng = random.Random(seed)
        self._skip = skip  # e.g. the online store's open circuit: do not wait on a Redis that is away
        self.hits = self.misses = self.errors = 0

    def key(self, user: str, key: Hashable) -> str:
        return f"{self.ns}:cache:{user}:{hashlib.sha1(repr(key).encode()).hexdigest()}"

    def decode(self, raw: bytes | None, marker: Hashable) -> Any | None:
        """The cached value of an entry read elsewhere, if it was computed at state ``marker``."""
        if raw is not None:
            head, _, body = raw.partition(b"\n")
            if head.decode() == repr(marker):
                self.hits += 1
                return self._decode(body)
        self.misses += 1
        return None

    def get(self, user: str, key: Hashable, marker: Hashable) -> Any | None:
        if self._skip():
            return None
        try:
            raw = self.client.get(self.key(user, key))
        except self._errors:
            self.errors += 1
            return None
        return self.decode(raw, marker)

    def put(self, user: str, key: Hashable, value: Any, marker: Hashable) -> None:
        ttl_ms = int(1000 * self.ttl * (1 + self.jitter * (2 * self._rng.random() - 1)))
        if self._skip():
            return
        blob = repr(marker).encode() + b"\n" + value.model_dump_json().encode()
        try:
            self.client.set(self.key(user, key), blob, px=max(ttl_ms, 1))
        except self._errors:
            self.errors += 1

    def invalidate_user(self, user: str) -> int:
        """Delete every entry of ``user`` (forgetting them); returns how many."""
        n = 0
        for k in self.client.scan_iter(match=f"{self.ns}:cache:{user}:*", count=1000):
            n += self.client.unlink(k)
        return n

    def clear(self) -> int:
        n = 0
        for k in self.client.scan_iter(match=f"{self.ns}:cache:*", count=1000):
            n += self.client.unlink(k)
        return n
