"""The ``ingest`` stage: read a source, validate it, write clean canonical tables, quarantine and report."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from recstack.data.adapters import load_source
from recstack.data.io import write_canonical
from recstack.data.partition import DEFAULT_PARTITION_ROWS, scratch_dir
from recstack.data.schema import USER_ID, DataError, RawData
from recstack.data.validate import ValidationReport, validate

REPORT_FILE = "validation_report.json"
QUARANTINE_DIR = "quarantine"


class IngestError(DataError):
    """The source failed validation (too many bad rows); the report and quarantine were still written."""


@dataclass
class IngestResult:
    """Where the ingest stage wrote its outputs, and what validation found."""

    out_dir: Path
    report: ValidationReport

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE


def _parse_as_of(as_of: str | datetime | None) -> datetime | None:
    if as_of is None or as_of == "":
        return None
    if isinstance(as_of, datetime):
        return as_of if as_of.tzinfo else as_of.replace(tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(str(as_of))
    except ValueError as exc:
        raise DataError(
            f"ingest.as_of must be an ISO-8601 date/time such as 2024-01-31, got {as_of!r}"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ingest(
    source: str,
    path: str | Path,
    out_dir: str | Path,
    *,
    options: dict[str, Any] | None = None,
    max_bad_fraction: float = 0.01,
    as_of: str | datetime | None = None,
    future_tolerance_hours: float = 24.0,
    deletion_list: str | Path | None = None,
    partition_rows: int | None = DEFAULT_PARTITION_ROWS,
) -> IngestResult:
    """Read ``source`` at ``path``, validate it and write the clean canonical dataset to ``out_dir``.

    Writes ``interactions.parquet``, ``items.parquet``, ``users.parquet``, ``dataset.json``,
    ``validation_report.json`` and ``quarantine/{interactions,items,users}.parquet`` (always present,
    possibly empty, so that the stage's outputs are stable).

    Args:
        source: a name from ``recstack.data.adapters.SOURCES`` (``synthetic``, ``movielens-100k``, ...).
        path: the source's file or directory.
        out_dir: usually ``artifacts/ingest``.
        options: adapter options (e.g. the column mapping of an ``events`` log).
        max_bad_fraction: fail when any table has a larger fraction of bad rows.
        as_of: reference "now" for the future-timestamp check (ISO date); default the current time.
        future_tolerance_hours: clock skew tolerated beyond ``as_of``.
        deletion_list: users to leave out entirely (their events and attributes): the service's deletion
            list (JSON lines with ``user_id``, as the admin "forget" operation writes) or plain lines of
            user ids. Missing file = nobody.
        partition_rows: a longer interaction log is validated in user parts of about this many rows, so
            memory stays bounded however long the log is (:mod:`recstack.data.partition`); 0 / None = one
            part in memory.

    Raises:
        IngestError: validation failed; the message names the problems, the report and the quarantine.
        DataError: the source cannot be read at all.
    """
    raw = load_source(source, path, **(options or {}))
    forgotten = read_deletion_list(deletion_list) if deletion_list is not None else set()
    if forgotten:
        raw = drop_users(raw, forgotten)
    out = Path(out_dir)
    # The scratch parts sit beside the output (same disk) and go once the clean tables are written.
    with scratch_dir(out.parent) as work:
        result = validate(
            raw,
            max_bad_fraction=max_bad_fraction,
            as_of=_parse_as_of(as_of),
            future_tolerance=timedelta(hours=future_tolerance_hours),
            partition_rows=partition_rows,
            workdir=work,
        )
        qdir = out / QUARANTINE_DIR
        qdir.mkdir(parents=True, exist_ok=True)
        for table, frame in result.quarantine.items():
            frame.write_parquet(qdir / f"{table}.parquet")
        report_path = out / REPORT_FILE
        report_path.write_text(result.report.model_dump_json(indent=2) + "\n")
        if not result.report.passed:
            raise IngestError(result.report.failure_message(str(report_path), str(qdir)))
        info = {
            "source": source,
            "path": str(path),
            "options": options or {},
            "rows": result.report.clean_stats,
            "forgotten_users": len(forgotten),
        }
        write_canonical(result.data, out, info=info)
    return IngestResult(out_dir=out, report=result.report)


def problem_table(report: ValidationReport) -> pl.DataFrame:
    """The report's problems and warnings as a table (table, problem, kind, count) for notebooks."""
    rows = [
        {"table": p.table, "problem": p.problem, "kind": kind, "count": p.count}
        for kind, group in (("error", report.problems), ("warning", report.warnings))
        for p in group
    ]
    schema = {"table": pl.String, "problem": pl.String, "kind": pl.String, "count": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def read_deletion_list(path: str | Path) -> set[str]:
    """User ids of a deletion list: JSON lines with ``user_id`` (other operations ignored) or plain ids."""
    p = Path(path)
    if not p.exists():
        return set()
    out: set[str] = set()
    for n, line in enumerate(p.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{p}:{n} is not a JSON record ({exc})") from None
            if record.get("op", "forget") == "forget":
                if "user_id" not in record:
                    raise DataError(f"{p}:{n} has no user_id")
                out.add(str(record["user_id"]))
        else:
            out.add(line)
    return out


def drop_users(raw: RawData, users: set[str]) -> RawData:
    """``raw`` without any row of ``users`` (ids compared as strings, as the service receives them)."""
    gone = pl.Series("gone", sorted(users), dtype=pl.String)

    def keep(frame: pl.LazyFrame | None) -> pl.LazyFrame | None:
        if frame is None:
            return None
        return frame.filter(~pl.col(USER_ID).cast(pl.String).is_in(gone.implode()))

    return replace(
        raw,
        interactions=keep(raw.interactions),
        users=keep(raw.users),
        notes=[*raw.notes, f"{len(users)} users on the deletion list were left out"],
    )


def ingest_metrics(report: ValidationReport) -> dict[str, Any]:
    """The flat numbers `dvc metrics show` displays for the ingest stage."""
    stats = report.clean_stats
    return {
        "interactions": stats["interactions"],
        "users": stats["users"],
        "items": stats["items"],
        "density": stats["density"],
        "bad_rows": sum(report.bad_rows.values()),
        "bad_fraction_interactions": report.bad_fraction["interactions"],
    }
