"""Two-tower and DLRM models, their artifacts, and the training / evaluation entry points on small data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from recstack.data.split import FIT_SPLITS, SPLIT
from recstack.evaluation.evaluate import evaluate
from recstack.models.artifact import load_card, load_weights, weights_version
from recstack.models.inputs import FeatureTables, Sequences, query_bags, to_kjt
from recstack.models.ranker import Ranker, RankerConfig
from recstack.models.two_tower import TwoTower, TwoTowerConfig
from recstack.ranking.features import DENSE_FEATURES, RankingContext
from recstack.ranking.scorer import FunnelRanker
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.retrieval import RetrievalData, RetrievalSystem
from recstack.training.train_retrieval import train_retrieval
from tests.conftest import SMALL_MODEL as SMALL


def _tiny_two_tower(tables: FeatureTables, similarity: str = "cosine") -> TwoTower:
    config = TwoTowerConfig(
        query_features=tables.query_cardinalities(),
        candidate_features=tables.items.cardinalities,
        embedding_dim=8,
        tower_dims=[16, 8],
        similarity=similarity,
    )
    torch.manual_seed(0)
    return TwoTower(config)


def test_towers_give_unit_vectors_under_cosine_and_logits_all_pairs(small_features: Path) -> None:
    tables = FeatureTables.load(small_features)
    model = _tiny_two_tower(tables).eval()
    users = np.array([1, 2, 3])
    history = (np.array([4, 5, 6]), np.array([2, 0, 1]))
    q = to_kjt(query_bags(tables.users, users, history, 0.9))
    c = tables.items.kjt(np.array([1, 2, 3, 4, 5]))
    logits = model(q, c)
    assert logits.shape == (3, 5)
    assert torch.allclose(model.query(q).norm(dim=1), torch.ones(3), atol=1e-5)
    # The service's KJT-free path gives exactly the training path's vectors.
    with torch.no_grad():
        assert torch.equal(model.query_bags(query_bags(tables.users, users, history, 0.9)), model.query(q))
    with pytest.raises(RuntimeError, match="inference only"):  # gradients would not flow through it
        model.query_bags(query_bags(tables.users, users, history, 0.9))
    dot = _tiny_two_tower(tables, "dot").eval()
    assert not torch.allclose(dot.candidate(c).norm(dim=1), torch.ones(5))


def test_sampled_softmax_training_lowers_the_loss(small_features: Path) -> None:
    tables = FeatureTables.load(small_features)
    inter = pl.read_parquet(small_features / "interactions.parquet").filter(pl.col(SPLIT).is_in(FIT_SPLITS))
    data = RetrievalData(
        tables.items, tables.users, Sequences.from_interactions(inter, tables.spec.user_id.size)
    )
    torch.manual_seed(0)
    system = RetrievalSystem(_tiny_two_tower(tables), data, batch_size=128, n_random=16, lr=5e-3)
    opt = system.configure_optimizers()
    batches = list(system.train_dataloader())[:8]
    losses = []
    for _ in range(4):
        total = 0.0
        for b in batches:
            opt.zero_grad()
            loss = system.training_step(b, 0)
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total)
    assert losses[-1] < 0.9 * losses[0]
    assert torch.isfinite(system.log_q).all()


def test_ranker_scores_pairs_and_dcn_variant(small_features: Path) -> None:
    tables = FeatureTables.load(small_features)
    from recstack.ranking.features import ranker_cardinalities, sparse_bags

    n = len(DENSE_FEATURES)
    for dcn in (0, 2):
        config = RankerConfig(
            sparse_features=ranker_cardinalities(tables),
            dense_features=list(DENSE_FEATURES),
            dense_mean=[0.0] * n,
            dense_std=[1.0] * n,
            embedding_dim=8,
            dense_arch=[16],
            over_arch=[16],
            dcn_layers=dcn,
        )
        model = Ranker(config).eval()
        bags = sparse_bags(tables, np.array([1, 2]), np.array([[1, 2, 3], [4, 5, 6]]), np.array([7, 0]))
        dense = torch.randn(6, n)
        out = model(dense, to_kjt(bags))
        assert out.shape == (6,)
        # Inference without the KJT: the same logits, bit for bit.
        with torch.no_grad():
            assert torch.equal(model.score(dense, bags), out)
        # The frozen dense layers too, for any batch size (chunked past INFERENCE_CHUNK_PAIRS).
        layers = model.frozen_layers()
        assert not model.training and all(p.requires_grad for p in model.parameters())  # left as it was
        with torch.inference_mode():
            assert torch.equal(model.score(dense, bags, layers), out)
            for size in (1, 7, 512, 513, 1100):
                x, e = torch.randn(size, n), torch.randn(size, len(config.sparse_features), 8)
                assert torch.equal(model._head(x, e, layers), model._head(x, e)), (dcn, size)


@pytest.fixture(scope="module")
def trained(small_models: dict[str, Path]) -> dict[str, Path]:
    return small_models


def test_artifacts_carry_what_serving_needs(trained: dict[str, Path]) -> None:
    for d in (
        trained["retrieval"] / "model",
        trained["retrieval"] / "valid_model",
        trained["ranking"] / "model",
    ):
        card = load_card(d)
        assert card.version == weights_version(load_weights(d))
        assert card.data_fingerprint and (d / "features" / "feature_spec.json").is_file()
    retrieval = load_card(trained["retrieval"] / "model")
    assert retrieval.similarity == "cosine" and retrieval.config["similarity"] == "cosine"
    assert retrieval.training["fit_on"] == ["train", "valid"]
    assert load_card(trained["ranking"] / "model").training["n_candidates"] == 30
    with pytest.raises(FileNotFoundError, match="not a recstack model artifact"):
        load_card(trained["retrieval"])
    with pytest.raises(ValueError, match="not a dlrm ranker"):
        FunnelRanker.load(trained["retrieval"] / "model", None)  # type: ignore[arg-type]


def test_funnel_and_retriever_score_with_pooled_blocks_and_frozen_layers_bit_for_bit(
    small_features: Path, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tables' pooled static features (``item_block``, ``user_block``), the frozen dense layers and the
    frozen query head are what the per-request lookups and the modules compute: the same logits, features
    and query vectors, for batches of users; freezing leaves the models in eval mode."""
    from dataclasses import replace

    from recstack.models import inputs

    tables = FeatureTables.load(small_features)
    inter = pl.read_parquet(small_features / "interactions.parquet")
    seq = Sequences.from_interactions(inter.filter(pl.col(SPLIT).is_in(FIT_SPLITS)), tables.spec.user_id.size)
    retriever = TwoTowerRetriever.load(trained["retrieval"] / "model", tables)
    funnel = FunnelRanker.load(trained["ranking"] / "model", retriever)
    assert funnel.item_block is not None and funnel.user_block is not None and funnel.layers is not None
    assert retriever.user_block is not None
    assert funnel.item_block.names == tuple(tables.items.bags_for(np.array([1])))
    assert funnel.user_block.names == tuple(tables.users.single) == retriever.user_block.names
    dim = funnel.ranker.config.embedding_dim
    assert funnel.item_block.rows.shape == (tables.items.n_items, len(funnel.item_block.names) * dim)
    plain = replace(funnel, layers=None, item_block=None, user_block=None)
    ctx = RankingContext.build(tables, seq, retriever.item_vectors)
    rng = np.random.default_rng(0)
    for b in (1, 3, 8):
        users = rng.integers(0, tables.spec.user_id.size + 1, b)  # 0: the unknown user
        items = rng.integers(-1, tables.items.n_items, (b, 30))  # -1: an empty slot
        sims = rng.standard_normal((b, 30)).astype(np.float32)
        got, got_dense = funnel.score_with_features(ctx, users, items, sims)
        want, want_dense = plain.score_with_features(ctx, users, items, sims)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_dense, want_dense)
        history = seq.last(users, retriever.config.history_length)
        np.testing.assert_array_equal(
            retriever.query_vectors(users, history),
            replace(retriever, user_block=None, head=None).query_vectors(users, history),
        )
    assert retriever.head is not None and not retriever.model.training and not funnel.ranker.training
    # A table past the memory bound keeps the per-request lookups.
    ebc = funnel.ranker.dlrm.sparse_arch.embedding_bag_collection
    monkeypatch.setattr(inputs, "POOLED_BLOCK_MAX_BYTES", funnel.item_block.rows.numel() * 4 - 1)
    assert inputs.pooled_block(ebc, tables.items.bags_for, tables.items.n_items) is None
    monkeypatch.setattr(inputs, "POOLED_BLOCK_MAX_BYTES", funnel.item_block.rows.numel() * 4)
    assert inputs.pooled_block(ebc, tables.items.bags_for, tables.items.n_items) is not None


