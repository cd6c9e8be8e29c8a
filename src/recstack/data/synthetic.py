"""Synthetic interaction logs: the embedded default dataset and the generator of large scale-test logs.

The world model (all of it seeded, vectorised numpy; a Python loop runs per chunk of users, never per row):

* **Taste clusters.** Each latent cluster likes a few categories (a sparse Dirichlet draw) and, more strongly,
  its own "home" items within them. A user follows a primary cluster (with probability around
  ``cluster_affinity``), a secondary cluster, or plain global popularity; the choice is drawn per interaction.
* **Power-law popularity.** Item base weights follow Zipf's law, ``rank ** -popularity_exponent``.
* **Drift.** Every item has a popularity life cycle (a bump around a peak date). The period is cut into
  ``n_time_buckets`` buckets and an interaction draws its item from the weights of its timestamp's bucket.
* **Late items.** ``late_item_fraction`` of the catalog is released during the last ``late_item_window`` of
  the period with a novelty bump, and is only drawn in buckets that start at or after its release, so no
  interaction ever precedes an item's ``created_at``.
* **Users.** An active span inside the period, a heavy-tailed number of interactions (at least
  ``MIN_REGULAR_INTERACTIONS``), except ``short_history_fraction`` of users with 1-4 interactions in a short
  span. Attributes (age, gender, occupation, region) lean towards the user's primary cluster.
* **Time.** Session-like gaps (short within a session, long between) scaled into the user's span, in whole
  seconds and strictly increasing: a user's rows are in time order and no ``(user_id, item_id, timestamp)``
  repeats.
* **Events.** ``event_type`` is one of ``EVENT_TYPES`` (mostly "view" and "click"); interactions that follow
  the primary taste are more often likes, ratings and purchases. ``value`` is the star rating 1-5 for
  "rating" events and 1.0 for every other event.

The output is a canonical dataset directory (see :mod:`recstack.data.io`); ``interactions.parquet`` is a
directory holding one part file per chunk of ``chunk_users`` users.

Determinism: every random stream is a ``numpy.random.Generator(PCG64)`` seeded from
``SeedSequence(seed, spawn_key=(stream, chunk))``, so a chunk's rows do not depend on the order chunks are
processed in, and Parquet files are written with fixed settings; the same config gives byte-identical files
with the pinned numpy / pyarrow versions. ``chunk_users`` is part of a dataset's identity: changing it
changes the data, not only the part layout.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from recstack.data.io import DATASET_INFO_FILE, INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE
from recstack.data.schema import (
    CATEGORIES,
    CREATED_AT,
    EVENT_TYPE,
    ITEM_ID,
    TIMESTAMP,
    TITLE,
    USER_ID,
    VALUE,
)

# --- vocabulary ---------------------------------------------------------------------------------------
# Genre-like categories, each with theme words: titles of one category share these tokens.
GENRES: dict[str, tuple[str, ...]] = {
    "Action": ("Fury", "Strike", "Bullet", "Vengeance", "Rampage", "Thunder"),
    "Adventure": ("Quest", "Expedition", "Treasure", "Voyage", "Compass", "Jungle"),
    "Animation": ("Toon", "Pixel", "Doodle", "Sketch", "Cartoon", "Puppet"),
    "Comedy": ("Laugh", "Prank", "Giggle", "Blunder", "Chaos", "Wedding"),
    "Crime": ("Heist", "Mob", "Alibi", "Getaway", "Racket", "Snitch"),
    "Documentary": ("Planet", "Truth", "Inside", "Witness", "Evidence", "Portrait"),
    "Drama": ("Heart", "Family", "Silence", "Promise", "Letters", "Winter"),
    "Fantasy": ("Dragon", "Wizard", "Crown", "Sorcery", "Elven", "Rune"),
    "Horror": ("Blood", "Haunting", "Grave", "Curse", "Nightmare", "Ghost"),
    "Jazz": ("Jazz", "Swing", "Saxophone", "Blues", "Bebop", "Groove"),
    "Mystery": ("Riddle", "Clue", "Enigma", "Cipher", "Vanishing", "Detective"),
    "Romance": ("Love", "Kiss", "Valentine", "Paris", "Darling", "Summer"),
    "Sci-Fi": ("Galaxy", "Robot", "Quantum", "Starship", "Android", "Orbit"),
    "Thriller": ("Conspiracy", "Agent", "Pursuit", "Hostage", "Trap", "Target"),
    "Western": ("Outlaw", "Saloon", "Frontier", "Sheriff", "Canyon", "Gunslinger"),
    "Musical": ("Melody", "Broadway", "Chorus", "Dance", "Rhythm", "Song"),
    "Sports": ("Champion", "Goal", "Victory", "League", "Underdog", "Marathon"),
    "Cooking": ("Kitchen", "Recipe", "Feast", "Spice", "Bakery", "Grill"),
    "Travel": ("Island", "Passport", "Journey", "Coast", "Nomad", "Safari"),
    "History": ("Empire", "Revolution", "Dynasty", "Battle", "Ancient", "Pharaoh"),
    "Kids": ("Bunny", "Rainbow", "Teddy", "Playground", "Unicorn", "Puppy"),
    "Classical": ("Symphony", "Sonata", "Concerto", "Nocturne", "Overture", "Requiem"),
    "Hip-Hop": ("Beats", "Rhymes", "Block", "Flow", "Mixtape", "Street"),
    "Wellness": ("Mindful", "Yoga", "Balance", "Breathe", "Calm", "Healing"),
}
TITLE_ADJECTIVES: tuple[str, ...] = (
    "Midnight", "Silent", "Golden", "Broken", "Electric", "Hidden", "Last", "Wild", "Crimson", "Endless",
    "Lost", "Secret", "Frozen", "Burning", "Little", "Distant", "Velvet", "Iron", "Neon", "Quiet",
    "Northern", "Hollow", "Bright", "Eternal", "The", "The", "The",
)  # fmt: skip
TITLE_NOUNS: tuple[str, ...] = (
    "Sessions", "Stories", "Nights", "Dreams", "Road", "Chronicles", "Echoes", "Kingdom", "Garden", "City",
    "River", "Hearts", "Shadows", "Tales", "Mission", "Legacy", "Files", "Songs", "Lessons", "Game", "Code",
    "Harbor", "Horizon", "Secrets", "Hour", "Club", "Diaries", "Affair",
)  # fmt: skip
BRAND_PREFIXES: tuple[str, ...] = (
    "North", "Blue", "Red", "Silver", "Bright", "Lumen", "Orbit", "Cedar", "Atlas", "Nova",
)  # fmt: skip
BRAND_SUFFIXES: tuple[str, ...] = (" Studios", " Pictures", " Media", " Records", " Works")
GENDERS: tuple[str, ...] = ("F", "M", "X")
OCCUPATIONS: tuple[str, ...] = (
    "student", "engineer", "artist", "educator", "healthcare", "sales", "writer", "executive", "scientist",
    "lawyer", "homemaker", "retired", "programmer", "technician", "entertainment", "other",
)  # fmt: skip
REGIONS: tuple[str, ...] = (
    "US-West", "US-East", "US-South", "US-Midwest", "Canada", "UK", "Germany", "France", "Brazil", "India",
    "Japan", "Australia",
)  # fmt: skip
# Event types; index order is used by the tables below.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "like", "rating", "purchase")
RATING_EVENT = "rating"

# --- world-model constants (why each value, in one line) ----------------------------------------------
SECONDS_PER_DAY = 86_400
US_PER_SECOND = 1_000_000
CATALOG_HISTORY_DAYS = 3 * 365  # catalog items were released up to three years before the period
CLUSTER_SIZE_ALPHA = 4.0  # Dirichlet over cluster sizes: unequal but no empty cluster
CATEGORY_POPULARITY_ALPHA = 3.0  # Dirichlet over category sizes: some genres are bigger than others
CATEGORY_TASTE_ALPHA = 0.3  # small: a cluster likes a handful of categories
CATEGORY_TASTE_FLOOR = 0.02  # every cluster keeps some interest in every category
HOME_ITEM_BOOST = 6.0  # a cluster's own items beat same-category items of other clusters
CATEGORY_COOCCURRENCE_ALPHA = 0.5  # extra categories come from a few "neighbour" genres
EXTRA_CATEGORY_PROBS = (0.5, 0.35, 0.15)  # 0, 1 or 2 extra categories per item
AFFINITY_CONCENTRATION = 10.0  # Beta concentration of a user's primary-cluster probability
SECONDARY_SHARE = 0.6  # of the non-primary interactions, the share that follows the secondary cluster
LIFECYCLE_PEAK_RANGE = (-0.5, 1.5)  # catalog peaks (fraction of period) also fall outside it: some fade
LIFECYCLE_WIDTH_RANGE = (0.15, 0.5)  # catalog bump width, fraction of the period
LATE_PEAK_DELAY_RANGE = (0.0, 0.08)  # new releases peak soon after release
LATE_WIDTH_RANGE = (0.04, 0.15)  # ... and fade faster
LATE_NOVELTY_BOOST = 3.0  # new releases get attention
BRANDS_PER_CATEGORY = 4  # brands specialise in categories ...
BRAND_LOYALTY = 0.8  # ... with this share of a category's items
PRICE_MU_RANGE = (1.5, 3.5)  # log-price centre per category (about 4.5 to 33)
PRICE_SIGMA = 0.5
AGE_MEAN_RANGE = (24.0, 50.0)  # per-cluster mean age
AGE_SD = 11.0  # wide: age is only a hint of the cluster
AGE_RANGE = (16, 80)
FEMALE_PROB_RANGE = (0.3, 0.7)
NONBINARY_PROB = 0.02
OCCUPATION_CLUSTER_SHARE = 0.4  # attribute distribution = mix of a global and a cluster-specific one
REGION_CLUSTER_SHARE = 0.25
ATTRIBUTE_TASTE_ALPHA = 0.5
MIN_REGULAR_INTERACTIONS = 5  # regular users have at least this many; short histories have 1-4
SHORT_HISTORY_RANGE = (1, 4)
ACTIVITY_SIGMA = 1.1  # log-normal spread of regular users' activity: heavy-tailed
MAX_USER_INTERACTIONS = 100_000  # cap on one user; must stay below the shortest regular span in seconds
MAX_MEAN_INTERACTIONS = MAX_USER_INTERACTIONS // 20  # keeps the cap far in the tail of the activity law
MIN_REGULAR_SPAN_DAYS = 3
START_BETA = (0.5, 1.0)  # when regular users start (share of the period): a user base, slowly growing ...
SPAN_BETA = (1.0, 1.5)  # ... staying for a share of the rest: activity is roughly flat over the period
SHORT_SPAN_SECONDS = (3_600, 3 * SECONDS_PER_DAY)  # short-history users come and go within hours/days
SESSION_START_PROB = 0.2  # about five interactions per session
GAP_WITHIN_SESSION = 1.0  # relative mean gaps: a session's events are close together ...
GAP_BETWEEN_SESSIONS = 500.0  # ... sessions are far apart
# Event-type weights by what the interaction followed: primary taste, secondary taste, global popularity.
EVENT_WEIGHTS = np.array(
    [
        [0.50, 0.26, 0.10, 0.07, 0.07],
        [0.58, 0.26, 0.07, 0.05, 0.04],
        [0.68, 0.24, 0.03, 0.03, 0.02],
    ]
)
RATING_MEANS = np.array([4.0, 3.4, 2.9])  # liked taste -> higher stars
RATING_NOISE_SD = 0.9
# Output.
PART_FILE = "part-{:05d}.parquet"
ROW_GROUP_ROWS = 1 << 20
PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 3
GENERATOR_NAME = "recstack.data.synthetic"
GENERATOR_VERSION = 1  # bump when the same config would produce different data
# Bounds that keep memory bounded and the maths exact.
MAX_CHUNK_INTERACTIONS = 10_000_000  # ~150 bytes per row while a chunk is built
MAX_NICHE_TABLE = 20_000_000  # (clusters + 1) * buckets * categories * clusters floats
MAX_ITEM_TABLE = 100_000_000  # buckets * items floats

# Random streams: SeedSequence(seed, spawn_key=(stream, chunk)).
_STREAM_WORLD = 0
_STREAM_ITEMS = 1
_STREAM_USER_LATENT = 2
_STREAM_USERS = 3


class SyntheticConfig(BaseModel):
    """Settings of the synthetic generator; all of it is recorded in ``dataset.json``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_users: int = Field(3_000, gt=0, description="number of users (all of them interact)")
    n_items: int = Field(1_500, ge=2, description="catalog size, late items included")
    n_interactions: int = Field(
        150_000, gt=0, description="target total, met on average (a few % off for thousands of users)"
    )
    n_categories: int = Field(18, ge=1, le=10 * len(GENRES), description="genre-like categories")
    n_clusters: int = Field(12, ge=1, le=1_000, description="latent taste clusters")
    popularity_exponent: float = Field(1.0, ge=0.0, le=3.0, description="Zipf exponent; 0 = uniform")
    cluster_affinity: float = Field(0.8, ge=0.0, le=1.0, description="mean share following the primary taste")
    drift_strength: float = Field(0.8, ge=0.0, lt=1.0, description="0 = static popularity")
    start_date: date = Field(date(2024, 1, 1), description="first day of the period (UTC)")
    n_days: int = Field(365, ge=7, le=20 * 365, description="length of the period")
    n_time_buckets: int = Field(24, ge=1, le=1_000, description="popularity is constant within a bucket")
    late_item_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of items released late")
    late_item_window: float = Field(0.3, gt=0.0, le=1.0, description="late items come in this last share")
    short_history_fraction: float = Field(0.15, ge=0.0, lt=1.0, description="share of users with 1-4 events")
    seed: int = Field(42, ge=0)
    chunk_users: int = Field(20_000, gt=0, description="users per part file; part of the data's identity")

    @model_validator(mode="after")
    def _check_consistency(self) -> SyntheticConfig:
        n_late = round(self.late_item_fraction * self.n_items)
        if n_late >= self.n_items:
            raise ValueError(
                f"late_item_fraction={self.late_item_fraction} makes all {self.n_items} items late; "
                "lower it so that at least one item exists from the start"
            )
        minimum = _minimum_interactions(self.n_users, self.short_history_fraction)
        if self.n_interactions < minimum:
            raise ValueError(
                f"n_interactions={self.n_interactions} is too small for n_users={self.n_users}: regular users "
                f"have at least {MIN_REGULAR_INTERACTIONS} interactions, so about {minimum} are needed; "
                "raise n_interactions or lower n_users"
            )
        if _regular_mean(self) > MAX_MEAN_INTERACTIONS:
            raise ValueError(
                f"n_interactions / n_users = {self.n_interactions / self.n_users:,.0f} per user is too many "
                f"(at most about {MAX_MEAN_INTERACTIONS:,}); raise n_users or lower n_interactions"
            )
        per_chunk = min(self.chunk_users, self.n_users) * self.n_interactions / self.n_users
        if per_chunk > MAX_CHUNK_INTERACTIONS:
            best = max(1, int(MAX_CHUNK_INTERACTIONS * self.n_users / self.n_interactions))
            raise ValueError(
                f"chunk_users={self.chunk_users} gives about {per_chunk:,.0f} interactions per part, more than "
                f"{MAX_CHUNK_INTERACTIONS:,} (memory grows with it); use chunk_users <= {best}"
            )
        niche_table = (self.n_clusters + 1) * self.n_time_buckets * self.n_categories * self.n_clusters
        if niche_table > MAX_NICHE_TABLE:
            raise ValueError(
                f"n_clusters={self.n_clusters}, n_categories={self.n_categories} and "
                f"n_time_buckets={self.n_time_buckets} need a {niche_table:,}-entry sampling table (max "
                f"{MAX_NICHE_TABLE:,}); lower one of them"
            )
        if self.n_time_buckets * self.n_items > MAX_ITEM_TABLE:
            raise ValueError(
                f"n_time_buckets * n_items = {self.n_time_buckets * self.n_items:,} exceeds {MAX_ITEM_TABLE:,}; "
                "lower n_time_buckets"
            )
        return self


