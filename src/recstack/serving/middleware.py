"""ASGI middleware of the service: requests with bodies too large for any valid input get 413 before
they are read into memory (a 1 GB "feedback event" must not cost 1 GB); recommend requests are counted
while the worker holds them (the stage lanes' batching window reads the count)."""

from __future__ import annotations

import json
import os
from typing import Any

# The largest valid request (a recommend with max_exclude ids of max_id_length) is ~70 KB.
DEFAULT_MAX_BODY_BYTES = 256 * 1024
MAX_BODY_ENV = "RECSTACK_MAX_BODY_BYTES"


class BodyLimit:
    """413 for a body over ``max_bytes``: by its Content-Length at once, else while it streams in."""

    def __init__(self, app: Any, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes or int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY_BYTES))

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        # Read the body first (bounded), then hand it to the app: refusing mid-stream from inside the app
        # would surface as the framework's 500.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(
            {"error": f"request body larger than {self.max_bytes} bytes", "field": "body"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


RECOMMEND_PATH = "/recommend"


class InFlight:
    """Counts this worker's recommend requests from the moment its server hands them to the app (headers
    read) until their response is sent: what :class:`~recstack.serving.stages.StageLanes` reads to tell
    whether others are on their way (they are still being read and parsed before they reach the engine,
    where its own count starts).

    One count per worker process (an ASGI app per worker; updated on its event loop only).
    """

    count = 0

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != RECOMMEND_PATH:
            await self.app(scope, receive, send)
            return
        InFlight.count += 1
        try:
            await self.app(scope, receive, send)
        finally:
            InFlight.count -= 1