def test_training_is_deterministic(small_features: Path, trained: dict[str, Path], tmp_path: Path) -> None:
    again = train_retrieval(small_features, tmp_path / "retrieval", max_epochs=3, patience=1, **SMALL)
    assert again.card.version == load_card(trained["retrieval"] / "model").version


def test_funnel_never_recommends_seen_items_and_keeps_candidate_order_contract(
    small_features: Path, trained: dict[str, Path]
) -> None:
    tables = FeatureTables.load(small_features)
    inter = pl.read_parquet(small_features / "interactions.parquet")
    fit = inter.filter(pl.col(SPLIT).is_in(FIT_SPLITS))
    seq = Sequences.from_interactions(fit, tables.spec.user_id.size)
    retriever = TwoTowerRetriever.load(trained["retrieval"] / "model", tables)
    funnel = FunnelRanker.load(trained["ranking"] / "model", retriever)
    ctx = RankingContext.build(tables, seq, retriever.item_vectors)
    from recstack.evaluation.topk import interaction_matrix

    exclude = interaction_matrix(fit, tables.spec.user_id.size, tables.spec.item_id.size)
    users = np.arange(1, 21)
    ranked, logits = funnel.rank(ctx, users, exclude, 10)
    cands, _ = retriever.candidates(seq, users, exclude, 30)
    for r, u in enumerate(users):
        assert not set(ranked[r]) & set(exclude[u].indices)
        assert set(ranked[r]) <= set(cands[r])  # the ranker only reorders retrieved candidates
        assert np.all(np.diff(logits[r]) <= 0)
    with pytest.raises(ValueError, match="larger than the candidate list"):
        funnel.rank(ctx, users, exclude, 31)


