"""Serving building blocks: the event log, the result cache, the serving requirements."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from recstack.serving.cache import ResultCache
from recstack.serving.eventlog import EventLog, read_events
from recstack.serving.package import serving_requirements


def test_event_log_appends_from_many_threads_and_survives_a_torn_line(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl")

    def writer(w: int) -> None:
        for i in range(50):
            log.append({"writer": w, "i": i, "payload": "x" * 100})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    events = list(read_events(tmp_path / "events.jsonl"))
    assert sorted((e["writer"], e["i"]) for e in events) == [(w, i) for w in range(4) for i in range(50)]
    with (tmp_path / "events.jsonl").open("ab") as f:
        f.write(b'{"writer": 9, "i"')  # a crash in the middle of a write
    assert len(list(read_events(tmp_path / "events.jsonl"))) == 200
    (tmp_path / "bad.jsonl").write_text('{"a": 1}\nnot json\n{"a": 2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        list(read_events(tmp_path / "bad.jsonl"))


def test_cache_ttl_jitter_lru_and_user_invalidation() -> None:
    now = [0.0]
    cache = ResultCache(ttl_seconds=10, jitter=0.2, max_entries=3, clock=lambda: now[0], seed=0)
    cache.put("u1", "a", 1)
    cache.put("u1", "b", 2)
    cache.put("u2", "a", 3)
    assert cache.get("u1", "a") == 1 and cache.get("u2", "a") == 3
    cache.put("u3", "a", 4)  # over capacity: the least recently used entry (u1, b) goes
    assert cache.get("u1", "b") is None and len(cache) == 3
    assert cache.invalidate_user("u1") == 1 and cache.get("u1", "a") is None
    now[0] = 7.9  # within 10 s * (1 - 0.2): still alive
    assert cache.get("u2", "a") == 3
    now[0] = 12.1  # past 10 s * (1 + 0.2): expired whatever the jitter
    assert cache.get("u2", "a") is None and cache.get("u3", "a") is None
    expiries = set()
    for i in range(50):
        cache.put("u", i, i)
        expiries.add(round(cache._data[("u", i)][0], 6))
    assert len(expiries) > 40  # jitter spreads the expiry times


def test_serving_requirements_hold_no_pipeline_tools() -> None:
    names = {r.split("==")[0] for r in serving_requirements()}
    assert {"torch", "torchrec", "faiss-cpu", "bentoml", "fbgemm-gpu-cpu"} <= names
    assert not names & {"jupyterlab", "dvc", "lightning", "streamlit", "papermill", "evidently", "fbgemm-gpu"}
