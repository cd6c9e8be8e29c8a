"""FAISS index over item embeddings: ids, recall against exact search, determinism, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.retrieval.index import IndexConfig, load_index, make_index, measure, save_index, search


def _vectors(n: int = 600, d: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n + 1, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[0] = 10.0  # the unknown item: would win every inner product if it were indexed
    return x


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat", "ivf_pq", "flat"])
def test_index_returns_item_indices_and_recalls_exact_search(kind: str) -> None:
    x = _vectors()
    q = _vectors(50, seed=1)[1:]
    index = make_index(x, "cosine", IndexConfig(kind=kind, nlist=8, nprobe=8, pq_m=8))
    ids, scores = search(index, q, 20)
    assert ids.min() >= 1 and ids.max() <= 600  # ids are item indices; row 0 is never indexed
    if kind != "ivf_pq":  # PQ scores are approximate by design (compressed vectors)
        assert np.allclose(scores[:, 0], (q * x[ids[:, 0]]).sum(axis=1), atol=1e-4)
    quality = measure(index, x, q, k=20)
    assert quality.recall >= (0.5 if kind == "ivf_pq" else 0.95)  # PQ: 600 random points, few bits
    assert quality.p95_ms >= quality.p50_ms > 0


def test_builds_are_deterministic() -> None:
    x, q = _vectors(), _vectors(20, seed=2)[1:]
    a = search(make_index(x, "cosine"), q, 10)[0]
    b = search(make_index(x, "cosine"), q, 10)[0]
    assert np.array_equal(a, b)


def test_bad_settings_are_named() -> None:
    x = _vectors(100)
    with pytest.raises(ValueError, match="similarity must be"):
        make_index(x, "euclid")
    with pytest.raises(ValueError, match="pq_m=5 must divide the embedding dimension 16"):
        make_index(x, "cosine", IndexConfig(kind="ivf_pq", pq_m=5))
    with pytest.raises(ValueError, match="ef_search must be >= 1"):
        IndexConfig(ef_search=0)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    x, q = _vectors(), _vectors(5, seed=3)[1:]
    index = make_index(x, "dot")
    save_index(index, tmp_path, {"similarity": "dot"})
    loaded, card = load_index(tmp_path)
    assert card == {"similarity": "dot"}
    assert np.array_equal(search(loaded, q, 5)[0], search(index, q, 5)[0])
    with pytest.raises(FileNotFoundError, match="run the build_index stage"):
        load_index(tmp_path / "missing")


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat", "ivf_pq"])
def test_search_skips_excluded_items_inside_the_index(kind: str) -> None:
    """Excluded items (a user's seen ones) never come back, and k eligible items do: no over-fetching."""
    v = _vectors()
    index = make_index(v, "cosine", IndexConfig(kind=kind, nlist=16, nprobe=16, pq_m=4))
    q = v[[5, 9]] + 0.01
    exclude = np.arange(1, 400)  # two thirds of the catalog
    ids, _ = search(index, q, 50, exclude=exclude)
    assert ids.shape == (2, 50) and (ids > 0).all()
    assert not np.isin(ids, exclude).any()
    # Against exact search over the eligible items only.
    scores = q @ v.T
    scores[:, 0] = -np.inf
    scores[:, exclude] = -np.inf
    truth = np.argsort(-scores, axis=1)[:, :50]
    recall = np.mean([len(np.intersect1d(a, t)) / 50 for a, t in zip(ids, truth, strict=True)])
    assert recall >= {"flat": 1.0, "ivf_pq": 0.5}.get(kind, 0.9)  # PQ: compressed vectors


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_flat"])
def test_the_exclusion_bitmap_returns_what_faiss_own_id_batch_returns(kind: str) -> None:
    """Excluded ids scattered, several in one byte of the bitmap, unsorted and repeated; ids past the
    largest excluded one stay eligible: the same results as FAISS's hash-set selector."""
    import faiss

    from recstack.retrieval.index import _excluding, _search_params

    v = _vectors()
    index = make_index(v, "cosine", IndexConfig(kind=kind, nlist=16, nprobe=16))
    q = v[[5, 9, 300]] + 0.01
    rng = np.random.default_rng(0)
    exclude = np.concatenate([rng.choice(np.arange(1, 300), 150, replace=False), [8, 9, 10, 11, 12, 8]])
    ids, scores = search(index, q, 60, exclude=exclude)
    params = _search_params(index, 60, None) or faiss.SearchParameters()
    params.sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(exclude))
    want_scores, want_ids = index.search(np.ascontiguousarray(q, dtype=np.float32), 60, params=params)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert not np.isin(ids, exclude).any() and (ids > 300).any()
    assert [_excluding(np.array([i])).is_member(j) for i, j in [(3, 3), (3, 4), (3, 900)]] == [
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_a_small_hnsw_index_can_be_searched_by_a_full_scan(similarity: str) -> None:
    """``full_scan_max_items``: the index's own vectors, ids and similarity scanned exactly, exclusions
    honoured; above the limit (or at 0) the graph answers as before."""
    from recstack.retrieval.index import full_scan_twin, searched_index

    v = _vectors()
    # Vectors of different lengths: under "dot" they count.
    v[1:] *= np.random.default_rng(5).uniform(0.5, 2.0, size=(600, 1)).astype(np.float32)
    index = make_index(v, similarity, IndexConfig(kind="hnsw", hnsw_m=4, ef_search=8))  # a poor graph
    q = v[[5, 9, 300]] + 0.01
    exclude = np.array([5, 9, 17, 300, 599])
    ids, scores = search(searched_index(index, 600), q, 100, exclude=exclude)
    exact = q @ v.T
    exact[:, 0] = -np.inf  # the unknown item is not indexed
    exact[:, exclude] = -np.inf
    np.testing.assert_array_equal(ids, np.argsort(-exact, axis=1, kind="stable")[:, :100])
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, axis=1), rtol=1e-5, atol=1e-5)
    graph = search(index, q, 100, exclude=exclude)
    assert np.array_equal(search(searched_index(index, 599), q, 100, exclude=exclude)[0], graph[0])
    assert np.array_equal(search(searched_index(index, 0), q, 100, exclude=exclude)[0], graph[0])
    assert not np.array_equal(graph[0], ids)  # the poor graph misses some: the scan was really used
    assert full_scan_twin(index) is full_scan_twin(index)  # built once per index


def test_only_an_hnsw_index_with_full_vectors_gets_a_full_scan() -> None:
    import faiss

    from recstack.retrieval.index import full_scan_twin, searched_index

    v = _vectors(200)
    for kind in ("ivf_flat", "ivf_pq", "flat"):
        assert full_scan_twin(make_index(v, "cosine", IndexConfig(kind=kind, nlist=4, pq_m=4))) is None
    compressed = faiss.IndexHNSWSQ(16, faiss.ScalarQuantizer.QT_8bit, 8)
    compressed.train(v[1:])
    compressed.add(v[1:])
    assert full_scan_twin(compressed) is None  # codes, not vectors: a scan would not be the same search
    bare = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    bare.add(v[1:])
    twin = full_scan_twin(bare)
    assert twin is not None and twin.ntotal == 200
    ids, _ = search(searched_index(bare, 1000), v[[3]], 5)
    assert ids[0, 0] == 2  # an index without an id map: FAISS's own positions (item 3 is row 2)
