"""Connection rebalancing across workers (recstack.serving.balance)."""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing as mp
from pathlib import Path

import pytest

from recstack.serving import balance
from recstack.serving.balance import Rebalance, WorkerSlots, over_share


def test_fair_share_is_the_even_split_rounded_up() -> None:
    assert over_share(8, [8, 0])
    assert over_share(5, [5, 3])
    assert not over_share(4, [4, 4])
    assert not over_share(3, [3, 4])  # 7 over 2 workers: 4 each at most
    assert not over_share(4, [4, 3])
    assert over_share(2, [2, 0, 0])
    assert not over_share(1, [1, 1, 0])
    assert not over_share(0, [0, 0])


def _publish(path: str, index: int, connections: int, now: float) -> None:
    WorkerSlots(Path(path), 3).publish(index, connections, now)


def test_slots_are_shared_between_processes_and_go_stale(tmp_path: Path) -> None:
    path = tmp_path / "slots"
    mine = WorkerSlots(path, 3)
    assert mine.counts(100.0) == [0, 0, 0]  # nobody published yet
    mine.publish(1, 5, 100.0)
    other = mp.get_context("spawn").Process(target=_publish, args=(str(path), 3, 2, 100.5))
    other.start()
    other.join(60)
    assert other.exitcode == 0
    assert mine.counts(101.0) == [5, 0, 2]
    # A worker that stopped refreshing (idle: no requests) counts as holding nothing; one whose process
    # is gone (crashed, not yet restarted) is not counted at all, and one never heard of is starting.
    later = 100.5 + balance.STALE_S + 0.1
    assert mine.counts(later) == [0, 0, None]  # worker 3 (the spawned process) has exited
    mine.publish(1, 5, later)
    assert mine.counts(later) == [5, 0, None]
    with pytest.raises(ValueError, match="worker index 4"):
        mine.publish(4, 1, 100.0)
    with pytest.raises(ValueError, match="n_workers=0"):
        WorkerSlots(path, 0)


def test_orphaned_slot_files_are_removed(tmp_path: Path) -> None:
    gone = mp.get_context("spawn").Process(target=int)
    gone.start()
    gone.join(60)
    orphan = tmp_path / f"recstack-workers-{gone.pid}"
    alive = tmp_path / "recstack-workers-1"  # pid 1 always exists
    foreign = tmp_path / "recstack-workers-notapid"
    for f in (orphan, alive, foreign):
        f.write_bytes(b"")
    balance._remove_orphans(tmp_path)
    assert not orphan.exists() and alive.exists() and foreign.exists()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _ok(scope: dict, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def _request(app: Rebalance, client: tuple[str, int]) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "path": "/recommend", "client": client}, None, send))
    return sent


def _closes(sent: list[dict]) -> bool:
    return (b"connection", b"close") in sent[0]["headers"]


def test_a_worker_over_its_share_closes_one_connection_per_cooldown(tmp_path: Path) -> None:
    slots, clock = WorkerSlots(tmp_path / "slots", 2), _Clock()
    app = Rebalance(_ok, slots, index=1, clock=clock)
    slots.publish(2, 0, clock.now)  # the other worker is up and holds nothing
    clients = [("127.0.0.1", 50000 + i) for i in range(8)]
    closed = []
    for _ in range(40):  # 8 connections, each sending a request every 20 ms
        for c in list(clients):
            clock.now += 0.0025
            sent = _request(app, c)
            assert sent[-1] == {"type": "http.response.body", "body": b"ok"}  # the response is whole
            if _closes(sent):
                closed.append(clock.now)
                clients.remove(c)  # the client reconnects, and the other worker accepts
        slots.publish(2, 8 - len(clients), clock.now)
    # The worker held 8 of 8: it closed connections, one per cooldown at most, down to its share.
    assert len(closed) == 4 and app.closed == 4 and len(clients) == 4
    assert all(b - a > balance.COOLDOWN_S for a, b in itertools.pairwise(closed))
    # The ones it closed left its count at once (it holds the 4 it kept, once the quiet ones expire).
    clock.now += balance.ACTIVE_S + balance.REFRESH_S
    for c in clients:
        assert not _closes(_request(app, c))
    assert len(app.seen) == 4


def _keeps_its_four(app: Rebalance, slots: WorkerSlots, clock: _Clock, other: int, host: str) -> None:
    """Four connections sending every 20 ms for a second while worker ``other`` holds four too: none is
    closed."""
    for _ in range(50):
        slots.publish(other, 4, clock.now)
        for port in range(4):
            clock.now += 0.005
            assert not _closes(_request(app, (host, port)))
    assert app.closed == 0


def test_a_balanced_worker_keeps_its_connections(tmp_path: Path) -> None:
    slots, clock = WorkerSlots(tmp_path / "slots", 2), _Clock()
    _keeps_its_four(Rebalance(_ok, slots, index=2, clock=clock), slots, clock, other=1, host="10.0.0.1")


def test_a_client_given_as_a_list_is_counted(tmp_path: Path) -> None:
    """ASGI allows the client as any two-item iterable (a list is unhashable as a dict key)."""
    app = Rebalance(_ok, WorkerSlots(tmp_path / "slots", 2), index=1, clock=_Clock())
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "path": "/recommend", "client": ["127.0.0.1", 5]}, None, send))
    assert sent[-1]["body"] == b"ok" and ("127.0.0.1", 5) in app.seen


def test_rebalancing_is_off_outside_a_multi_worker_server(monkeypatch) -> None:
    app = Rebalance(_ok)  # a test or script: no BentoML worker index
    assert app.slots is None
    assert not _closes(_request(app, ("127.0.0.1", 1)))
    monkeypatch.setenv(balance.REBALANCE_ENV, "off")
    monkeypatch.setattr(balance, "_server_slots", lambda: pytest.fail("must not set up slots"))
    assert Rebalance(_ok).slots is None


def test_a_crashed_worker_is_left_out_of_the_share(tmp_path: Path) -> None:
    """Worker 1's process is gone (its slot stale): workers 2 and 3 split the connections between them,
    each keeping its 4 of 8, instead of closing connections that could only come back to them."""
    gone = mp.get_context("spawn").Process(target=int)
    gone.start()
    gone.join(60)
    slots, clock = WorkerSlots(tmp_path / "slots", 3), _Clock()
    balance._SLOT.pack_into(slots._map, 0, gone.pid, 8, clock.now - 2 * balance.STALE_S)
    app = Rebalance(_ok, slots, index=2, clock=clock)
    _keeps_its_four(app, slots, clock, other=3, host="10.0.0.2")
    assert app.closed == 0 and app._counts[0] is None
