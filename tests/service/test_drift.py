"""Drift of the served ranking features against the training reference, with Evidently: a shifted
feature is flagged and named; a fresh sample of the same traffic is not."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recstack.monitoring.drift import feature_drift, reference_features
from recstack.monitoring.monitor import DriftSettings
from recstack.ranking.features import DENSE_FEATURES


@pytest.fixture(scope="module")
def reference(bundle_dir: Path, loaded_bundle) -> pl.DataFrame:
    users = [str(u) for u in loaded_bundle.tables.spec.user_id.values.to_list()]
    return reference_features(bundle_dir, users, k=10)


def test_same_traffic_is_not_flagged_and_a_shift_is(reference: pl.DataFrame, tmp_path: Path) -> None:
    cols = list(DENSE_FEATURES)
    assert reference.height >= 1000
    # Two random halves of the same served traffic: no drift. (Not alternate rows: within a list the
    # features follow the position, so odd and even positions are two different populations.)
    shuffled = reference.sample(fraction=1.0, shuffle=True, seed=0).with_row_index()
    odd, even = shuffled.filter(pl.col("index") % 2 == 1), shuffled.filter(pl.col("index") % 2 == 0)
    # At the monitor's threshold: tens of items and ~1,000 rows leave sampling noise of ~0.1 on their own.
    threshold = DriftSettings().threshold
    same = feature_drift(even, odd, cols, threshold=threshold)
    assert not same.drifted and same.drifted_columns() == [], same.table
    # A broken feature: one column shifted by two of its standard deviations.
    broken = odd.with_columns(pl.col("category_affinity") + 2 * reference["category_affinity"].std())
    result = feature_drift(even, broken, cols, threshold=threshold, drift_share=0.05)
    assert result.drifted_columns() == ["category_affinity"] and result.drifted
    assert result.table.row(0, named=True)["column"] == "category_affinity"  # sorted by score
    paths = result.save(tmp_path, "drift")
    assert all(p.stat().st_size > 0 for p in paths.values())
    assert "category_affinity" in paths["json"].read_text()


def test_bad_inputs_name_the_problem(reference: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="current data is empty"):
        feature_drift(reference, reference.head(0), list(DENSE_FEATURES))
    with pytest.raises(ValueError, match="lacks columns"):
        feature_drift(reference, reference.drop("pop_1d"), list(DENSE_FEATURES))
