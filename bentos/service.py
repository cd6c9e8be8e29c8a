"""recstack's BentoML service: ANN retrieval -> DLRM ranking -> policy re-ranking over HTTP.

The models, index, policy and serving settings come from one BentoML model (``recstack-funnel``, built by
the ``package`` stage from the pipeline's artifacts), so the bento carries exactly what was evaluated.
All the logic is :class:`recstack.serving.Recommender`; this file only maps HTTP onto it:

* ``POST /recommend``  ``POST /similar``  ``POST /feedback``  ``GET /healthz``-style ``POST /health``
* ``GET /metrics``: BentoML's Prometheus metrics plus recstack's (``recstack_*``), under ``bentoml serve``.

Input outside the schema gets 400 (BentoML's validation, naming the field), input outside the configured
limits 422 (``{"error", "field"}``), an unknown item 404 from /similar; nothing answers 5xx: an unexpected
error inside recommend is served from the popular list and counted as the ``internal_error`` fallback.

Environment: ``RECSTACK_MODEL`` (model tag, default ``recstack-funnel:latest``), ``RECSTACK_LOG_DIR``
(feedback and response logs, default ``./recstack-logs``), ``RECSTACK_TORCH_THREADS`` (default 1: requests
run side by side, each single-threaded), ``RECSTACK_WORKERS`` (worker processes, default one per core;
each has its own result cache and shares the logs), ``RECSTACK_THREADS`` (requests one worker handles at
once, default 8), ``RECSTACK_SERVING_OVERRIDES``
(JSON merged over the packaged serving settings and validated, e.g. ``{"cache": {"enabled": false}}`` for
load tests).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import bentoml
from starlette.responses import JSONResponse, Response

from recstack.serving.engine import Recommender, RequestError
from recstack.serving.schemas import (
    FeedbackAck,
    FeedbackEvent,
    RecommendRequest,
    RecommendResponse,
    SimilarRequest,
    SimilarResponse,
)
from recstack.serving.workers import service_settings, spread_connections

spread_connections()  # before the worker listens: see recstack.serving.workers

MODEL_TAG = os.environ.get("RECSTACK_MODEL", "recstack-funnel:latest")
log = logging.getLogger("recstack.service")


def _refused(endpoint: str, exc: RequestError, engine: Recommender) -> JSONResponse:
    engine.metrics.rejected.labels(endpoint=endpoint, field=exc.field).inc()
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


def _json(model: RecommendResponse | SimilarResponse | FeedbackAck) -> Response:
    # A ready Response skips BentoML's output conversion, which builds the model's JSON schema on every
    # call (to pick a media type): 2-3 % of a request's CPU.
    return Response(model.model_dump_json(), media_type="application/json")


@bentoml.service(name="recstack", **service_settings())
class Recstack:
    bundle = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(int(os.environ.get("RECSTACK_TORCH_THREADS", "1")))
        overrides = os.environ.get("RECSTACK_SERVING_OVERRIDES")
        self.engine = Recommender.load(
            self.bundle.path,
            log_dir=os.environ.get("RECSTACK_LOG_DIR", "recstack-logs"),
            overrides=json.loads(overrides) if overrides else None,
        )

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, **fields: Any) -> RecommendResponse:
        # A coroutine, not a thread-pool endpoint: the model stages run on the engine's lanes, so a
        # request only awaits them (planning and the policy are short enough for the event loop), and
        # no thread per waiting request competes for the GIL (~1 ms of CPU per request at concurrency 8).
        request = RecommendRequest.model_construct(**fields)
        try:
            return _json(await self.engine.recommend_async(request))
        except RequestError as exc:
            return _refused("recommend", exc, self.engine)
        except Exception:
            log.exception("recommend failed; serving the emergency list")
            return _json(self.engine.emergency(request))

    @bentoml.api(route="/similar", input_spec=SimilarRequest)
    def similar(self, **fields: Any) -> SimilarResponse:
        try:
            return _json(self.engine.similar(SimilarRequest.model_construct(**fields)))
        except RequestError as exc:
            return _refused("similar", exc, self.engine)

    @bentoml.api(route="/feedback", input_spec=FeedbackEvent)
    def feedback(self, **fields: Any) -> FeedbackAck:
        try:
            return _json(self.engine.feedback(FeedbackEvent.model_construct(**fields)))
        except RequestError as exc:
            return _refused("feedback", exc, self.engine)
        except OSError as exc:
            # Not written, so not acknowledged: the client must retry (the event is not lost silently).
            log.exception("feedback could not be stored")
            return JSONResponse({"error": f"event not stored, retry: {exc.strerror}"}, status_code=503)

    @bentoml.api(route="/health")
    def health(self) -> dict:
        return self.engine.health()
