"""The canonical schema: every source is mapped onto these tables and column names.

Three tables:

* interactions: ``user_id, item_id, timestamp, event_type, value`` (one row per event).
* items: ``item_id, title, categories, created_at`` plus any source-specific attribute columns.
* users: ``user_id`` plus any source-specific attribute columns (age, gender, occupation, region...).

Ids keep the type the source gives (``Int64`` or ``String``); the features step builds the internal
integer indices. Timestamps are ``Datetime("us", "UTC")`` once validated.

Adapters return a :class:`RawData` whose columns already carry the canonical *names* but may still hold
raw values (strings as read from a text file, integers for epoch times): typing, parsing and rejecting
rows is the validation step's job, so that a bad row is quarantined with its original text, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

# --- interactions -------------------------------------------------------------------------------------
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
EVENT_TYPE = "event_type"
VALUE = "value"
INTERACTION_COLUMNS: tuple[str, ...] = (USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE, VALUE)

# --- items ---------------------------------------------------------------------------------------------
TITLE = "title"
CATEGORIES = "categories"  # List[String]: genres / categories, possibly empty
CREATED_AT = "created_at"  # Datetime(us, UTC), null when the source does not know it
ITEM_COLUMNS: tuple[str, ...] = (ITEM_ID, TITLE, CATEGORIES, CREATED_AT)

# --- users ---------------------------------------------------------------------------------------------
USER_COLUMNS: tuple[str, ...] = (USER_ID,)

# Validated dtypes.
TIMESTAMP_DTYPE = pl.Datetime("us", "UTC")
VALUE_DTYPE = pl.Float64
EVENT_TYPE_DTYPE = pl.String
CATEGORIES_DTYPE = pl.List(pl.String)
ID_DTYPES: tuple[pl.DataType, ...] = (pl.Int64, pl.String)

# Bookkeeping columns added by validation (source row number, problem label); never part of clean data.
ROW = "_row"
PROBLEM = "problem"

# Default event type when a source has none (MovieLens ratings are all "rating").
DEFAULT_EVENT_TYPE = "interaction"

# How timestamps given as numbers or strings are parsed:
#   "unix_s" / "unix_ms" / "unix_us": epoch numbers;  "iso": ISO-8601 text;  anything with "%": strftime.
TIMESTAMP_FORMATS = ("unix_s", "unix_ms", "unix_us", "iso")


@dataclass
class RawData:
    """What an adapter returns: canonical column names, values possibly still raw.

    Attributes:
        interactions: columns ``INTERACTION_COLUMNS`` (``value`` and ``event_type`` may be missing:
            validation fills ``1.0`` and ``DEFAULT_EVENT_TYPE``). Extra columns are dropped by validation.
        items: columns ``ITEM_COLUMNS`` where known plus attribute columns, or ``None`` if the source has
            no item table (then every interacted item is a catalog item and the unknown-item check is off).
        users: ``user_id`` plus attribute columns, or ``None``.
        timestamp_format: how non-datetime ``timestamp`` / ``created_at`` values are parsed (see
            ``TIMESTAMP_FORMATS``).
        source: the adapter name, recorded in reports.
        notes: free-text remarks for the validation report (e.g. "no timestamps: random order").
    """

    interactions: pl.LazyFrame
    items: pl.LazyFrame | None = None
    users: pl.LazyFrame | None = None
    timestamp_format: str = "unix_s"
    source: str = "unknown"
    notes: list[str] = field(default_factory=list)


@dataclass
class CanonicalData:
    """Validated tables in the canonical schema (what the ingest stage writes).

    Attributes:
        interactions: ``user_id, item_id, timestamp (Datetime UTC), event_type (String), value (Float64)``.
        items: ``item_id, title (String), categories (List[String]), created_at (Datetime UTC)`` + attributes.
        users: ``user_id`` + attributes.
    """

    interactions: pl.LazyFrame
    items: pl.LazyFrame
    users: pl.LazyFrame


class DataError(ValueError):
    """Raised for input data that cannot be used; the message names the file, column or problem."""
