"""recstack's BentoML service: ANN retrieval -> DLRM ranking -> policy re-ranking over HTTP.

The models, index, policy and serving settings come from one BentoML model (``recstack-funnel``, built by
the ``package`` stage from the pipeline's artifacts), so the bento carries exactly what was evaluated.
All the logic is :class:`recstack.serving.Recommender`; this file only maps HTTP onto it:

* ``POST /recommend``  ``POST /similar``  ``POST /feedback``  ``GET /healthz``-style ``POST /health``
* ``GET /metrics``: BentoML's Prometheus metrics plus recstack's (``recstack_*``), under ``bentoml serve``.
* ``POST /admin/forget`` (``{"user_id"}``), ``/admin/flush_cache``, ``/admin/reload``, ``/admin/materialize``:
  only with ``Authorization: Bearer $RECSTACK_ADMIN_TOKEN`` (401 without, 403 wrong or no token set).
  Client endpoints need ``X-API-Key`` when the serving settings name ``api_keys_env``.

Input outside the schema gets 400 (BentoML's validation, naming the field), input outside the configured
limits 422 (``{"error", "field"}``), an unknown item 404 from /similar; nothing answers 5xx: an unexpected
error inside recommend is served from the popular list and counted as the ``internal_error`` fallback.

Environment: ``RECSTACK_MODEL`` (model tag; default: the model the bento was built with, from a checkout
the store's latest; ``/admin/reload`` loads it, else the store's latest), ``RECSTACK_LOG_DIR``
(feedback and response logs, default ``./recstack-logs``), ``RECSTACK_TORCH_THREADS`` (default 1: requests
run side by side, each single-threaded), ``RECSTACK_WORKERS`` (worker processes, default one per core;
each has its own result cache and shares the logs), ``RECSTACK_CPU_AFFINITY`` (``auto``, the default:
each worker bound to a core of its own when one per core; ``worker``; ``none``), ``RECSTACK_THREADS``
(requests one worker handles at once, default 8), ``RECSTACK_REBALANCE`` (``on``, the default: a
worker holding more than its share of keep-alive connections closes one now and then, see
:mod:`recstack.serving.balance`; ``off``), ``RECSTACK_SERVING_OVERRIDES``
(JSON merged over the packaged serving settings and validated, e.g. ``{"cache": {"enabled": false}}`` for
load tests), ``RECSTACK_REDIS_URL`` (the online state's Redis when ``online.backend`` is ``redis``),
``RECSTACK_ADMIN_TOKEN`` (enables the admin operations), ``RECSTACK_SNAPSHOT_SPLITS`` (serve a snapshot of
these splits only, e.g. ``train,valid`` while the traffic simulator replays ``test``).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

# --- bento sources first (tests/service/test_export.py runs this block on its own)
# In a bento, the recstack sources it was built with sit beside this file. Put them ahead of any other
# recstack on the path: in the project's own environment an editable install of the working tree would
# otherwise be imported, and serving an older bento from the store would run today's code. (From
# bentos/ in a checkout there is no recstack folder here, and nothing changes.)
# The path alone is not enough: `bentoml serve recstack:<version>` first tries the tag as an import path
# (module `recstack`, attribute `<version>`), so the environment's recstack is already imported when this
# file runs, and every `from recstack...` below would resolve inside it. Forget that import.
_HERE = str(Path(__file__).resolve().parent)
if Path(_HERE, "recstack", "__init__.py").is_file():
    if sys.path[:1] != [_HERE]:
        sys.path.insert(0, _HERE)
    _loaded = sys.modules.get("recstack")
    if _loaded is not None and not str(Path(getattr(_loaded, "__file__", "") or "").resolve()).startswith(
        _HERE + os.sep
    ):
        for _name in [m for m in sys.modules if m == "recstack" or m.startswith("recstack.")]:
            del sys.modules[_name]
# --- end bento sources first

import bentoml
from starlette.responses import JSONResponse, Response

from recstack.online.store import OnlineStateUnavailable
from recstack.serving.auth import Refusal, check_admin, check_api_key
from recstack.serving.balance import Rebalance
from recstack.serving.engine import Recommender, RequestError
from recstack.serving.middleware import BodyLimit, InFlight
from recstack.serving.package import reload_tag, service_model_tag
from recstack.serving.schemas import (
    FeedbackAck,
    FeedbackEvent,
    ForgetRequest,
    RecommendRequest,
    RecommendResponse,
    SimilarRequest,
    SimilarResponse,
)
from recstack.serving.workers import configure_worker, service_settings

configure_worker()  # before the worker listens: see recstack.serving.workers

MODEL_TAG = service_model_tag(_HERE)  # RECSTACK_MODEL, else the model this bento was built with
log = logging.getLogger("recstack.service")


def _refused(endpoint: str, exc: RequestError, engine: Recommender) -> JSONResponse:
    engine.metrics.rejected.labels(endpoint=endpoint, field=exc.field).inc()
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


def _sent(ctx: bentoml.Context, response: Response) -> Response:
    # An endpoint that takes the context gets its status from it, even for a ready Response.
    ctx.response.status_code = response.status_code
    return response


def _refusal(r: Refusal) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if r.status == 401 else None
    return JSONResponse({"error": r.error}, status_code=r.status, headers=headers)


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
        self.engine = self._load(self.bundle.path)
        self._reloading = threading.Lock()

    @staticmethod
    def _load(path: str) -> Recommender:
        overrides = os.environ.get("RECSTACK_SERVING_OVERRIDES")
        splits = os.environ.get("RECSTACK_SNAPSHOT_SPLITS")  # e.g. "train,valid" for replays of "test"
        engine = Recommender.load(
            path,
            log_dir=os.environ.get("RECSTACK_LOG_DIR", "recstack-logs"),
            overrides=json.loads(overrides) if overrides else None,
            splits=tuple(s.strip() for s in splits.split(",")) if splits else None,
        )
        engine.requests_in_flight = lambda: InFlight.count
        return engine

    def _current(self) -> Recommender:
        """The engine; after an admin reload (asked of any worker), a new one is loaded in the background
        from the model store (``RECSTACK_MODEL``, else its latest model) while this one keeps serving."""
        engine = self.engine
        if engine.reload_requested and self._reloading.acquire(blocking=False):
            engine.reload_requested = False
            threading.Thread(target=self._reload, args=(engine,), daemon=True).start()
        return engine

    def _reload(self, old: Recommender) -> None:
        try:
            self.engine = self._load(bentoml.models.get(reload_tag()).path)
            log.info("models reloaded: %s", self.engine.bundle.card.get("models"))
            threading.Timer(30.0, old.close).start()  # requests still on the old engine finish first
        except Exception:
            log.exception("reload failed; the previous models keep serving")
        finally:
            self._reloading.release()

    def _client_refusal(self, ctx: bentoml.Context) -> JSONResponse | None:
        refusal = check_api_key(ctx.request.headers, self.engine.config.api_keys_env)
        return _refusal(refusal) if refusal else None

    @bentoml.api(route="/recommend", input_spec=RecommendRequest)
    async def recommend(self, ctx: bentoml.Context, **fields: Any) -> RecommendResponse:
        # A coroutine, not a thread-pool endpoint: the model stages run on the engine's lanes, so a
        # request only awaits them (planning and the policy are short enough for the event loop), and
        # no thread per waiting request competes for the GIL (~1 ms of CPU per request at concurrency 8).
        if refused := self._client_refusal(ctx):
            return _sent(ctx, refused)
        engine = self._current()
        request = RecommendRequest.model_construct(**fields)
        try:
            return _sent(ctx, _json(await engine.recommend_async(request)))
        except RequestError as exc:
            return _sent(ctx, _refused("recommend", exc, engine))
        except Exception:
            log.exception("recommend failed; serving the emergency list")
            return _sent(ctx, _json(engine.emergency(request)))

    @bentoml.api(route="/similar", input_spec=SimilarRequest)
    def similar(self, ctx: bentoml.Context, **fields: Any) -> SimilarResponse:
        if refused := self._client_refusal(ctx):
            return _sent(ctx, refused)
        engine = self._current()
        try:
            return _sent(ctx, _json(engine.similar(SimilarRequest.model_construct(**fields))))
        except RequestError as exc:
            return _sent(ctx, _refused("similar", exc, engine))

    @bentoml.api(route="/feedback", input_spec=FeedbackEvent)
    def feedback(self, ctx: bentoml.Context, **fields: Any) -> FeedbackAck:
        if refused := self._client_refusal(ctx):
            return _sent(ctx, refused)
        engine = self._current()
        try:
            return _sent(ctx, _json(engine.feedback(FeedbackEvent.model_construct(**fields))))
        except RequestError as exc:
            return _sent(ctx, _refused("feedback", exc, engine))
        except OSError as exc:
            # Not written, so not acknowledged: the client must retry (the event is not lost silently).
            log.exception("feedback could not be stored")
            return _sent(
                ctx, JSONResponse({"error": f"event not stored, retry: {exc.strerror}"}, status_code=503)
            )

    @bentoml.api(route="/health")
    def health(self) -> dict:
        return self._current().health()

    # ------------------------------------------------------------------------------- admin operations

    def _admin(self, ctx: bentoml.Context, operation: Any) -> Response:
        if refusal := check_admin(ctx.request.headers):
            return _sent(ctx, _refusal(refusal))
        try:
            return _sent(ctx, JSONResponse(operation(self._current())))
        except OnlineStateUnavailable as exc:
            return _sent(ctx, JSONResponse({"error": f"online state unavailable: {exc}"}, status_code=503))

    @bentoml.api(route="/admin/forget", input_spec=ForgetRequest)
    def admin_forget(self, ctx: bentoml.Context, **fields: Any) -> dict:
        user_id = ForgetRequest.model_construct(**fields).user_id
        return self._admin(ctx, lambda e: e.forget_user(user_id))

    @bentoml.api(route="/admin/flush_cache")
    def admin_flush_cache(self, ctx: bentoml.Context) -> dict:
        return self._admin(ctx, lambda e: e.flush_cache())

    @bentoml.api(route="/admin/reload")
    def admin_reload(self, ctx: bentoml.Context) -> dict:
        return self._admin(ctx, lambda e: e.request_reload())

    @bentoml.api(route="/admin/materialize")
    def admin_materialize(self, ctx: bentoml.Context) -> dict:
        return self._admin(ctx, lambda e: e.rematerialize())


Recstack.add_asgi_middleware(BodyLimit)  # 413 before an oversized body is read
Recstack.add_asgi_middleware(InFlight)  # recommend requests held by the worker: the batching window's signal
Recstack.add_asgi_middleware(Rebalance)  # keep-alive connections spread evenly over the workers
