"""One real ``bentoml serve`` on 127.0.0.1: the packaged model from the store, HTTP, Prometheus metrics."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import PROJECT_ROOT

NOW = "2026-01-01T00:00:00Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(bento_store: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    logs = tmp_path_factory.mktemp("serve_logs")
    env = {
        **os.environ,
        "BENTOML_HOME": str(bento_store),
        "RECSTACK_LOG_DIR": str(logs),
        "RECSTACK_MODEL": "recstack-funnel:test",
    }
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    out = (logs / "server.out").open("w")
    proc = subprocess.Popen(
        [bentoml, "serve", "service:Recstack", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT / "bentos",
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"bentoml serve exited: {(logs / 'server.out').read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"bentoml serve not ready in 120 s: {(logs / 'server.out').read_text()[-3000:]}")
    yield base, logs
    os.killpg(proc.pid, 15)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
    out.close()


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
        "recstack_fallbacks_total",
        "recstack_cache_requests_total",
        "recstack_served_total",
        "recstack_feedback_events_total",
        "bentoml_service_request_duration_seconds",
    ):
        assert name in metrics, name
    assert 'reason="cold_start_user"' in metrics and 'stage="ranking"' in metrics
    assert (logs / "feedback.jsonl").read_text().count("\n") == 1
