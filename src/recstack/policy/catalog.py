"""Build the policy's view of the catalog from the ``features`` stage's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recstack.data.io import ITEMS_FILE, read_columns
from recstack.features.transform import ITEM_AGE, ITEM_IDX, pop_column
from recstack.models.inputs import FeatureTables
from recstack.policy.rerank import PolicyCatalog


def policy_catalog(tables: FeatureTables, features_dir: str | Path) -> PolicyCatalog:
    """Raw ids, categories, categorical attributes, age and popularity of every item, by item index."""
    n = tables.items.n_items
    spec = tables.spec
    items = read_columns(
        Path(features_dir) / ITEMS_FILE, [ITEM_IDX, *spec.item_categorical, ITEM_AGE, pop_column(None)]
    )
    frame = pl.DataFrame({ITEM_IDX: np.arange(n, dtype=np.int32)}).join(
        items.unique(ITEM_IDX, keep="first"), on=ITEM_IDX, how="left"
    )
    ids = np.array([""] + [str(v) for v in spec.item_id.values.to_list()], dtype=object)
    # Drop column 0 (unknown category): policy rules name real categories only.
    cats = tables.category_matrix()[:, 1:]
    attributes = {
        col: frame[col].cast(pl.String).fill_null("").to_numpy().astype(object)
        for col in spec.item_categorical
        if col in frame.columns
    }
    age = (
        frame[ITEM_AGE].cast(pl.Float64).fill_null(np.nan).to_numpy()
        if ITEM_AGE in frame.columns
        else np.full(n, np.nan)
    )
    pop = (
        frame[pop_column(None)].fill_null(0).to_numpy() if pop_column(None) in frame.columns else np.zeros(n)
    )
    return PolicyCatalog(
        item_ids=ids,
        categories=cats.tocsr(),
        category_names=[str(v) for v in spec.categories.values.to_list()],
        attributes=attributes,
        age_days=age.astype(np.float64),
        interactions=pop.astype(np.int64),
    )
