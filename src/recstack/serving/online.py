"""The service's online state: which store backs it, and feedback events applied to it.

Offline and online read users the same way: the funnel takes each user's history from the store (the
embedded one starts as the bundle's snapshot), so with no feedback the service answers exactly what the
offline funnel does, and every accepted engagement counts in the next request.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recstack.online.store import EmbeddedStore, OnlineStore, RedisStore, UserHistory, empty_sequences
from recstack.serving.bundle import Bundle
from recstack.serving.config import OnlineConfig, ServingConfigError
from recstack.serving.eventlog import read_events

REDIS_URL_ENV = "RECSTACK_REDIS_URL"


def event_time_us(ts: datetime) -> int:
    """Microseconds since the epoch of an aware datetime (the interaction data's time unit)."""
    return int(ts.timestamp() * 1_000_000)


def open_store(config: OnlineConfig, bundle: Bundle, feedback_log: Path | None) -> OnlineStore:
    """The configured backend. The embedded one replays ``feedback_log``, so acknowledged events survive
    a restart; Redis keeps its own state (loaded by :func:`materialize`)."""
    if config.backend == "redis":
        url = config.redis_url or os.environ.get(REDIS_URL_ENV)
        if not url:
            raise ServingConfigError(
                f"online.backend is redis but neither online.redis_url nor {REDIS_URL_ENV} is set"
            )
        return RedisStore(url, config.namespace, config.timeout_ms / 1000)
    store = EmbeddedStore(bundle.sequences, bundle.user_index)
    if feedback_log is not None:
        for record in read_events(feedback_log):
            apply_record(store, bundle, config, record)
    return store


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
