"""Validation of any source: typing, problem detection, quarantine and a report.

Every row of every table ends up either in the clean canonical tables or in a quarantine table that keeps
its original values (as text) with its source row number and the list of problems found. Nothing is
dropped silently. The caller decides from :attr:`ValidationReport.passed` whether the bad fraction is
acceptable (threshold ``ingest.max_bad_fraction``).

Problems detected (per table):

* interactions: ``missing_user_id``, ``missing_item_id`` (null or blank), ``bad_timestamp`` (null or
  unparseable), ``future_timestamp`` (later than ``as_of`` + tolerance), ``bad_value`` (not a finite number),
  ``missing_event_type`` (blank where the source has the column), ``duplicate`` (same user, item, timestamp
  and event type as an earlier row), ``unknown_item`` (not in the item table, when there is one).
* items: ``missing_item_id``, ``duplicate_item_id`` (the first row wins).
* users: ``missing_user_id``, ``duplicate_user_id`` (the first row wins).

Warnings (rows kept, counted): unparseable ``created_at`` (set to null), id types that differ between
tables (both typed String), interacting users without a user row (they get null attributes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import BaseModel, Field

from recstack.data.parse import (
    cast_id,
    check_timestamp_format,
    ids_are_integers,
    is_blank,
    parse_float,
    parse_timestamp,
)
from recstack.data.partition import Parts, add_counts, count_rows, n_parts_for, partition, union_unique
from recstack.data.schema import (
    CATEGORIES,
    CATEGORIES_DTYPE,
    CREATED_AT,
    DEFAULT_EVENT_TYPE,
    EVENT_TYPE,
    ITEM_ID,
    PROBLEM,
    ROW,
    TIMESTAMP,
    TIMESTAMP_DTYPE,
    TITLE,
    USER_ID,
    VALUE,
    CanonicalData,
    DataError,
    RawData,
)

INTERACTION_PROBLEMS = (
    "missing_user_id",
    "missing_item_id",
    "bad_timestamp",
    "future_timestamp",
    "bad_value",
    "missing_event_type",
    "duplicate",
    "unknown_item",
)
ITEM_PROBLEMS = ("missing_item_id", "duplicate_item_id")
USER_PROBLEMS = ("missing_user_id", "duplicate_user_id")
TABLES = ("interactions", "items", "users")

# Temporary column names used while validating (never leave this module).
_U, _I, _T, _V, _E = "__user", "__item", "__ts", "__value", "__event"


class ProblemSummary(BaseModel):
    """Count and example rows of one problem in one table."""

    table: str
    problem: str
    count: int
    examples: list[dict[str, str | int | float | None]] = Field(default_factory=list)


class ValidationReport(BaseModel):
    """What validation found; written as ``artifacts/ingest/validation_report.json``."""

    source: str
    rows: dict[str, int]
    bad_rows: dict[str, int]
    bad_fraction: dict[str, float]
    max_bad_fraction: float
    passed: bool
    problems: list[ProblemSummary]
    warnings: list[ProblemSummary]
    notes: list[str]
    clean_stats: dict[str, int | float | str | None]

    def failure_message(self, report_path: str = "", quarantine_dir: str = "") -> str:
        """A one-paragraph explanation of why validation failed (empty if it passed)."""
        if self.passed:
            return ""
        parts = []
        for table in TABLES:
            frac = self.bad_fraction.get(table, 0.0)
            if frac > self.max_bad_fraction:
                counts = ", ".join(f"{p.problem}={p.count:,}" for p in self.problems if p.table == table)
                parts.append(
                    f"{self.bad_rows[table]:,} of {self.rows[table]:,} {table} rows ({frac:.2%}) are bad "
                    f"[{counts}]"
                )
        where = f" Report: {report_path}." if report_path else ""
        where += f" Bad rows kept in: {quarantine_dir}." if quarantine_dir else ""
        return (
            f"validation of source '{self.source}' failed: "
            + "; ".join(parts)
            + f", above the threshold max_bad_fraction={self.max_bad_fraction:.2%}.{where} Fix the source "
            "(or its column mapping / timestamp_format), or raise ingest.max_bad_fraction if these rows are "
            "expected."
        )


@dataclass
class ValidationResult:
    """Clean tables (collected), quarantined rows per table, and the report."""

    data: CanonicalData
    quarantine: dict[str, pl.DataFrame]
    report: ValidationReport


def _require(schema: pl.Schema, table: str, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in schema]
    if missing:
        raise DataError(
            f"{table} table lacks required column(s) {missing}; it has {list(schema.names())}. "
            "Check the source's column mapping (data.columns)."
        )


def _problem_column(flags: dict[str, pl.Expr]) -> pl.Expr:
    # "a;b" listing every problem of the row, null for a clean row.
    labels = [pl.when(f).then(pl.lit(name)) for name, f in flags.items()]
    joined = pl.concat_str(labels, separator=";", ignore_nulls=True)
    return pl.when(joined != "").then(joined).alias(PROBLEM)


def _as_text(column: str, dtype: pl.DataType) -> pl.Expr:
    # Quarantine keeps every original value as text, whatever its type, so nothing is lost or coerced.
    if isinstance(dtype, pl.List):
        return pl.col(column).cast(pl.List(pl.String)).list.join("|").alias(column)
    if isinstance(dtype, (pl.Struct, pl.Array)):
        return pl.col(column).map_elements(str, return_dtype=pl.String).alias(column)
    return pl.col(column).cast(pl.String)


def _split(
    annotated: pl.DataFrame, original: list[str], clean_exprs: list[pl.Expr]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    bad = annotated.filter(pl.col(PROBLEM).is_not_null())
    quarantine = bad.select(
        pl.col(ROW), pl.col(PROBLEM), *[_as_text(c, annotated.schema[c]) for c in original]
    )
    clean = annotated.filter(pl.col(PROBLEM).is_null()).select(clean_exprs)
    return clean, quarantine


def _summaries(
    table: str, quarantine: pl.DataFrame, problems: tuple[str, ...], n_examples: int
) -> list[ProblemSummary]:
    out = []
    for problem in problems:
        rows = quarantine.filter(pl.col(PROBLEM).str.split(";").list.contains(problem))
        if rows.height:
            examples = rows.head(n_examples).to_dicts()
            out.append(ProblemSummary(table=table, problem=problem, count=rows.height, examples=examples))
    return out


def _annotate_entities(
    table: pl.LazyFrame, name: str, id_col: str, typed_col: str, as_int: bool
) -> tuple[pl.Schema, list[str], pl.DataFrame]:
    """Type the id of an item / user table and flag missing and duplicate ids (the first row wins).

    Returns:
        The raw schema, the original column names, and the rows with ``_row``, the typed id and ``problem``.
    """
    schema = table.collect_schema()
    _require(schema, name, (id_col,))
    frame = table.with_row_index(ROW, offset=1).with_columns(
        cast_id(id_col, schema[id_col], as_int).alias(typed_col)
    )
    missing = is_blank(id_col, schema[id_col]) | pl.col(typed_col).is_null()
    flags = {
        f"missing_{id_col}": missing,
        f"duplicate_{id_col}": ~missing & ~pl.col(typed_col).is_first_distinct(),
    }
    return schema, list(schema.names()), frame.with_columns(_problem_column(flags)).collect()


def _validate_items(
    items: pl.LazyFrame, as_int: bool, fmt: str, n_examples: int
) -> tuple[pl.DataFrame, pl.DataFrame, list[ProblemSummary], list[ProblemSummary]]:
    schema, original, annotated = _annotate_entities(items, "items", ITEM_ID, _I, as_int)

    title = pl.col(TITLE).cast(pl.String) if TITLE in schema else pl.lit(None, dtype=pl.String)
    if CATEGORIES not in schema:
        cats = pl.lit([], dtype=CATEGORIES_DTYPE)
    elif schema[CATEGORIES] == pl.String:
        # A text column "Jazz|Blues": split on the conventional separator, drop empty pieces.
        cats = pl.col(CATEGORIES).str.split("|").list.eval(pl.element().filter(pl.element() != ""))
    else:
        cats = pl.col(CATEGORIES).cast(CATEGORIES_DTYPE)
    cats = cats.fill_null(pl.lit([], dtype=CATEGORIES_DTYPE))
    created = (
        parse_timestamp(CREATED_AT, schema[CREATED_AT], fmt)
        if CREATED_AT in schema
        else pl.lit(None, dtype=TIMESTAMP_DTYPE)
    )
    extra = [pl.col(c) for c in original if c not in (ITEM_ID, TITLE, CATEGORIES, CREATED_AT)]
    clean_exprs = [
        pl.col(_I).alias(ITEM_ID),
        title.alias(TITLE),
        cats.alias(CATEGORIES),
        created.alias(CREATED_AT),
        *extra,
    ]
    clean, quarantine = _split(annotated, original, clean_exprs)

    warnings = []
    if CREATED_AT in schema:
        raw_ok = (
            ~is_blank(CREATED_AT, schema[CREATED_AT])
            if schema[CREATED_AT] == pl.String
            else pl.col(CREATED_AT).is_not_null()
        )
        unparsed = annotated.filter(pl.col(PROBLEM).is_null() & raw_ok & created.is_null())
        if unparsed.height:
            ex = unparsed.select(
                pl.col(ROW), pl.col(ITEM_ID).cast(pl.String), pl.col(CREATED_AT).cast(pl.String)
            )
            warnings.append(
                ProblemSummary(
                    table="items",
                    problem="unparseable_created_at_set_null",
                    count=unparsed.height,
                    examples=ex.head(n_examples).to_dicts(),
                )
            )
    return clean, quarantine, _summaries("items", quarantine, ITEM_PROBLEMS, n_examples), warnings


def _validate_users(
    users: pl.LazyFrame, as_int: bool, n_examples: int
) -> tuple[pl.DataFrame, pl.DataFrame, list[ProblemSummary]]:
    _, original, annotated = _annotate_entities(users, "users", USER_ID, _U, as_int)
    extra = [pl.col(c) for c in original if c != USER_ID]
    clean, quarantine = _split(annotated, original, [pl.col(_U).alias(USER_ID), *extra])
    return clean, quarantine, _summaries("users", quarantine, USER_PROBLEMS, n_examples)


def _type_interactions(inter: pl.LazyFrame, *, user_int: bool, item_int: bool, fmt: str) -> pl.LazyFrame:
    """Source rows with their 1-based row number and typed ``_U, _I, _T, _V, _E`` beside the originals."""
    schema = inter.collect_schema()
    _require(schema, "interactions", (USER_ID, ITEM_ID, TIMESTAMP))
    has_value, has_event = VALUE in schema, EVENT_TYPE in schema
    return inter.with_row_index(ROW, offset=1).with_columns(
        cast_id(USER_ID, schema[USER_ID], user_int).alias(_U),
        cast_id(ITEM_ID, schema[ITEM_ID], item_int).alias(_I),
        parse_timestamp(TIMESTAMP, schema[TIMESTAMP], fmt).alias(_T),
        # A missing value means "an event happened": implicit feedback of weight 1.
        (parse_float(VALUE, schema[VALUE]) if has_value else pl.lit(None, dtype=pl.Float64))
        .fill_null(1.0)
        .alias(_V),
        (pl.col(EVENT_TYPE).cast(pl.String) if has_event else pl.lit(DEFAULT_EVENT_TYPE)).alias(_E),
    )


def _validate_interaction_part(
    part: pl.LazyFrame,
    schema: pl.Schema,
    *,
    latest_allowed: datetime,
    known_items: pl.Series | None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Flag the problems of one part (typed rows holding whole users) and split it into clean / quarantine.

    Duplicates are found within the part, which is exact because a duplicate shares its user with the row
    it repeats. The part is put back into source order first, so "the first occurrence stays clean".
    """
    original = list(schema.names())
    has_value, has_event = VALUE in schema, EVENT_TYPE in schema
    missing_user = is_blank(USER_ID, schema[USER_ID]) | pl.col(_U).is_null()
    missing_item = is_blank(ITEM_ID, schema[ITEM_ID]) | pl.col(_I).is_null()
    bad_ts = pl.col(_T).is_null()
    flags: dict[str, pl.Expr] = {
        "missing_user_id": missing_user,
        "missing_item_id": missing_item,
        "bad_timestamp": bad_ts,
        "future_timestamp": pl.col(_T) > pl.lit(latest_allowed, dtype=TIMESTAMP_DTYPE),
        "bad_value": (
            (~is_blank(VALUE, schema[VALUE]) & parse_float(VALUE, schema[VALUE]).is_null())
            if has_value
            else pl.lit(False)
        ),
        "missing_event_type": is_blank(EVENT_TYPE, schema[EVENT_TYPE]) if has_event else pl.lit(False),
        # Only rows whose key parsed can be duplicates; the first occurrence stays clean.
        "duplicate": ~(missing_user | missing_item | bad_ts) & ~pl.struct(_U, _I, _T, _E).is_first_distinct(),
        "unknown_item": (~missing_item & ~pl.col(_I).is_in(known_items.implode()))
        if known_items is not None
        else pl.lit(False),
    }
    annotated = part.sort(ROW).with_columns(_problem_column(flags)).collect()
    clean_exprs = [
        pl.col(_U).alias(USER_ID),
        pl.col(_I).alias(ITEM_ID),
        pl.col(_T).alias(TIMESTAMP),
        pl.col(_E).alias(EVENT_TYPE),
        pl.col(_V).alias(VALUE),
    ]
    return _split(annotated, original, clean_exprs)