def _minimum_interactions(n_users: int, short_fraction: float) -> int:
    short_mean = sum(SHORT_HISTORY_RANGE) / 2
    return math.ceil(
        n_users * (short_fraction * short_mean + (1 - short_fraction) * MIN_REGULAR_INTERACTIONS)
    )


def _regular_mean(config: SyntheticConfig) -> float:
    """Mean interaction count a regular user needs so that the total meets ``n_interactions``."""
    short_mean = sum(SHORT_HISTORY_RANGE) / 2
    short_total = config.n_users * config.short_history_fraction * short_mean
    return (config.n_interactions - short_total) / (config.n_users * (1 - config.short_history_fraction))


# The embedded default dataset (data/raw/synthetic, tracked by data.dvc): values spelled out so that changing
# the class defaults never changes the tracked data.
DEFAULT_CONFIG = SyntheticConfig(
    n_users=3_000,
    n_items=1_500,
    n_interactions=150_000,
    n_categories=18,
    n_clusters=12,
    popularity_exponent=1.0,
    cluster_affinity=0.8,
    drift_strength=0.8,
    start_date=date(2024, 1, 1),
    n_days=365,
    n_time_buckets=24,
    late_item_fraction=0.15,
    late_item_window=0.3,
    short_history_fraction=0.15,
    seed=42,
    chunk_users=20_000,
)


