"""One real ``bentoml serve`` on 127.0.0.1: the packaged model from the store, HTTP, Prometheus metrics."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from recstack.serving.local import bentoml_serve
from tests.conftest import PROJECT_ROOT

NOW = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def server(bento_store: Path, tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("serve_logs")
    env = {
        **os.environ,
        "BENTOML_HOME": str(bento_store),
        "RECSTACK_LOG_DIR": str(logs),
        "RECSTACK_MODEL": "recstack-funnel:test",
        "RECSTACK_SERVING_OVERRIDES": '{"limits": {"max_k": 20}}',
    }
    with bentoml_serve(
        "service:Recstack", PROJECT_ROOT / "bentos", env, logs / "server.out", ready_s=120
    ) as base:
        yield base, logs


def test_real_server_answers_and_exports_metrics(server) -> None:
    base, logs = server
    with httpx.Client(base_url=base, timeout=30) as c:
        r = c.post("/recommend", json={"user_id": 1, "k": 5})
        assert r.status_code == 200 and r.json()["served_by"] == "funnel" and len(r.json()["items"]) == 5
        assert c.post("/recommend", json={"user_id": 1, "k": 5}).json()["cached"] is True
        assert c.post("/recommend", json={"user_id": "new-user", "k": 5}).json()["fallbacks"] == [
            "cold_start_user"
        ]
        assert c.post("/recommend", json={"user_id": 1, "k": -1}).status_code == 400
        assert c.post("/recommend", json={"user_id": 1, "k": 21}).json()["field"] == "k"  # the env override
        ack = c.post(
            "/feedback",
            json={
                "user_id": 1,
                "item_id": r.json()["items"][0]["item_id"],
                "event_type": "click",
                "timestamp": NOW,
            },
        )
        assert ack.status_code == 200
        metrics = c.get("/metrics").text
    for name in (
        "recstack_stage_seconds_bucket",
        "recstack_batch_size_bucket",
        "recstack_fallbacks_total",
        "recstack_cache_requests_total",
        "recstack_served_total",
        "recstack_feedback_events_total",
        "bentoml_service_request_duration_seconds",
    ):
        assert name in metrics, name
    assert 'reason="cold_start_user"' in metrics and 'stage="ranking"' in metrics
    assert (logs / "feedback.jsonl").read_text().count("\n") == 1


@pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores"
)
def test_real_workers_are_each_bound_to_a_core_of_their_own(server) -> None:
    """The default ``RECSTACK_CPU_AFFINITY=auto`` with one worker per core: every thread of a worker on its
    core (the stage lanes' threads included, which start after the binding)."""
    from bentoml._internal.resource import CpuResource

    pytest.importorskip("psutil")
    if int(CpuResource.from_system()) != len(os.sched_getaffinity(0)):
        pytest.skip("a CPU quota below the cores: the default leaves placement to the OS")
    base, logs = server
    cores = sorted(os.sched_getaffinity(0))
    # Ready means one worker answers; another may still be importing (unbound until then), so wait for
    # all of them, and fail with what was seen last.
    deadline = time.monotonic() + 120
    while True:
        placement = _worker_placement(base.pid)
        bound = {
            pid: next(iter(p))[0] for pid, p in placement.items() if len(p) == 1 and len(next(iter(p))) == 1
        }
        if len(bound) == len(placement) == len(cores) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    tail = (logs / "server.out").read_text()[-2000:]
    assert len(placement) == len(cores), (placement, tail)
    assert len(bound) == len(placement), (placement, tail)
    assert sorted(bound.values()) == cores, (placement, tail)


def _worker_placement(server_pid: int) -> dict[int, set[tuple[int, ...]]]:
    """The cores each thread of each BentoML worker may run on, by worker pid."""
    import psutil

    placement = {}
    for p in psutil.Process(server_pid).children(recursive=True):
        try:
            if "_bentoml_impl.worker" not in " ".join(p.cmdline()):
                continue
            cores = set()
            for t in p.threads():
                try:
                    cores.add(tuple(sorted(os.sched_getaffinity(t.id))))
                except ProcessLookupError:  # a thread that ended meanwhile
                    continue
            placement[p.pid] = cores
        except psutil.NoSuchProcess:  # a worker restarting
            continue
    return placement
