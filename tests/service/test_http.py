"""The BentoML service over HTTP, in-process (ASGI): endpoints, status codes, and a generated-input fuzz."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recstack.serving.eventlog import FEEDBACK_LOG, read_events

NOW = "2026-01-01T00:00:00Z"


def test_recommend_similar_feedback_health(service_client) -> None:
    c = service_client
    health = c.post("/health", json={}).json()
    assert health["status"] == "ok" and health["models"]["retrieval"] and health["index"]["items"] > 0
    r = c.post("/recommend", json={"user_id": 1, "k": 5, "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["served_by"] == "funnel"
        and len(body["items"]) == 5
        and body["items"][0]["explanation"]["source"]
    )
    item = body["items"][0]["item_id"]
    r = c.post("/similar", json={"item_id": item, "k": 4, "method": "blend"})
    assert r.status_code == 200 and 0 < len(r.json()["items"]) <= 4
    r = c.post(
        "/feedback",
        json={"user_id": "1", "item_id": item, "event_type": "click", "timestamp": NOW, "position": 1},
    )
    assert r.status_code == 200 and r.json()["accepted"] is True
    logged = list(read_events(c.log_dir / FEEDBACK_LOG))
    assert logged[-1]["event_id"] == r.json()["event_id"]


def test_unknown_user_is_a_200_from_the_cold_start_path(service_client) -> None:
    r = service_client.post("/recommend", json={"user_id": "someone-new", "k": 3, "region": "nowhere"})
    assert (
        r.status_code == 200 and r.json()["served_by"].startswith("popular") and len(r.json()["items"]) == 3
    )


def test_bad_input_gets_a_4xx_naming_the_field(service_client) -> None:
    c = service_client
    cases = [
        ("/recommend", {"user_id": 1, "k": 0}, 400, "k"),
        ("/recommend", {"user_id": 1, "k": 101}, 422, "k"),
        ("/recommend", {"user_id": "", "k": 3}, 400, "user_id"),
        ("/recommend", {"user_id": "x" * 500}, 400, "user_id"),
        ("/recommend", {"user_id": 1, "surface": "moon"}, 400, "surface"),
        ("/recommend", {"user_id": 1, "surface": "related"}, 422, "current_item_id"),
        ("/recommend", {"user_id": 1, "exclude_item_ids": ["a"] * 2000}, 400, "exclude_item_ids"),
        ("/recommend", {"user_id": 1, "colour": "red"}, 400, "colour"),
        ("/recommend", {"k": 3}, 400, "user_id"),
        ("/similar", {"item_id": "no-such-item"}, 404, "item_id"),
        (
            "/feedback",
            {"user_id": 1, "item_id": 1, "event_type": "teleport", "timestamp": NOW},
            400,
            "event_type",
        ),
        (
            "/feedback",
            {"user_id": 1, "item_id": "no-such-item", "event_type": "click", "timestamp": NOW},
            422,
            "item_id",
        ),
        (
            "/feedback",
            {"user_id": 1, "item_id": 1, "event_type": "click", "timestamp": "2999-01-01T00:00:00Z"},
            422,
            "timestamp",
        ),
        (
            "/feedback",
            {"user_id": 1, "item_id": 1, "event_type": "click", "timestamp": "yesterday"},
            400,
            "timestamp",
        ),
    ]
    for route, payload, status, field in cases:
        r = c.post(route, json=payload)
        assert r.status_code == status, (route, payload, r.text)
        assert field in r.text, (route, payload, r.text)
    r = c.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.text
    # Oversized: refused before the body is read, whether it says its length or streams it.
    event = {
        "user_id": "1",
        "item_id": "1",
        "event_type": "click",
        "timestamp": NOW,
        "request_id": "x" * 400_000,
    }
    r = c.post("/feedback", json=event)
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():
        yield b'{"user_id": "1", "k": 3, "device": "'
        for _ in range(100):
            yield b"y" * 10_000
        yield b'"}'

    r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    logged = [e.get("request_id") for e in read_events(c.log_dir / FEEDBACK_LOG)]
    assert not any(x and len(x) > 64 for x in logged)  # nothing refused was written


def test_openapi_lists_every_endpoint(service_client) -> None:
    paths = service_client.get("/docs.json").json()["paths"]
    assert {"/recommend", "/similar", "/feedback", "/health"} <= set(paths)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
FIELDS = {
    "/recommend": [
        "user_id",
        "k",
        "surface",
        "current_item_id",
        "device",
        "region",
        "exclude_item_ids",
        "explain",
        "seed",
    ],
    "/similar": ["item_id", "k", "method", "exclude_item_ids"],
    "/feedback": [
        "user_id",
        "item_id",
        "event_type",
        "timestamp",
        "value",
        "request_id",
        "surface",
        "position",
    ],
}
plausible = {
    "user_id": st.sampled_from(["1", "2", "ghost", 1, 7]) | json_values,
    "item_id": st.sampled_from(["1", "2", 3]) | json_values,
    "current_item_id": st.sampled_from(["1", "5", "ghost"]) | json_values,
    "k": st.integers(-5, 2000) | json_values,
    "surface": st.sampled_from(["homepage", "up_next", "related", "x"]),
    "method": st.sampled_from(["embedding", "cooccurrence", "blend", "x"]),
    "event_type": st.sampled_from(["click", "skip", "x"]),
    "timestamp": st.sampled_from([NOW, "2999-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "nope"]) | json_values,
    "exclude_item_ids": st.lists(st.sampled_from(["1", "2", "ghost"]), max_size=5) | json_values,
}


@st.composite
def payloads(draw):
    route = draw(st.sampled_from(sorted(FIELDS)))
    names = draw(st.lists(st.sampled_from(FIELDS[route] + ["junk"]), unique=True, max_size=6))
    body = {n: draw(plausible.get(n, json_values)) for n in names}
    return route, body


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=payloads())
def test_generated_input_never_gets_a_5xx(service_client, case) -> None:
    route, body = case
    r = service_client.post(
        route, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"}
    )
    assert r.status_code < 500, (route, body, r.text)
    if r.status_code >= 400:
        assert "error" in r.text


def test_in_flight_counts_recommend_requests_while_the_worker_holds_them(service_client) -> None:
    """The batching window's signal: a recommend request counts from the app's first call to its
    response, other routes never, and a request that fails inside still leaves the count."""
    import asyncio

    from recstack.serving.middleware import InFlight

    seen: list[int] = []

    async def app(scope, receive, send) -> None:
        seen.append(InFlight.count)
        if scope["path"] == "/recommend" and scope.get("fail"):
            raise RuntimeError("inside the app")

    counted = InFlight(app)
    before = InFlight.count
    asyncio.run(counted({"type": "http", "path": "/recommend"}, None, None))
    asyncio.run(counted({"type": "http", "path": "/feedback"}, None, None))
    try:
        asyncio.run(counted({"type": "http", "path": "/recommend", "fail": True}, None, None))
    except RuntimeError:
        pass
    assert seen == [before + 1, before, before + 1] and InFlight.count == before
    # Served: the count is back to where it was once the responses are sent.
    assert service_client.post("/recommend", json={"user_id": "1", "k": 5}).status_code == 200
    assert InFlight.count == before