# --- sampling helpers -----------------------------------------------------------------------------------
def _rng(seed: int, stream: int, chunk: int = 0) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(stream, chunk))))


@dataclass(frozen=True)
class _RowSampler:
    """Vectorised categorical draws where each draw picks its own row of a weight table.

    Keys are ``row + cumulative share`` flattened into one sorted array, so one ``searchsorted`` serves all
    rows. Zero-weight entries are never drawn: their key equals the previous one, and the result is clipped
    to the row's last positive entry (float rounding can overshoot a row's end).

    Attributes:
        keys: ``(rows * width,)`` sorted keys.
        last: ``(rows,)`` index of each row's last positive entry.
        width: entries per row.
    """

    keys: np.ndarray
    last: np.ndarray
    width: int

    @classmethod
    def from_weights(cls, weights: np.ndarray) -> _RowSampler:
        """Build from non-negative ``(rows, width)`` weights; every row needs a positive entry."""
        rows, width = weights.shape
        cum = np.cumsum(weights, axis=1)
        cum = np.minimum(cum / cum[:, -1:], 1.0)
        keys = (np.arange(rows, dtype=np.float64)[:, None] + cum).ravel()
        last = width - 1 - np.argmax(weights[:, ::-1] > 0, axis=1)
        return cls(keys=keys, last=last, width=width)

    def draw(self, rng: np.random.Generator, rows: np.ndarray) -> np.ndarray:
        """One draw per element of ``rows`` (int array of row indices); returns column indices."""
        found = np.searchsorted(self.keys, rows + rng.random(rows.size), side="right") - rows * self.width
        return np.clip(found, 0, self.last[rows])


