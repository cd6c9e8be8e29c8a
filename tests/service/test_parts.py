"""Serving building blocks: the event log, the result cache, the serving requirements."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
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


def test_event_log_writes_strict_json_one_record_per_line(tmp_path: Path) -> None:
    """What json.dumps(default=str) wrote, except NaN / infinity (not JSON) as null, numpy scalars as
    numbers; int keys become strings, anything else its str()."""

    class Tagged:
        def __str__(self) -> str:
            return "tagged!"

    log = EventLog(tmp_path / "events.jsonl", durable=False)
    log.append(
        {"id": 'é"x', 3: [1.5, float("nan"), float("inf"), None], "n": np.float32(0.25), "t": Tagged()}
    )
    log.append({"i": np.int64(7)})
    log.close()
    raw = (tmp_path / "events.jsonl").read_bytes()
    assert raw.count(b"\n") == 2 and raw.endswith(b"\n") and b"NaN" not in raw and b"Infinity" not in raw
    first, second = (json.loads(line) for line in raw.splitlines())  # strict JSON parses
    assert first == {"id": 'é"x', "3": [1.5, None, None, None], "n": 0.25, "t": "tagged!"}
    assert second == {"i": 7}
    assert list(read_events(tmp_path / "events.jsonl")) == [first, second]


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
    assert {"torch", "torchrec", "faiss-cpu", "bentoml", "fbgemm-gpu-cpu", "orjson"} <= names
    assert not names & {"jupyterlab", "dvc", "lightning", "streamlit", "papermill", "evidently", "fbgemm-gpu"}


def test_a_bento_starts_with_the_model_it_was_built_with(tmp_path: Path) -> None:
    """The package stage writes the model's tag beside service.py (and the bentofile ships it); the
    service starts with it unless RECSTACK_MODEL says otherwise, where ``recstack-funnel:latest`` would
    resolve against the whole store (an older bento serving a newer model). /admin/reload moves on to
    the store's latest on purpose."""
    import yaml

    from recstack.serving.package import (
        MODEL_TAG_FILE,
        reload_tag,
        service_model_tag,
        stage_build_context,
    )
    from tests.conftest import PROJECT_ROOT

    src = tmp_path / "src" / "recstack"
    src.mkdir(parents=True)
    (src / "__init__.py").write_text("")
    stage_build_context(PROJECT_ROOT / "bentos", src, tmp_path / "build", "recstack-funnel:v1")
    build = tmp_path / "build"
    assert (build / MODEL_TAG_FILE).read_text().strip() == "recstack-funnel:v1"
    assert MODEL_TAG_FILE in yaml.safe_load((build / "bentofile.yaml").read_text())["include"]
    assert service_model_tag(build, environ={}) == "recstack-funnel:v1"
    assert service_model_tag(build, environ={"RECSTACK_MODEL": "recstack-funnel:v0"}) == "recstack-funnel:v0"
    assert service_model_tag(PROJECT_ROOT / "bentos", environ={}) == "recstack-funnel:latest"  # a checkout
    assert reload_tag(environ={}) == "recstack-funnel:latest"
    assert reload_tag(environ={"RECSTACK_MODEL": "recstack-funnel:v0"}) == "recstack-funnel:v0"
    (build / MODEL_TAG_FILE).write_text("../../etc:passwd\n")
    with pytest.raises(ValueError, match=f"{MODEL_TAG_FILE} holds '../../etc:passwd'"):
        service_model_tag(build, environ={})
