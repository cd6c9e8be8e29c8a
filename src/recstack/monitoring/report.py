"""Evidently reports of numbers recstack computes itself (the quality metrics, by the offline evaluation's
code), so the HTML and JSON reports show exactly the figures the dashboard and the metrics files hold.

Evidently 0.7's metric API: a ``SingleValueMetric`` whose calculation returns a precomputed value (and,
optionally, a reference value shown beside it), and a ``DataframeMetric`` for a table.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.core.datasets import Dataset as _Dataset
from evidently.core.metric_types import (
    DataframeMetric,
    DataframeValue,
    MetricCalculation,
    SingleValueCalculation,
    SingleValueMetric,
    TMetricResult,
)
from evidently.core.report import Context


class RecstackValue(SingleValueMetric):
    """A scalar computed by recstack (e.g. NDCG@10 of served lists from feedback)."""

    title: str
    value: float
    reference: float | None = None  # e.g. the model's offline value, shown side by side


class RecstackValueCalculation(SingleValueCalculation[RecstackValue]):
    def calculate(
        self, context: Context, current_data: _Dataset, reference_data: _Dataset | None
    ) -> TMetricResult:
        current = self.result(self.metric.value)
        if self.metric.reference is None:
            return current
        return current, self.result(self.metric.reference)

    def display_name(self) -> str:
        return self.metric.title


class RecstackTable(DataframeMetric):
    """A table computed by recstack (rendered as an HTML table)."""

    title: str
    rows: list[dict[str, Any]]


class RecstackTableCalculation(MetricCalculation[DataframeValue, RecstackTable]):
    def calculate(
        self, context: Context, current_data: _Dataset, reference_data: _Dataset | None
    ) -> TMetricResult:
        return DataframeValue(display_name=self.display_name(), value=pd.DataFrame(self.metric.rows))

    def display_name(self) -> str:
        return self.metric.title


def values_report(
    values: dict[str, float | None],
    references: dict[str, float] | None = None,
    tables: dict[str, list[dict[str, Any]]] | None = None,
    titles: dict[str, str] | None = None,
) -> Any:
    """An Evidently snapshot of ``values`` (missing / NaN ones left out), each beside its reference value
    when ``references`` has one, then ``tables``."""
    references, tables, titles = references or {}, tables or {}, titles or {}
    metrics: list[Any] = [
        RecstackValue(title=titles.get(k, k), value=float(v), reference=references.get(k))
        for k, v in values.items()
        if v is not None and not math.isnan(float(v))
    ]
    metrics += [RecstackTable(title=name, rows=rows) for name, rows in tables.items() if rows]
    if not metrics:
        raise ValueError("nothing to report: every value is missing")
    # A report runs over a dataset; these metrics read none, so one placeholder row is enough.
    data = Dataset.from_pandas(pd.DataFrame({"placeholder": [0]}), data_definition=DataDefinition())
    return Report(metrics, include_tests=False).run(data, None)


def save(snapshot: Any, out_dir: Path, name: str) -> dict[str, Path]:
    """``name.html`` and ``name.json`` (Evidently writes nothing when given a Path: str it is)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"html": out_dir / f"{name}.html", "json": out_dir / f"{name}.json"}
    snapshot.save_html(str(paths["html"]))
    snapshot.save_json(str(paths["json"]))
    return paths