_EVENT_SAMPLER = _RowSampler.from_weights(EVENT_WEIGHTS)


@dataclass(frozen=True)
class _World:
    """Latent parameters shared by items and users (C clusters, K categories)."""

    category_probs: np.ndarray  # (K,) share of items whose primary category is k
    cooccurrence: _RowSampler  # K rows: extra categories given the primary one
    taste: np.ndarray  # (C, K) cluster preference over categories, rows sum to 1
    cluster_probs: np.ndarray  # (C,) cluster sizes
    home_sampler: _RowSampler  # K rows: which cluster an item of category k belongs to
    brand_start: np.ndarray  # (K,) first of a category's preferred brands
    price_mu: np.ndarray  # (K,) log-price centre
    age_mean: np.ndarray  # (C,)
    female_prob: np.ndarray  # (C,)
    occupation: _RowSampler  # C rows
    region: _RowSampler  # C rows


def _mixed_attribute(rng: np.random.Generator, n_clusters: int, n_values: int, share: float) -> _RowSampler:
    base = rng.dirichlet(np.full(n_values, 2.0))
    own = rng.dirichlet(np.full(n_values, ATTRIBUTE_TASTE_ALPHA), size=n_clusters)
    return _RowSampler.from_weights((1 - share) * base + share * own)


def _make_world(config: SyntheticConfig) -> _World:
    rng = _rng(config.seed, _STREAM_WORLD)
    k, c = config.n_categories, config.n_clusters
    category_probs = rng.dirichlet(np.full(k, CATEGORY_POPULARITY_ALPHA))
    cooc = rng.dirichlet(np.full(k, CATEGORY_COOCCURRENCE_ALPHA), size=k) + 1e-9
    np.fill_diagonal(cooc, 0.0)  # an extra category is never the primary one
    taste = rng.dirichlet(np.full(k, CATEGORY_TASTE_ALPHA), size=c)
    taste = CATEGORY_TASTE_FLOOR / k + (1 - CATEGORY_TASTE_FLOOR) * taste
    cluster_probs = rng.dirichlet(np.full(c, CLUSTER_SIZE_ALPHA))
    # An item's home cluster is one that likes its category (and is big): P(c | k) ~ taste[c, k] * size[c].
    home = (taste * cluster_probs[:, None]).T
    n_brands = len(BRAND_PREFIXES) * len(BRAND_SUFFIXES)
    return _World(
        category_probs=category_probs,
        cooccurrence=_RowSampler.from_weights(cooc if k > 1 else np.ones((1, 1))),
        taste=taste,
        cluster_probs=cluster_probs,
        home_sampler=_RowSampler.from_weights(home),
        brand_start=rng.integers(0, n_brands, size=k),
        price_mu=rng.uniform(*PRICE_MU_RANGE, size=k),
        age_mean=rng.uniform(*AGE_MEAN_RANGE, size=c),
        female_prob=rng.uniform(*FEMALE_PROB_RANGE, size=c),
        occupation=_mixed_attribute(rng, c, len(OCCUPATIONS), OCCUPATION_CLUSTER_SHARE),
        region=_mixed_attribute(rng, c, len(REGIONS), REGION_CLUSTER_SHARE),
    )


