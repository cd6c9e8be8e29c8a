"""The service's online state: which store backs it, and feedback events applied to it.

Offline and online read users the same way: the funnel takes each user's history from the store (the
embedded one starts as the bundle's snapshot), so with no feedback the service answers exactly what the
offline funnel does, and every accepted engagement counts in the next request.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recstack.online.store import (
    AcceptedEvent,
    EmbeddedStore,
    OnlineStateUnavailable,
    OnlineStore,
    RedisStore,
    UserHistory,
    empty_sequences,
)
from recstack.serving.bundle import Bundle
from recstack.serving.config import OnlineConfig, ServingConfigError
from recstack.serving.eventlog import Periodic, read_events, read_from

log = logging.getLogger(__name__)

REDIS_URL_ENV = "RECSTACK_REDIS_URL"


def event_time_us(ts: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (the interaction data's time unit)."""
    return int(ts.timestamp() * 1_000_000)


def open_store(config: OnlineConfig, bundle: Bundle) -> OnlineStore:
    """The configured backend. The embedded one starts as the bundle's snapshot: the engine's log
    follower replays the feedback log into it (so acknowledged events survive a restart); Redis keeps its
    own state (loaded by :func:`materialize`)."""
    if config.backend == "redis":
        url = config.redis_url or os.environ.get(REDIS_URL_ENV)
        if not url:
            raise ServingConfigError(
                f"online.backend is redis but neither online.redis_url nor {REDIS_URL_ENV} is set"
            )
        return RedisStore(url, config.namespace, config.timeout_ms / 1000)
    return EmbeddedStore(bundle.sequences, bundle.user_index)


def apply_record(store: OnlineStore, bundle: Bundle, config: OnlineConfig, record: dict[str, Any]) -> bool:
    """Apply one logged feedback record; False when it does not enter histories (event type, unknown item)."""
    if record.get("event_type") not in config.history_events:
        return False
    item = bundle.item_index(str(record.get("item_id")))
    if item == 0:
        return False
    store.append(str(record["user_id"]), item, event_time_us(datetime.fromisoformat(record["timestamp"])))
    return True


def materialize(
    bundle: Bundle,
    url: str,
    namespace: str = "recstack",
    version: str | None = None,
    feedback_log: Path | None = None,
) -> dict[str, Any]:
    """Load the bundle's interaction snapshot into Redis as a new version and make it live.

    Args:
        version: name of the new version; default the bundle's version and the current time.
        feedback_log: events the service accepted that the snapshot does not hold (a log newer than the
            bundle's data): applied to the new version before it goes live.

    Returns the version, the users written, the events replayed and the seconds it took.
    """
    start = time.perf_counter()
    store = RedisStore(url, namespace, timeout_s=10.0)
    try:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        version = version or f"{bundle.card.get('version', 'bundle')}-{stamp}"
        user_ids = [str(u) for u in bundle.tables.spec.user_id.values.to_list()]
        replayed = 0

        def since_snapshot() -> dict[str, UserHistory]:
            nonlocal replayed
            if feedback_log is None:
                return {}
            log_only = EmbeddedStore(empty_sequences(), lambda _: 0)
            config = bundle.config.online
            replayed = sum(apply_record(log_only, bundle, config, r) for r in read_events(feedback_log))
            return log_only.recent()

        users = store.materialize(bundle.sequences, user_ids, version, since_snapshot)
    finally:
        store.close()
    return {
        "version": version,
        "users": users,
        "replayed_events": replayed,
        "seconds": round(time.perf_counter() - start, 3),
    }


def accepted_event(bundle: Bundle, config: OnlineConfig, record: dict[str, Any]) -> AcceptedEvent:
    """The :class:`AcceptedEvent` of a logged feedback record (what the feedback endpoint applied)."""
    joins = record.get("event_type") in config.history_events
    item = bundle.item_index(str(record.get("item_id"))) if joins else 0
    return AcceptedEvent(
        event_id=str(record["event_id"]),
        user=str(record["user_id"]),
        item=item,
        time_us=event_time_us(datetime.fromisoformat(record["timestamp"])),
        payload=json.dumps(record),
    )


class Relay(Periodic):
    """Catches the Redis state and stream up with the durable feedback log, in a background thread.

    The feedback endpoint applies each event to Redis before acknowledging it; when Redis is down it
    acknowledges anyway (the log has the event) and the relay applies it once Redis is back. It walks the
    log from an offset kept in Redis (per host and log file), applying every record idempotently (by event
    id), so already-applied events cost one check and none is applied twice.
    """

    def __init__(
        self, store: RedisStore, bundle: Bundle, config: OnlineConfig, log_path: Path, interval_s: float = 1.0
    ) -> None:
        # Redis away: the next round tries again (the requests' fallback already reports it).
        super().__init__(interval_s, "recstack-relay", expected=(OnlineStateUnavailable,))
        self.store, self.bundle, self.config = store, bundle, config
        self.log_path = Path(log_path)
        self.offset_key = f"{store.ns}:relay:{socket.gethostname()}:{self.log_path.resolve()}"
        self.applied = 0
        self.start()

    def run_once(self) -> int:
        """Apply what the log holds past the stored offset; returns the events newly applied."""
        raw = self.store.call(self.store.client.get, self.offset_key)
        offset = int(raw) if raw else 0
        applied = 0
        while True:
            records, end = read_from(self.log_path, offset)
            if not records:
                break
            pipe = self.store.client.pipeline(transaction=False)
            for record, _ in records:
                self.store.accept(accepted_event(self.bundle, self.config, record), client=pipe)
            statuses = self.store.call(pipe.execute)
            done, blocked = offset, False
            for (_, past), status in zip(records, statuses, strict=True):
                if status == 0:  # no materialized state yet: retry from this record later
                    blocked = True
                    break
                applied += status == 1
                done = past
            self.store.call(self.store.client.set, self.offset_key, done)
            if blocked:
                break
            offset = end
        self.applied += applied
        return applied
