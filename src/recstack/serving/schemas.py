"""HTTP request and response schemas of the service (pydantic), with the hard limits of every field.

The configured limits (``ServingConfig.limits``, e.g. a smaller ``max_k``) are checked on top of these by
the engine, which raises :class:`RequestError` naming the field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

HARD_MAX_K = 1000
HARD_MAX_ID = 128
HARD_MAX_LIST = 1000
HARD_MAX_LABEL = 64

Surface = Literal["homepage", "up_next", "related"]
EventType = Literal[
    "impression", "click", "watch", "like", "dislike", "skip", "add_to_cart", "purchase", "rating", "share"
]
POSITIVE_EVENTS = frozenset({"click", "watch", "like", "add_to_cart", "purchase", "share"})


def _id_from_int(v: Any) -> Any:
    # Ids may arrive as JSON numbers (MovieLens ids are integers); they are matched as strings.
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    return v


# No control characters: ids end up in logs and Prometheus-free text, never as label values.
Id = Annotated[
    str,
    BeforeValidator(_id_from_int),
    StringConstraints(min_length=1, max_length=HARD_MAX_ID, pattern=r"^[^\x00-\x1f\x7f]+$"),
]
Label = Annotated[
    str, StringConstraints(min_length=1, max_length=HARD_MAX_LABEL, pattern=r"^[^\x00-\x1f\x7f]+$")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Strict):
    """A request for ``k`` recommendations for one user on one surface."""

    user_id: Id = Field(description="the user; unknown users are served by the cold-start path")
    k: int = Field(10, ge=1, le=HARD_MAX_K, description="items wanted (the service's max_k may be lower)")
    surface: Surface = "homepage"
    current_item_id: Id | None = Field(None, description="the item on screen (up_next, related)")
    device: Label | None = None
    region: Label | None = Field(None, description="availability rules and the cold-start segment")
    exclude_item_ids: list[Id] = Field(default_factory=list, max_length=HARD_MAX_LIST)
    explain: bool = Field(
        False, description="say for every item which stage found it and which rules moved it"
    )
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="exploration seed (default: from the user)"
    )


class Explanation(BaseModel):
    source: str = Field(description="retrieval, neighbours, exploration, pin, sponsored, popular...")
    retrieval_rank: int | None = None
    retrieval_score: float | None = None
    ranker_score: float | None = None
    relevance: float | None = None
    actions: list[str] = Field(default_factory=list)


class RecommendedItem(BaseModel):
    item_id: str
    score: float | None = None
    explanation: Explanation | None = None


class Assignment(BaseModel):
    experiment: str
    variant: str


class RecommendResponse(BaseModel):
    request_id: str
    user_id: str
    surface: str
    items: list[RecommendedItem]
    served_by: str = Field(description="funnel | retrieval | popular_segment | popular_global | neighbours")
    fallbacks: list[str] = Field(default_factory=list, description="why a fallback served, if one did")
    experiments: list[Assignment] = Field(default_factory=list)
    model_version: str | None = None
    ranker_version: str | None = None
    policy: str | None = None
    cached: bool = False
    seed: int
    timings_ms: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)


class SimilarRequest(_Strict):
    item_id: Id
    k: int = Field(10, ge=1, le=HARD_MAX_K)
    method: Literal["embedding", "cooccurrence", "blend"] = Field(
        "embedding", description="two-tower neighbours, co-occurrence ('bought together'), or both blended"
    )
    exclude_item_ids: list[Id] = Field(default_factory=list, max_length=HARD_MAX_LIST)


class SimilarItem(BaseModel):
    item_id: str
    score: float
    source: str


class SimilarResponse(BaseModel):
    item_id: str
    method: str
    items: list[SimilarItem]
    fallbacks: list[str] = Field(default_factory=list)


class FeedbackEvent(_Strict):
    """What a user did with an item, e.g. a click on a recommendation."""

    user_id: Id
    item_id: Id
    event_type: EventType
    timestamp: datetime = Field(description="ISO 8601; naive times are UTC")
    value: float | None = Field(None, ge=-1e9, le=1e9, description="rating, watch seconds...")
    request_id: Label | None = Field(None, description="the response this event reacts to")
    surface: Surface | None = None
    position: int | None = Field(None, ge=1, le=HARD_MAX_K)


class ForgetRequest(_Strict):
    """Admin: forget a user (online state, cached results; the next ingest drops their events)."""

    user_id: Id


class FeedbackAck(BaseModel):
    event_id: str
    accepted: bool = True
    received_at: str
    state_updated: bool = Field(
        False, description="the event is already in the user's online history (their next recommendations)"
    )


class ErrorBody(BaseModel):
    error: str
    field: str | None = None