# --- items ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Items:
    """Item arrays in item-index order (item_id = index + 1); times in seconds from the period start."""

    primary: np.ndarray  # (n,) primary category
    home: np.ndarray  # (n,) home cluster
    base_weight: np.ndarray  # (n,) Zipf weight (times the novelty boost for late items)
    created: np.ndarray  # (n,) int64 seconds; negative for catalog items
    peak: np.ndarray  # (n,) float seconds: centre of the popularity bump
    width: np.ndarray  # (n,) float seconds: width of the bump
    table: pa.Table  # the items.parquet table


def category_names(n_categories: int) -> list[str]:
    """Names of the first ``n_categories`` categories ("Action", ..., then "Action 2", ... past the list)."""
    genres = list(GENRES)
    return [
        genres[k % len(genres)] + ("" if k < len(genres) else f" {k // len(genres) + 1}")
        for k in range(n_categories)
    ]


def _strings(values: list[str] | tuple[str, ...], indices: np.ndarray) -> pa.Array:
    # Dictionary-decode in C++: much faster than building Python strings per row.
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values)).dictionary_decode()


def _timestamps(seconds_from_start: np.ndarray, config: SyntheticConfig) -> pa.Array:
    origin = int(
        datetime(
            config.start_date.year, config.start_date.month, config.start_date.day, tzinfo=UTC
        ).timestamp()
    )
    return pa.array((seconds_from_start + origin) * US_PER_SECOND, pa.timestamp("us", tz="UTC"))


def _period_seconds(config: SyntheticConfig) -> int:
    return config.n_days * SECONDS_PER_DAY


def _item_categories(rng: np.random.Generator, world: _World, primary: np.ndarray, k: int) -> pa.Array:
    """1-3 categories per item, the primary one first; extras come from the primary's neighbours."""
    n = primary.size
    n_extra = (
        rng.choice(len(EXTRA_CATEGORY_PROBS), size=n, p=EXTRA_CATEGORY_PROBS) if k > 1 else np.zeros(n, int)
    )
    first = world.cooccurrence.draw(rng, primary) if k > 1 else primary
    second = world.cooccurrence.draw(rng, primary) if k > 1 else primary
    n_extra = np.where((n_extra == 2) & (second == first), 1, n_extra)  # a repeat is dropped, not redrawn
    grid = np.stack([primary, first, second], axis=1)
    keep = np.arange(3)[None, :] <= n_extra[:, None]
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), _strings(category_names(k), grid[keep]))


def _item_titles(rng: np.random.Generator, primary: np.ndarray) -> pa.Array:
    """Titles "<Adjective> <theme word of the category> <Noun>", e.g. "Midnight Jazz Sessions"."""
    n = primary.size
    themes = list(GENRES.values())
    words_per_theme = len(themes[0])
    theme_words = [word for words in themes for word in words]
    theme = (primary % len(themes)) * words_per_theme + rng.integers(0, words_per_theme, size=n)
    parts = [
        _strings(TITLE_ADJECTIVES, rng.integers(0, len(TITLE_ADJECTIVES), size=n)),
        _strings(theme_words, theme),
        _strings(TITLE_NOUNS, rng.integers(0, len(TITLE_NOUNS), size=n)),
    ]
    return pc.binary_join_element_wise(*parts, " ")


def _item_brands_prices(
    rng: np.random.Generator, world: _World, primary: np.ndarray
) -> tuple[pa.Array, pa.Array]:
    n = primary.size
    brands = [p + s for p in BRAND_PREFIXES for s in BRAND_SUFFIXES]
    loyal = world.brand_start[primary] + rng.integers(0, BRANDS_PER_CATEGORY, size=n)
    brand = np.where(rng.random(n) < BRAND_LOYALTY, loyal, rng.integers(0, len(brands), size=n)) % len(brands)
    price = np.floor(np.exp(world.price_mu[primary] + PRICE_SIGMA * rng.standard_normal(n))) + 0.99
    return _strings(brands, brand), pa.array(price, pa.float64())


def _make_items(config: SyntheticConfig, world: _World) -> _Items:
    rng = _rng(config.seed, _STREAM_ITEMS)
    n, period = config.n_items, _period_seconds(config)
    primary = rng.choice(config.n_categories, size=n, p=world.category_probs)
    home = world.home_sampler.draw(rng, primary)
    base = (rng.permutation(n) + 1.0) ** -config.popularity_exponent
    late = np.zeros(n, dtype=bool)
    late[rng.permutation(n)[: round(config.late_item_fraction * n)]] = True
    window_start = int((1 - config.late_item_window) * period)
    created = np.where(
        late,
        rng.integers(window_start, period, size=n),
        -rng.integers(1, CATALOG_HISTORY_DAYS * SECONDS_PER_DAY, size=n),
    )
    peak = np.where(
        late,
        created + rng.uniform(*LATE_PEAK_DELAY_RANGE, size=n) * period,
        rng.uniform(*LIFECYCLE_PEAK_RANGE, size=n) * period,
    )
    width = period * np.where(
        late, rng.uniform(*LATE_WIDTH_RANGE, size=n), rng.uniform(*LIFECYCLE_WIDTH_RANGE, size=n)
    )
    base = np.where(late, base * LATE_NOVELTY_BOOST, base)
    categories = _item_categories(rng, world, primary, config.n_categories)
    title = _item_titles(rng, primary)
    brand, price = _item_brands_prices(rng, world, primary)
    table = pa.table(
        {
            ITEM_ID: pa.array(np.arange(1, n + 1), pa.int64()),
            TITLE: title,
            CATEGORIES: categories,
            CREATED_AT: _timestamps(created, config),
            "brand": brand,
            "price": price,
        }
    )
    return _Items(
        primary=primary, home=home, base_weight=base, created=created, peak=peak, width=width, table=table
    )