@dataclass
class _InteractionTally:
    """What the report needs from the interaction parts, added up part by part."""

    n_examples: int
    users_table: pl.DataFrame | None
    clean_rows: int = 0
    interacting_users: int = 0
    first: datetime | None = None
    last: datetime | None = None
    items: pl.Series | None = None
    users: pl.Series | None = None
    events: pl.DataFrame | None = None
    summaries: dict[str, ProblemSummary] = field(default_factory=dict)
    without_user_row: int = 0
    without_examples: list = field(default_factory=list)

    def add(self, clean: pl.DataFrame, quarantine: pl.DataFrame) -> None:
        self.clean_rows += clean.height
        if clean.height:
            lo, hi = clean[TIMESTAMP].min(), clean[TIMESTAMP].max()
            self.first = lo if self.first is None else min(self.first, lo)
            self.last = hi if self.last is None else max(self.last, hi)
        self.items = union_unique(self.items, clean[ITEM_ID].unique())
        events = clean.group_by(EVENT_TYPE).len()
        self.events = add_counts(self.events, events, EVENT_TYPE, "len")
        for s in _summaries("interactions", quarantine, INTERACTION_PROBLEMS, self.n_examples):
            self.summaries[s.problem] = _merge_summary(self.summaries.get(s.problem), s, self.n_examples)
        part_users = clean.select(USER_ID).unique()
        self.interacting_users += part_users.height
        if self.users_table is None:
            self.users = union_unique(self.users, part_users[USER_ID])
        else:
            without = part_users.join(self.users_table.select(USER_ID), on=USER_ID, how="anti")[USER_ID]
            self.without_user_row += without.len()
            self.without_examples += without.head(self.n_examples).to_list()

    def problems(self) -> list[ProblemSummary]:
        return [self.summaries[p] for p in INTERACTION_PROBLEMS if p in self.summaries]


