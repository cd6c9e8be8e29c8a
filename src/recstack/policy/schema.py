"""The declarative re-ranking policy: a pydantic schema for the YAML in ``params.yaml: policy`` (or a file).

Every rule is optional; an empty policy leaves the ranking untouched. Rules run in a fixed order (filters,
business rules, freshness, diversity, exploration, pins and sponsored slots) so that a policy file reads
as a list of independent switches, not a program.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recstack.settings import load_validated


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AttributeMatch(_Rule):
    """Items whose ``attribute`` (a category name or an item column) takes one of ``values``."""

    attribute: str = Field(description="'category' (the item's categories) or an item column, e.g. 'brand'")
    values: list[str] = Field(min_length=1)


class Boost(AttributeMatch):
    """Multiply the score of matching items (``factor > 1`` boosts, ``< 1`` buries)."""

    factor: float = Field(gt=0)


class Pin(_Rule):
    """Put ``item_id`` at ``position`` (1-based) when it is recommendable for the user."""

    item_id: str
    position: int = Field(ge=1)


class SponsoredSlot(_Rule):
    """Fill ``position`` with the best-scored item among ``item_ids`` the user has not seen."""

    position: int = Field(ge=1)
    item_ids: list[str] = Field(min_length=1)


class Diversity(_Rule):
    """MMR re-ranking (``lambda_`` 1 = pure relevance) and / or a cap of items per category."""

    method: Literal["mmr", "category_cap", "none"] = "mmr"
    lambda_: float = Field(0.7, ge=0.0, le=1.0, alias="lambda")
    max_per_category: int | None = Field(None, ge=1)
    window: int = Field(50, ge=1, description="candidates the diversity step considers")


class Freshness(_Rule):
    """Boost items created (or first seen) less than ``max_age_days`` ago by ``factor``."""

    max_age_days: float = Field(gt=0)
    factor: float = Field(1.2, gt=0)


class Exploration(_Rule):
    """Give a ``fraction`` of the slots from ``start_position`` on to uncertain or new items.

    The choice is seeded per request (user, surface, request seed) so a response can be reproduced.
    """

    fraction: float = Field(0.1, ge=0.0, le=1.0)
    start_position: int = Field(5, ge=1)
    max_item_interactions: int = Field(5, ge=0, description="items with at most this many are 'uncertain'")


class ColdStart(_Rule):
    """Fallback chain for unknown users: popular within their context segment, then global popular."""

    segment_by: list[str] = Field(default_factory=lambda: ["region"])
    popularity_window_days: int | None = Field(30, ge=1)


class Policy(_Rule):
    """A whole re-ranking policy. Every field is optional."""

    name: str = "default"
    filter_seen: bool = True
    exclude_item_ids: list[str] = Field(default_factory=list)
    exclude: list[AttributeMatch] = Field(default_factory=list, description="drop items matching any")
    available_regions: dict[str, list[str]] = Field(
        default_factory=dict, description="item_id -> regions where it may be shown (absent = everywhere)"
    )
    boosts: list[Boost] = Field(default_factory=list)
    freshness: Freshness | None = None
    diversity: Diversity | None = None
    exploration: Exploration | None = None
    pins: list[Pin] = Field(default_factory=list)
    sponsored: list[SponsoredSlot] = Field(default_factory=list)
    cold_start: ColdStart = Field(default_factory=ColdStart)

    @model_validator(mode="after")
    def _distinct_positions(self) -> Policy:
        positions = [p.position for p in self.pins] + [s.position for s in self.sponsored]
        dupes = sorted({p for p in positions if positions.count(p) > 1})
        if dupes:
            raise ValueError(f"pins and sponsored slots claim the same positions {dupes}")
        return self


class PolicyError(ValueError):
    """A policy file or mapping that does not validate; the message names the field and the problem."""


def load_policy(source: str | Path | dict | None) -> Policy:
    """A policy from a mapping, a YAML file path, or None (the default policy)."""
    return load_validated(Policy, source, "policy", PolicyError)
