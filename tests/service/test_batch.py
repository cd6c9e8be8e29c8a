"""Batch top-N: the service's lists for every user, in Parquet parts, resumable, in worker processes."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from recstack.serving.batch import BatchSettings, batch_topn
from recstack.serving.engine import Recommender
from recstack.serving.schemas import RecommendRequest


def test_batch_lists_equal_the_service_and_resume(
    bundle_dir: Path, recommender: Recommender, tmp_path: Path
) -> None:
    users = [str(u) for u in recommender.bundle.tables.spec.user_id.values.head(40).to_list()]
    out = tmp_path / "topn"
    settings = BatchSettings(k=10, chunk_users=16, processes=1)
    manifest = batch_topn(bundle_dir, out, settings, user_ids=users)
    assert manifest["complete"] and manifest["parts"] == 3 and manifest["rows"] == 400
    assert manifest["short_lists"] == 0 and manifest["served_by"] == {"funnel": 40}
    lists = pl.read_parquet(out / "*.parquet").sort("user_id", "position")
    for uid in users[::7]:
        served = [i.item_id for i in recommender.recommend(RecommendRequest(user_id=uid, k=10)).items]
        assert lists.filter(pl.col("user_id") == uid)["item_id"].to_list() == served

    (out / "part-00001.parquet").unlink()  # an interrupted run: one part missing
    again = batch_topn(bundle_dir, out, settings, user_ids=users)
    assert again["resumed_parts"] == 2 and again["computed_users"] == 16 and again["rows"] == 400
    assert pl.read_parquet(out / "*.parquet").sort("user_id", "position").equals(lists)

    shorter = batch_topn(bundle_dir, out, BatchSettings(k=5, chunk_users=16, processes=1), user_ids=users)
    assert shorter["resumed_parts"] == 0 and shorter["rows"] == 200  # other settings: start over

    # Another bundle (here: other serving settings) with the same settings: start over, never mix.
    other = tmp_path / "bundle"
    shutil.copytree(bundle_dir, other)
    serving = yaml.safe_load((other / "serving.yaml").read_text())
    serving["n_neighbours"] += 1
    (other / "serving.yaml").write_text(yaml.safe_dump(serving))
    rerun = batch_topn(other, out, BatchSettings(k=5, chunk_users=16, processes=1), user_ids=users)
    assert rerun["resumed_parts"] == 0 and rerun["computed_users"] == 40


def test_batch_in_worker_processes(bundle_dir: Path, tmp_path: Path) -> None:
    manifest = batch_topn(bundle_dir, tmp_path / "topn", BatchSettings(k=5, chunk_users=100, processes=2))
    users = pl.read_parquet(tmp_path / "topn" / "*.parquet")["user_id"].n_unique()
    assert manifest["processes"] == 2 and manifest["computed_users"] == users == manifest["identity"]["users"]
    assert manifest["short_lists"] == 0


@pytest.mark.parametrize("field", ["k", "chunk_users", "batch_users"])
def test_bad_batch_settings_name_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=f"batch_topn.{field}"):
        BatchSettings(**{field: 0})