def _merge_summary(a: ProblemSummary | None, b: ProblemSummary, n_examples: int) -> ProblemSummary:
    # Examples are the first rows of the source that have the problem, whichever part they fell in.
    if a is None:
        return b
    examples = sorted([*a.examples, *b.examples], key=lambda e: e[ROW])[:n_examples]
    return ProblemSummary(table=a.table, problem=a.problem, count=a.count + b.count, examples=examples)


def _joint_int(frames: list[tuple[pl.LazyFrame | None, str]]) -> tuple[bool, bool]:
    """Whether an id shared by several tables can be Int64 in all of them, and whether types disagreed."""
    verdicts = [
        ids_are_integers(f, c, f.collect_schema()[c])
        for f, c in frames
        if f is not None and c in f.collect_schema()
    ]
    return all(verdicts), len(set(verdicts)) > 1


def _parse_errors_as_data_errors(func: Callable[..., ValidationResult]) -> Callable[..., ValidationResult]:
    """Turn a Polars parse failure of a source (e.g. a CSV line with more fields than the header) into a
    DataError naming the source, instead of a bare library traceback."""

    @functools.wraps(func)
    def wrapper(raw: RawData, **kwargs: Any) -> ValidationResult:
        try:
            return func(raw, **kwargs)
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(
                f"source '{raw.source}' could not be parsed into rows: {first}. Fix the file (e.g. a line "
                "with more fields than the header, or a wrong separator or format)."
            ) from exc

    return wrapper


