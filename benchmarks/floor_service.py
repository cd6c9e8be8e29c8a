"""The framework's floor: a minimal BentoML endpoint returning a fixed list of 10 ids.

Served beside recstack by benchmarks/serving_load.py with the same worker settings (``recstack.serving.workers``), so the ratio of the two
measures what recstack's funnel costs on top of BentoML on this machine.

Two floors: :class:`Floor`, the idiomatic endpoint (returns a dict, which BentoML converts), and
:class:`FloorRaw`, which returns a ready response as recstack's endpoint does: BentoML's output conversion
builds the return type's JSON schema on every call, and recstack skips it, so against ``Floor`` that
saving counts in recstack's favour; ``FloorRaw`` (``serving_load.py --floor raw``) takes it out.
"""

from __future__ import annotations

import json

import bentoml
from starlette.responses import Response

from recstack.serving.workers import configure_worker, service_settings

configure_worker()
ITEMS = [str(i) for i in range(1, 11)]


def answer(user_id: str, k: int) -> dict:
    """Both floors' answer: the first ``k`` of 10 fixed ids."""
    return {"user_id": user_id, "items": [{"item_id": i} for i in ITEMS[:k]]}


@bentoml.service(name="floor", **service_settings())
class Floor:
    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: str, k: int = 10) -> dict:
        # A coroutine like recstack's endpoint, and the cheaper of BentoML's two paths (a thread-pool
        # endpoint measured ~5-10 % fewer requests/s here), so the floor is the stricter one.
        return answer(user_id, k)


@bentoml.service(name="floor-raw", **service_settings())
class FloorRaw:
    @bentoml.api(route="/recommend")
    async def recommend(self, user_id: str, k: int = 10) -> dict:
        # The same answer, serialized here and returned ready (as recstack's endpoint returns its own).
        return Response(json.dumps(answer(user_id, k)), media_type="application/json")