# --- the item sampler -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _ItemSampler:
    """Draws items given (taste source, time bucket) in two exact steps.

    A niche is (primary category, home cluster); G = K * C niches. Step 1 draws a niche from
    ``P(g | source s, bucket b) ~ preference[s, g] * mass[b, g]`` (source C is global popularity); step 2
    draws an item inside the niche from ``weight[b, i] / mass[b, g]``. Items are sorted by niche and, inside
    a niche, newest first, so the items not yet released in bucket b form a zero-weight prefix of the niche
    and are never drawn.

    Attributes:
        niches: ``(C + 1) * B`` rows over G niches.
        item_keys: ``(B * n,)`` sorted keys ``b * G + g + within-niche cumulative share``.
        order: ``(n,)`` item index at each sorted position.
        seg_start: ``(G,)`` first sorted position of each niche.
        seg_end: ``(G,)`` one past the last.
    """

    niches: _RowSampler
    item_keys: np.ndarray
    order: np.ndarray
    seg_start: np.ndarray
    seg_end: np.ndarray
    n_buckets: int

    def draw(self, rng: np.random.Generator, source: np.ndarray, bucket: np.ndarray) -> np.ndarray:
        """Item indices for arrays of taste sources and time buckets (same length)."""
        niche = self.niches.draw(rng, source * self.n_buckets + bucket)
        row = bucket * self.seg_start.size + niche
        found = np.searchsorted(self.item_keys, row + rng.random(row.size), side="right")
        position = np.clip(found - bucket * self.order.size, self.seg_start[niche], self.seg_end[niche] - 1)
        return self.order[position]


def _build_sampler(config: SyntheticConfig, world: _World, items: _Items) -> _ItemSampler:
    c, k, b_count, period = (
        config.n_clusters,
        config.n_categories,
        config.n_time_buckets,
        _period_seconds(config),
    )
    n, g_count = config.n_items, k * c
    niche = items.primary * c + items.home
    order = np.lexsort((-items.created, niche))
    niche_sorted = niche[order]
    sizes = np.bincount(niche, minlength=g_count)
    seg_end = np.cumsum(sizes)
    seg_start = seg_end - sizes
    created, base, peak, width = (
        a[order] for a in (items.created, items.base_weight, items.peak, items.width)
    )
    mass = np.zeros((b_count, g_count))
    item_keys = np.empty((b_count, n))
    for b in range(b_count):  # one loop per bucket bounds memory at a few item-sized arrays
        middle = (b + 0.5) * period / b_count
        trend = (1 - config.drift_strength) + config.drift_strength * np.exp(
            -0.5 * ((middle - peak) / width) ** 2
        )
        # Integer test: released at or before the bucket's first second, hence before every timestamp in it.
        weight = base * trend * (created * b_count <= b * period)
        cum = np.concatenate([[0.0], np.cumsum(weight)])
        before = cum[seg_start]
        mass[b] = cum[seg_end] - before
        within = cum[1:] - before[niche_sorted]  # exactly 0.0 on the unreleased prefix
        share = np.divide(within, mass[b][niche_sorted], out=np.zeros(n), where=mass[b][niche_sorted] > 0)
        item_keys[b] = b * g_count + niche_sorted + np.minimum(share, 1.0)
    niche_ids = np.arange(g_count)
    preference = np.ones((c + 1, g_count))  # the last row: global popularity
    preference[:c] = world.taste[:, niche_ids // c] * np.where(
        niche_ids % c == np.arange(c)[:, None], HOME_ITEM_BOOST, 1.0
    )
    weights = (preference[:, None, :] * mass[None, :, :]).reshape((c + 1) * b_count, g_count)
    return _ItemSampler(
        niches=_RowSampler.from_weights(weights),
        item_keys=item_keys.ravel(),
        order=order,
        seg_start=seg_start,
        seg_end=seg_end,
        n_buckets=b_count,
    )


# --- users --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Latents:
    primary: np.ndarray  # (u,) primary cluster
    secondary: np.ndarray  # (u,) secondary cluster
    affinity: np.ndarray  # (u,) probability an interaction follows the primary cluster


def _chunk_bounds(config: SyntheticConfig) -> list[tuple[int, int]]:
    return [
        (lo, min(lo + config.chunk_users, config.n_users))
        for lo in range(0, config.n_users, config.chunk_users)
    ]


def _user_latents(config: SyntheticConfig, world: _World, chunk: int, n: int) -> _Latents:
    # Its own stream, so that latent_user_clusters() can recompute it without generating interactions.
    rng = _rng(config.seed, _STREAM_USER_LATENT, chunk)
    c = config.n_clusters
    primary = rng.choice(c, size=n, p=world.cluster_probs)
    secondary = (primary + 1 + rng.integers(0, max(c - 1, 1), size=n)) % c if c > 1 else primary
    a = config.cluster_affinity
    if 0.0 < a < 1.0:
        affinity = rng.beta(a * AFFINITY_CONCENTRATION, (1 - a) * AFFINITY_CONCENTRATION, size=n)
    else:
        affinity = np.full(n, a)
    return _Latents(primary=primary, secondary=secondary, affinity=affinity)


def latent_user_clusters(config: SyntheticConfig | None = None) -> np.ndarray:
    """The hidden primary taste cluster of every user, in user_id order (user_id = index + 1).

    Ground truth for tests and for checking that learned embeddings recover the clusters; it is never
    written to the dataset.
    """
    config = config or DEFAULT_CONFIG
    world = _make_world(config)
    parts = [
        _user_latents(config, world, i, hi - lo).primary for i, (lo, hi) in enumerate(_chunk_bounds(config))
    ]
    return np.concatenate(parts)


