"""The features stage's plot tables stay drawable at any catalog size."""

from __future__ import annotations

import numpy as np
import polars as pl

from recstack.features.build import pop_column, popularity_curve


def test_popularity_curve_keeps_every_rank_of_a_small_catalog() -> None:
    items = pl.DataFrame({pop_column(None): [5, 0, 3, 9]})
    curve = popularity_curve(items)
    assert curve["rank"].to_list() == [1, 2, 3] and curve["interactions"].to_list() == [9, 5, 3]


def test_popularity_curve_of_a_large_catalog_is_log_sampled() -> None:
    counts = np.random.default_rng(0).zipf(1.5, 300_000) % 10_000  # some items never interacted (0)
    items = pl.DataFrame({pop_column(None): counts})
    full = popularity_curve(items, max_points=10**9)
    curve = popularity_curve(items, max_points=500)
    assert 250 <= curve.height <= 500  # Altair refuses charts above 5000 rows
    assert curve["rank"][0] == 1 and curve["rank"][-1] == full.height  # head and tail are kept
    # Sampled points lie on the full curve.
    joined = curve.join(full, on="rank", suffix="_full")
    assert (joined["interactions"] == joined["interactions_full"]).all()