def test_evaluate_reports_every_system_with_p1_metrics(
    small_features: Path, trained: dict[str, Path]
) -> None:
    result = evaluate(
        small_features, trained["retrieval"], trained["ranking"], ks=(10, 20), tune_baselines=False
    )
    assert set(result.metrics) == {"most_popular", "ease", "rp3beta", "two_tower", "funnel"}
    for m in result.metrics.values():
        assert {
            "recall@10",
            "ndcg@20",
            "coverage@10",
            "diversity@10",
            "novelty@10",
            "avg_popularity@10",
        } <= set(m)
    assert {"candidate_recall@100", "candidate_recall@200", "candidate_recall@500"} <= set(
        result.metrics["two_tower"]
    )
    assert result.metrics["two_tower"]["candidate_recall@500"] >= result.metrics["two_tower"]["recall@20"]
    assert set(result.segments["funnel"]) == {"short_history_users", "long_tail_items", "new_items"}
    assert set(result.curves["system"].unique()) == set(result.metrics)
    json.dumps(result.metrics)  # serializable as written to metrics/evaluate.json
    with pytest.raises(ValueError, match="unknown baselines"):
        evaluate(small_features, None, None, baselines=("ials",))


def test_evaluate_scores_a_seeded_sample_of_users_and_refuses_dense_baselines_on_huge_catalogs(
    small_features: Path, trained: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``max_users`` (logs of millions of users) scores the same seeded sample for every system; EASE and
    RP3beta refuse a catalog their dense item-item matrices cannot hold, before any work."""
    from recstack import baselines

    a = evaluate(small_features, trained["retrieval"], None, ks=(10,), baselines=("most_popular",),
                 tune_baselines=False, max_users=40)  # fmt: skip
    b = evaluate(small_features, trained["retrieval"], None, ks=(10,), baselines=("most_popular",),
                 tune_baselines=False, max_users=40)  # fmt: skip
    assert a.metrics["most_popular"]["users"] == a.metrics["two_tower"]["users"] == 40
    assert a.metrics == b.metrics  # the same sample every run
    with pytest.raises(ValueError, match="max_users must be at least 1"):
        evaluate(small_features, None, None, baselines=(), max_users=0)
    monkeypatch.setattr(baselines, "MAX_DENSE_ITEMS", 10)
    for name in ("ease", "rp3beta"):
        with pytest.raises(
            ValueError, match=f"{name} needs a dense .* item-item matrix .* leave '{name}' out"
        ):
            evaluate(small_features, None, None, baselines=(name,))


def test_ranker_can_train_on_a_sample_of_users(
    small_features: Path, trained: dict[str, Path], tmp_path: Path
) -> None:
    """``max_users`` bounds the pairs' memory: a seeded sample of users, the same one every run."""
    from recstack.training.train_ranking import train_ranking

    kw = {"n_candidates": 30, "max_epochs": 1, "embedding_dim": 8}
    every = train_ranking(small_features, trained["retrieval"], tmp_path / "all", **kw)
    runs = [
        train_ranking(small_features, trained["retrieval"], tmp_path / str(i), max_users=40, **kw)
        for i in (0, 1)
    ]
    assert runs[0].card.training["settings"]["max_users"] == 40
    assert runs[0].metrics["train_pairs"] < every.metrics["train_pairs"]
    assert runs[0].card.version == runs[1].card.version  # same sample, same model
