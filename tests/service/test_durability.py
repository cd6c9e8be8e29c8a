"""kill -9 of a real ``bentoml serve`` (Redis online state, API keys on) while a load generator sends
feedback: after a restart, every acknowledged event is in the durable log and in the Redis stream exactly
once. The same server shows the API key and admin token checks, and that the token is never logged."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from recstack.online.local import redis_server
from recstack.serving.eventlog import read_events
from recstack.serving.local import bentoml_serve
from recstack.serving.online import materialize
from tests.conftest import PROJECT_ROOT

SENDERS = 4
LOAD_S = 3.0
API_KEY = "client-key-2"
API_HEADERS = {"X-API-Key": API_KEY}
ADMIN_TOKEN = "admin-token-never-logged"


def _send_until_refused(
    base: str, users: list[str], items: list[str], acked: list[str], sent: list[int]
) -> None:
    """One load-generator thread: feedback events until the server stops answering."""
    with httpx.Client(base_url=base, timeout=10, headers={"X-API-Key": API_KEY}) as c:
        n = 0
        while True:
            event = {
                "user_id": users[n % len(users)],
                "item_id": items[n % len(items)],
                "event_type": ("click", "skip", "watch")[n % 3],
                "timestamp": datetime.now(UTC).isoformat(),
            }
            n += 1
            sent.append(1)
            try:
                r = c.post("/feedback", json=event)
            except httpx.HTTPError:
                return  # the server is gone: whatever was not answered was not acknowledged
            if r.status_code == 200:
                acked.append(r.json()["event_id"])


def test_kill_9_loses_no_acknowledged_event(bento_store: Path, loaded_bundle, tmp_path: Path) -> None:
    users = [str(u) for u in loaded_bundle.tables.spec.user_id.values.to_list()[:50]]
    items = [str(i) for i in loaded_bundle.catalog.item_ids[1:60]]
    logs = tmp_path / "logs"
    with redis_server(tmp_path / "redis") as url:
        materialize(loaded_bundle, url, "k")
        env = {
            **os.environ,
            "BENTOML_HOME": str(bento_store),
            "RECSTACK_LOG_DIR": str(logs),
            "RECSTACK_MODEL": "recstack-funnel:test",
            "RECSTACK_SERVING_OVERRIDES": json.dumps(
                {
                    "online": {"backend": "redis", "redis_url": url, "namespace": "k"},
                    "api_keys_env": "RECSTACK_TEST_API_KEYS",
                }
            ),
            "RECSTACK_TEST_API_KEYS": f"client-key-1,{API_KEY}",
            "RECSTACK_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        acked: list[str] = []
        sent: list[int] = []
        with bentoml_serve("service:Recstack", PROJECT_ROOT / "bentos", env, tmp_path / "a.out") as base:
            body = {"user_id": users[0], "k": 3}
            assert httpx.post(f"{base}/recommend", json=body).status_code == 401
            assert httpx.post(f"{base}/recommend", json=body, headers={"X-API-Key": "x"}).status_code == 403
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            assert httpx.post(f"{base}/admin/flush_cache", json={}, headers=admin).status_code == 200
            assert httpx.post(f"{base}/admin/flush_cache", json={}, headers=API_HEADERS).status_code == 401
            threads = [
                threading.Thread(target=_send_until_refused, args=(base, users, items, acked, sent))
                for _ in range(SENDERS)
            ]
            for t in threads:
                t.start()
            time.sleep(LOAD_S)
            # kill -9, mid-load, of every process of the server (its workers run in their own sessions).
            server = psutil.Process(base.pid)
            for proc in [*server.children(recursive=True), server]:
                proc.send_signal(signal.SIGKILL)
            for t in threads:
                t.join(30)
        assert len(acked) > 50, "the load generator got too few acknowledgements to mean anything"

        # Restarted on the same log and Redis: the relay catches Redis up with the log.
        with bentoml_serve("service:Recstack", PROJECT_ROOT / "bentos", env, tmp_path / "b.out") as base:
            client = redis.Redis.from_url(url)
            deadline = time.monotonic() + 30
            while True:  # the relay runs every second
                streamed = [json.loads(f[b"event"])["event_id"] for _, f in client.xrange("k:events")]
                if set(acked) <= set(streamed) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            client.close()
            logged = [r["event_id"] for r in read_events(logs / "feedback.jsonl")]
            assert httpx.post(f"{base}/health", timeout=10).status_code == 200
    in_log, in_stream = Counter(logged), Counter(streamed)
    print(
        f"sent {len(sent)}, acknowledged {len(acked)}, in the log {len(in_log)}, in the stream {len(in_stream)}"
    )
    assert all(in_log[e] == 1 for e in acked), "an acknowledged event is missing from the log or repeated"
    assert all(in_stream[e] == 1 for e in acked), (
        "an acknowledged event is missing from the stream or repeated"
    )
    assert max(in_log.values()) == 1 and max(in_stream.values()) == 1  # nothing twice, acknowledged or not
    for out in ("a.out", "b.out"):
        assert ADMIN_TOKEN not in (tmp_path / out).read_text()  # the token is never logged


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