_USER_SCHEMA = pa.schema(
    [
        (USER_ID, pa.int64()),
        ("age", pa.int64()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("region", pa.string()),
    ]
)


def _user_table(rng: np.random.Generator, world: _World, primary: np.ndarray, first_id: int) -> pa.Table:
    n = primary.size
    age = np.clip(np.rint(world.age_mean[primary] + AGE_SD * rng.standard_normal(n)), *AGE_RANGE)
    u = rng.random(n)
    gender = np.where(u < NONBINARY_PROB, 2, np.where(u < NONBINARY_PROB + world.female_prob[primary], 0, 1))
    return pa.table(
        {
            USER_ID: pa.array(np.arange(first_id, first_id + n), pa.int64()),
            "age": pa.array(age.astype(np.int64), pa.int64()),
            "gender": _strings(GENDERS, gender),
            "occupation": _strings(OCCUPATIONS, world.occupation.draw(rng, primary)),
            "region": _strings(REGIONS, world.region.draw(rng, primary)),
        }
    )


@dataclass(frozen=True)
class _Activity:
    counts: np.ndarray  # (u,) interactions per user
    span_start: np.ndarray  # (u,) int64 seconds from the period start
    span_length: np.ndarray  # (u,) int64 seconds, > counts


def _user_activity(rng: np.random.Generator, config: SyntheticConfig, n: int) -> _Activity:
    period = _period_seconds(config)
    short = rng.random(n) < config.short_history_fraction
    # Regular counts: MIN + scale * LogNormal, rounded stochastically so the mean is exact.
    scale = (_regular_mean(config) - MIN_REGULAR_INTERACTIONS) / math.exp(ACTIVITY_SIGMA**2 / 2)
    regular = MIN_REGULAR_INTERACTIONS + np.floor(
        scale * rng.lognormal(0.0, ACTIVITY_SIGMA, n) + rng.random(n)
    )
    counts = np.where(
        short,
        rng.integers(SHORT_HISTORY_RANGE[0], SHORT_HISTORY_RANGE[1] + 1, size=n),
        np.minimum(regular, MAX_USER_INTERACTIONS),
    ).astype(np.int64)
    min_span = min(MIN_REGULAR_SPAN_DAYS * SECONDS_PER_DAY, period)
    regular_start = np.floor((period - min_span) * rng.beta(*START_BETA, size=n))
    regular_length = min_span + np.floor((period - regular_start - min_span) * rng.beta(*SPAN_BETA, size=n))
    short_length = rng.integers(SHORT_SPAN_SECONDS[0], SHORT_SPAN_SECONDS[1] + 1, size=n)
    short_start = np.floor(rng.random(n) * (period - short_length + 1))
    start = np.where(short, short_start, regular_start).astype(np.int64)
    length = np.where(short, short_length, regular_length).astype(np.int64)
    return _Activity(counts=counts, span_start=start, span_length=length)


# --- interactions ---------------------------------------------------------------------------------------
def _interaction_times(rng: np.random.Generator, activity: _Activity) -> np.ndarray:
    """Strictly increasing whole-second times per user, inside the user's span, users in order.

    Each user gets ``count + 1`` session-like gaps (the last one trails the final event); the gaps are
    scaled to fill the span and each is at least one second, so times never repeat within a user.
    """
    n_gaps = activity.counts + 1
    owner = np.repeat(np.arange(n_gaps.size), n_gaps)
    first = np.cumsum(n_gaps) - n_gaps
    new_session = rng.random(owner.size) < SESSION_START_PROB
    gaps = rng.standard_exponential(owner.size) * np.where(
        new_session, GAP_BETWEEN_SESSIONS, GAP_WITHIN_SESSION
    )
    room = (activity.span_length - n_gaps) / np.add.reduceat(gaps, first)  # seconds left after 1 s per gap
    seconds = np.floor(gaps * room[owner]).astype(np.int64) + 1
    total = np.cumsum(seconds)
    within = total - (total - seconds)[first][owner]
    is_event = np.ones(owner.size, dtype=bool)
    is_event[first + n_gaps - 1] = False
    return (activity.span_start[owner] + within)[is_event]


def _interaction_table(
    rng: np.random.Generator,
    config: SyntheticConfig,
    sampler: _ItemSampler,
    latents: _Latents,
    activity: _Activity,
    first_id: int,
) -> pa.Table:
    times = _interaction_times(rng, activity)
    user = np.repeat(np.arange(activity.counts.size), activity.counts)
    bucket = times * config.n_time_buckets // _period_seconds(config)
    # Which taste this interaction follows: 0 primary cluster, 1 secondary, 2 global popularity.
    u, affinity = rng.random(user.size), latents.affinity[user]
    kind = np.where(u < affinity, 0, np.where(u < affinity + (1 - affinity) * SECONDARY_SHARE, 1, 2))
    source = np.where(
        kind == 0, latents.primary[user], np.where(kind == 1, latents.secondary[user], config.n_clusters)
    )
    item = sampler.draw(rng, source, bucket)
    event = _EVENT_SAMPLER.draw(rng, kind)
    stars = np.clip(np.rint(RATING_MEANS[kind] + RATING_NOISE_SD * rng.standard_normal(user.size)), 1, 5)
    value = np.where(event == EVENT_TYPES.index(RATING_EVENT), stars, 1.0)
    return pa.table(
        {
            USER_ID: pa.array(user + first_id, pa.int64()),
            ITEM_ID: pa.array(item + 1, pa.int64()),
            TIMESTAMP: _timestamps(times, config),
            EVENT_TYPE: _strings(EVENT_TYPES, event),
            VALUE: pa.array(value, pa.float64()),
        }
    )


# --- orchestration ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Catalog:
    world: _World
    items: _Items
    sampler: _ItemSampler


def _build_catalog(config: SyntheticConfig) -> _Catalog:
    world = _make_world(config)
    items = _make_items(config, world)
    return _Catalog(world=world, items=items, sampler=_build_sampler(config, world, items))


def _user_chunk(config: SyntheticConfig, catalog: _Catalog, chunk: int) -> tuple[pa.Table, pa.Table]:
    """(users, interactions) of one chunk; depends only on the config and the chunk number."""
    lo, hi = _chunk_bounds(config)[chunk]
    latents = _user_latents(config, catalog.world, chunk, hi - lo)
    rng = _rng(config.seed, _STREAM_USERS, chunk)
    users = _user_table(rng, catalog.world, latents.primary, lo + 1)
    activity = _user_activity(rng, config, hi - lo)
    interactions = _interaction_table(rng, config, catalog.sampler, latents, activity, lo + 1)
    return users, interactions


def _write_options() -> dict[str, Any]:
    return {"compression": PARQUET_COMPRESSION, "compression_level": PARQUET_COMPRESSION_LEVEL}


def _clear_interactions(path: Path) -> None:
    """Remove a previous run's interactions (a file or a directory of part files), never anything else."""
    if path.is_dir():
        parts = [p for p in path.iterdir() if p.is_file() and p.suffix == ".parquet"]
        if len(parts) < sum(1 for _ in path.iterdir()):  # checked before deleting anything
            raise FileExistsError(f"{path} holds files other than *.parquet parts; remove them and rerun")
        for part in parts:
            part.unlink()
        path.rmdir()
    elif path.exists():
        path.unlink()


def _dataset_info(config: SyntheticConfig, counts: dict[str, int]) -> dict[str, Any]:
    # Nothing time- or machine-dependent here: data.dvc records this file's md5 too.
    return {
        "source": "synthetic",
        "generator": GENERATOR_NAME,
        "generator_version": GENERATOR_VERSION,
        "config": config.model_dump(mode="json"),
        "counts": counts,
        "event_types": list(EVENT_TYPES),
        "value": f"star rating 1-5 for '{RATING_EVENT}' events, 1.0 for every other event",
    }


def generate_synthetic(
    out_dir: str | Path, config: SyntheticConfig | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Generate a synthetic canonical dataset directory.

    Writes ``items.parquet``, ``users.parquet``, ``interactions.parquet/part-NNNNN.parquet`` (one part per
    chunk of ``config.chunk_users`` users, rows ordered by user then time) and, last, ``dataset.json``. A
    previous dataset in ``out_dir`` is replaced. Memory is bounded by one chunk (~150 bytes per interaction) plus the
    item sampling table (~8 bytes * n_items * n_time_buckets).

    Args:
        out_dir: the dataset directory, created if needed.
        config: generator settings; ``DEFAULT_CONFIG`` when omitted.
        progress: show a progress bar over chunks.

    Returns:
        A summary: ``n_users``, ``n_items``, ``n_interactions``, ``n_parts``, ``n_late_items``,
        ``n_short_history_users``, ``seconds``, ``interactions_per_second`` and ``out_dir``.
    """
    config = config or DEFAULT_CONFIG
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # dataset.json is written last: its presence marks a complete dataset, so drop a previous one first.
    (out / DATASET_INFO_FILE).unlink(missing_ok=True)
    parts_dir = out / INTERACTIONS_FILE
    _clear_interactions(parts_dir)
    parts_dir.mkdir()
    catalog = _build_catalog(config)
    pq.write_table(catalog.items.table, out / ITEMS_FILE, row_group_size=ROW_GROUP_ROWS, **_write_options())
    n_interactions = n_short = 0
    chunks = range(len(_chunk_bounds(config)))
    with pq.ParquetWriter(out / USERS_FILE, _USER_SCHEMA, **_write_options()) as users_writer:
        for chunk in tqdm(chunks, desc="synthetic chunks", unit="chunk", disable=not progress):
            users, interactions = _user_chunk(config, catalog, chunk)
            users_writer.write_table(users, row_group_size=ROW_GROUP_ROWS)
            pq.write_table(
                interactions,
                parts_dir / PART_FILE.format(chunk),
                row_group_size=ROW_GROUP_ROWS,
                **_write_options(),
            )
            n_interactions += interactions.num_rows
            counts = pc.value_counts(interactions[USER_ID]).field("counts")
            n_short += int(pc.sum(pc.less_equal(counts, SHORT_HISTORY_RANGE[1])).as_py() or 0)
    counts = {
        "users": config.n_users,
        "items": config.n_items,
        "interactions": n_interactions,
        "parts": len(chunks),
    }
    info = _dataset_info(config, counts)
    (out / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    seconds = time.perf_counter() - started
    return {
        "out_dir": str(out),
        "n_users": config.n_users,
        "n_items": config.n_items,
        "n_interactions": n_interactions,
        "n_parts": len(chunks),
        "n_late_items": round(config.late_item_fraction * config.n_items),
        "n_short_history_users": n_short,
        "seconds": round(seconds, 3),
        "interactions_per_second": round(n_interactions / seconds) if seconds > 0 else None,
    }


def generate_default(out_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Generate the embedded default dataset (``DEFAULT_CONFIG``) into ``out_dir``; see generate_synthetic."""
    return generate_synthetic(out_dir, DEFAULT_CONFIG, progress=progress)