@_parse_errors_as_data_errors
def validate(
    raw: RawData,
    *,
    max_bad_fraction: float = 0.01,
    as_of: datetime | None = None,
    future_tolerance: timedelta = timedelta(days=1),
    n_examples: int = 5,
    partition_rows: int | None = None,
    workdir: Path | None = None,
) -> ValidationResult:
    """Validate and type a source's tables.

    Args:
        raw: an adapter's output.
        max_bad_fraction: the largest acceptable fraction of bad rows in any table, in [0, 1].
        as_of: "now" for the future-timestamp check (default: the current UTC time).
        future_tolerance: clock skew allowed beyond ``as_of`` before a timestamp counts as future.
        n_examples: example rows kept per problem in the report.
        partition_rows: with ``workdir``, a longer interaction log is validated in user parts of about
            this many rows (:mod:`recstack.data.partition`), so memory does not grow with the log.
        workdir: scratch directory for the parts; the clean interactions of a partitioned log are
            returned as a scan of Parquet files there, so it must outlive the result's use.

    Returns:
        Clean tables, quarantined rows (original values as text, ``_row`` = 1-based source row, ``problem``
        = ";"-joined problem names) and the report. Does not raise on bad rows: check ``report.passed``.

    Raises:
        DataError: a required column is missing or a parameter is invalid.
    """
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise DataError(f"max_bad_fraction must be within [0, 1], got {max_bad_fraction}")
    check_timestamp_format(raw.timestamp_format)
    now = as_of or datetime.now(UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    latest_allowed = now + future_tolerance

    user_int, user_mixed = _joint_int([(raw.interactions, USER_ID), (raw.users, USER_ID)])
    item_int, item_mixed = _joint_int([(raw.interactions, ITEM_ID), (raw.items, ITEM_ID)])
    notes = list(raw.notes)
    if user_mixed:
        notes.append("user ids are integers in one table and text in another: all typed as String")
    if item_mixed:
        notes.append("item ids are integers in one table and text in another: all typed as String")

    problems: list[ProblemSummary] = []
    warnings: list[ProblemSummary] = []
    quarantine: dict[str, pl.DataFrame] = {}

    known_items = None
    if raw.items is not None:
        items, quarantine["items"], p, w = _validate_items(
            raw.items, item_int, raw.timestamp_format, n_examples
        )
        problems += p
        warnings += w
        known_items = items[ITEM_ID]
    users: pl.DataFrame | None = None
    user_problems: list[ProblemSummary] = []
    if raw.users is not None:
        users, quarantine["users"], user_problems = _validate_users(raw.users, user_int, n_examples)

    inter, quarantine["interactions"], tally = _validate_interaction_log(
        raw.interactions,
        user_int=user_int,
        item_int=item_int,
        fmt=raw.timestamp_format,
        latest_allowed=latest_allowed,
        known_items=known_items,
        users=users,
        n_examples=n_examples,
        partition_rows=partition_rows,
        workdir=workdir,
    )
    problems += tally.problems()
    if raw.items is None:
        notes.append("the source has no item table: the catalog is the set of interacted items")
        items = _items_from_interactions(tally.items)
        quarantine["items"] = pl.DataFrame(schema={ROW: pl.UInt32, PROBLEM: pl.String})
    if users is not None:
        problems += user_problems
        if tally.without_user_row:
            warnings.append(
                ProblemSummary(
                    table="users",
                    problem="interacting_users_without_user_row",
                    count=tally.without_user_row,
                    examples=[{USER_ID: str(v)} for v in tally.without_examples[:n_examples]],
                )
            )
    else:
        notes.append("the source has no user table: users have no attributes")
        users = tally.users.sort().to_frame(USER_ID)
        quarantine["users"] = pl.DataFrame(schema={ROW: pl.UInt32, PROBLEM: pl.String})

    rows = {
        "interactions": tally.clean_rows + quarantine["interactions"].height,
        "items": items.height + quarantine["items"].height,
        "users": users.height + quarantine["users"].height,
    }
    bad = {t: quarantine[t].height for t in TABLES}
    frac = {t: (bad[t] / rows[t] if rows[t] else 0.0) for t in TABLES}
    if rows["interactions"] == 0:
        raise DataError(f"source '{raw.source}' has no interaction rows at all")
    report = ValidationReport(
        source=raw.source,
        rows=rows,
        bad_rows=bad,
        bad_fraction=frac,
        max_bad_fraction=max_bad_fraction,
        passed=all(f <= max_bad_fraction for f in frac.values()) and tally.clean_rows > 0,
        problems=problems,
        warnings=warnings,
        notes=notes,
        clean_stats=_clean_stats(tally, items, users),
    )
    data = CanonicalData(interactions=inter, items=items.lazy(), users=users.lazy())
    return ValidationResult(data=data, quarantine=quarantine, report=report)


def _validate_interaction_log(
    interactions: pl.LazyFrame,
    *,
    user_int: bool,
    item_int: bool,
    fmt: str,
    latest_allowed: datetime,
    known_items: pl.Series | None,
    users: pl.DataFrame | None,
    n_examples: int,
    partition_rows: int | None,
    workdir: Path | None,
) -> tuple[pl.LazyFrame, pl.DataFrame, _InteractionTally]:
    """Validate the interaction log part by part; returns the clean rows, the quarantine and the tally."""
    schema = interactions.collect_schema()
    typed = _type_interactions(interactions, user_int=user_int, item_int=item_int, fmt=fmt)
    n_parts = n_parts_for(count_rows(interactions), partition_rows) if workdir is not None else 1
    parts = partition(typed, pl.col(_U), n_parts, workdir) if workdir is not None else Parts([typed])
    tally = _InteractionTally(n_examples=n_examples, users_table=users)
    clean_frames: list[pl.DataFrame] = []
    clean_files: list[Path] = []
    quarantines: list[pl.DataFrame] = []
    for i, part in enumerate(parts):
        clean, bad = _validate_interaction_part(
            part, schema, latest_allowed=latest_allowed, known_items=known_items
        )
        tally.add(clean, bad)
        quarantines.append(bad)
        if n_parts == 1:
            clean_frames.append(clean)
        else:
            assert workdir is not None
            clean_files.append(workdir / f"clean-{i:05d}.parquet")
            clean.write_parquet(clean_files[-1])
        del clean
    quarantine = pl.concat(quarantines).sort(ROW) if len(quarantines) > 1 else quarantines[0]
    inter = clean_frames[0].lazy() if n_parts == 1 else pl.scan_parquet(clean_files)
    return inter, quarantine, tally


def _items_from_interactions(item_ids: pl.Series) -> pl.DataFrame:
    return (
        item_ids.sort()
        .to_frame(ITEM_ID)
        .with_columns(
            pl.lit(None, dtype=pl.String).alias(TITLE),
            pl.lit([], dtype=CATEGORIES_DTYPE).alias(CATEGORIES),
            pl.lit(None, dtype=TIMESTAMP_DTYPE).alias(CREATED_AT),
        )
    )


def _clean_stats(
    tally: _InteractionTally, items: pl.DataFrame, users: pl.DataFrame
) -> dict[str, int | float | str | None]:
    n_u = tally.interacting_users
    n_i = items.height
    events = tally.events.sort(EVENT_TYPE) if tally.events is not None else pl.DataFrame()
    return {
        "interactions": tally.clean_rows,
        "interacting_users": n_u,
        "users": users.height,
        "items": n_i,
        "interacted_items": tally.items.len() if tally.clean_rows else 0,
        "density": tally.clean_rows / (n_u * n_i) if n_u and n_i else 0.0,
        "first_timestamp": str(tally.first) if tally.clean_rows else None,
        "last_timestamp": str(tally.last) if tally.clean_rows else None,
        "event_types": ", ".join(f"{r[EVENT_TYPE]}={r['len']}" for r in events.to_dicts()),
    }
