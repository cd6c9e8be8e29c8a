"""Consumers of accepted feedback events: the durable local log by default, a Redis stream with Redis.

Both deliver at least once and keep their position only when told (:meth:`EventConsumer.ack`): a consumer
that restarts gets back what it read but had not acknowledged, and nothing it had. A consumer that
commits its own output and the acknowledgement together counts every event exactly once; records carry
their ``event_id`` for consumers that deduplicate instead.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

from recstack.serving.eventlog import read_from


class EventConsumer(ABC):
    """Reads feedback records in order; ``ack`` commits the position past the given ids."""

    @abstractmethod
    def read(self, count: int = 500) -> list[tuple[str, dict]]:
        """Up to ``count`` ``(id, record)`` not yet acknowledged, oldest first (empty: nothing new)."""

    @abstractmethod
    def ack(self, ids: Sequence[str]) -> None:
        """Acknowledge processed records: they are not delivered again, even after a restart."""

    def close(self) -> None:
        """Release resources."""


class LogConsumer(EventConsumer):
    """The service's feedback log as a stream. Ids are byte offsets; the committed offset is a small file
    (written atomically: temp file, fsync, rename), so a restart resumes exactly there."""

    def __init__(self, log_path: str | Path, offset_path: str | Path) -> None:
        self.log_path, self.offset_path = Path(log_path), Path(offset_path)
        self.committed = int(self.offset_path.read_text()) if self.offset_path.exists() else 0
        self._next = self.committed

    def read(self, count: int = 500) -> list[tuple[str, dict]]:
        records, _ = read_from(self.log_path, self._next)
        records = records[:count]
        if records:
            self._next = records[-1][1]
        # The id of a record is where it ends: acknowledging it commits everything up to there.
        return [(str(end), record) for record, end in records]

    def ack(self, ids: Sequence[str]) -> None:
        if not ids:
            return
        offset = max(int(i) for i in ids)
        if offset <= self.committed:
            return
        tmp = self.offset_path.with_suffix(".tmp")
        self.offset_path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("w") as f:
            f.write(str(offset))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.offset_path)
        self.committed = offset


class RedisStreamConsumer(EventConsumer):
    """A member of a Redis consumer group on the service's event stream (``{namespace}:events``).

    On start it first re-reads its own pending entries (read before a restart, never acknowledged), then
    new ones; ``ack`` is ``XACK``. Several consumers of one group share the work; each group sees every
    event.
    """

    def __init__(self, url: str, namespace: str, group: str, consumer: str, block_ms: int = 0) -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_timeout=10)
        self.stream, self.group, self.consumer, self.block_ms = (
            f"{namespace}:events",
            group,
            consumer,
            block_ms,
        )
        try:
            self.client.xgroup_create(self.stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._backlog: str | None = "0"  # own pending entries first, from this id on; None = new ones

    def read(self, count: int = 500) -> list[tuple[str, dict]]:
        if self._backlog is not None:
            reply = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: self._backlog}, count=count
            )
            entries = reply[0][1] if reply else []
            if entries:
                self._backlog = entries[-1][0].decode()
                return [(eid.decode(), json.loads(fields[b"event"])) for eid, fields in entries]
            self._backlog = None
        reply = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=self.block_ms or None
        )
        entries = reply[0][1] if reply else []
        return [(eid.decode(), json.loads(fields[b"event"])) for eid, fields in entries]

    def ack(self, ids: Sequence[str]) -> None:
        if ids:
            self.client.xack(self.stream, self.group, *ids)

    def close(self) -> None:
        self.client.close()
