"""Model inputs: ragged gathers, bag weights, point-in-time histories and item timelines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import torch

from recstack.models.inputs import Sequences, gather_ranges, mean_bag, recency_bag, to_kjt
from recstack.ranking.features import DAY_US, ItemTimeline


def test_gather_ranges_concatenates_slices() -> None:
    values = np.arange(10) * 10
    out = gather_ranges(values, np.array([2, 7, 0]), np.array([3, 0, 1]))
    assert out.tolist() == [20, 30, 40, 0]


def test_recency_bag_weights_sum_to_one_and_favour_the_latest() -> None:
    bag = recency_bag(np.array([5, 6, 7, 9]), np.array([3, 0, 1]), decay=0.5)
    # Row 0: ages 2, 1, 0 -> weights .25, .5, 1 normalized by 1.75.
    assert bag.weights[:3] == pytest.approx([0.25 / 1.75, 0.5 / 1.75, 1 / 1.75])
    assert bag.weights[3] == pytest.approx(1.0)
    assert bag.lengths.tolist() == [3, 0, 1]


def test_recency_weights_from_the_row_cache_equal_the_batch_computation() -> None:
    """A request's rows take their weights from a per-length cache; a batch computes them at once: the
    same float32 values either way (each row's steps depend on its own length only)."""
    from recstack.models import inputs

    rng = np.random.default_rng(0)
    for decay in (0.9, 0.5, 1.0):
        for _ in range(20):
            lengths = rng.integers(0, 120, size=int(rng.integers(0, 40)))
            values = rng.integers(1, 50, size=int(lengths.sum()))
            cached = recency_bag(values, lengths, decay)
            assert len(lengths) <= inputs.RECENCY_ROWS_CACHED
            np.testing.assert_array_equal(cached.weights, inputs._recency_weights(lengths, decay))
            assert cached.weights.dtype == np.float32 and cached.weights.flags.writeable
    big = rng.integers(0, 60, size=inputs.RECENCY_ROWS_CACHED + 1)
    rows = [recency_bag(np.ones(n, np.int64), np.array([n]), 0.9).weights for n in big]
    np.testing.assert_array_equal(
        recency_bag(np.ones(big.sum(), np.int64), big, 0.9).weights, np.concatenate(rows)
    )


def test_mean_bag_and_kjt_layout() -> None:
    kjt = to_kjt(
        {"a": mean_bag(np.array([1, 2, 3]), np.array([2, 1])), "b": mean_bag(np.array([4]), np.array([1, 0]))}
    )
    assert kjt.keys() == ["a", "b"]
    assert kjt.lengths().tolist() == [2, 1, 1, 0]
    assert kjt.weights().tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])


def _sequences() -> Sequences:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    rows = [(1, 3, 0), (1, 1, 1), (1, 2, 2), (2, 2, 0), (2, 3, 5)]  # (user, item, day)
    frame = pl.DataFrame(
        {
            "user_idx": [r[0] for r in rows],
            "item_idx": [r[1] for r in rows],
            "timestamp": [t0 + timedelta(days=r[2]) for r in rows],
        }
    )
    return Sequences.from_interactions(frame.sample(fraction=1.0, shuffle=True, seed=1), n_users=2)


def test_sequence_prefix_never_contains_the_example_itself() -> None:
    s = _sequences()
    assert s.items.tolist() == [3, 1, 2, 2, 3]  # user 1 in time order, then user 2
    values, lengths = s.prefix(np.array([0, 1, 2, 3, 4]), max_length=5)
    assert lengths.tolist() == [0, 1, 2, 0, 1]
    assert values.tolist() == [3, 3, 1, 2]
    values, lengths = s.prefix(np.array([2]), max_length=1)
    assert values.tolist() == [1]  # only the latest earlier item
    values, lengths = s.last(np.array([1, 2]), max_length=2)
    assert values.tolist() == [1, 2, 2, 3] and lengths.tolist() == [2, 2]


def test_item_timeline_bulk_and_small_paths_build_the_same_timeline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large logs sort with Polars, a request's few events with numpy: the same arrays either way,
    with tied times and tied (item, time) events."""
    from recstack.ranking import features

    rng = np.random.default_rng(1)
    items = rng.integers(1, 300, 5000)
    times = rng.integers(0, 2000, 5000) * 1_000_000
    weights = rng.random(5000)
    monkeypatch.setattr(features, "BULK_EVENTS", 1)
    bulk = ItemTimeline.from_events(items, times, weights, lookup=True)
    monkeypatch.setattr(features, "BULK_EVENTS", 10**9)
    small = ItemTimeline.from_events(items, times, weights, lookup=True)
    assert bulk.m == small.m
    for name in ("keys", "times", "unique_times", "starts", "cum"):
        np.testing.assert_array_equal(getattr(bulk, name), getattr(small, name), err_msg=name)


def test_item_timeline_counts_only_the_past() -> None:
    s = _sequences()
    tl = ItemTimeline.from_sequences(s)
    day0 = int(s.times.min())
    # Item 3: interactions on day 0 and day 5; item 2 on days 0 (user 2) and 2 (user 1).
    as_of = np.array([[day0 + 4 * DAY_US], [day0 + 5 * DAY_US]])
    counts = tl.counts(np.array([[3, 2], [3, 2]]), as_of, (1, 7))
    assert counts[0, 0].tolist() == [0, 1, 1]  # item 3 on day 4: none in the last day, 1 in 7 days, 1 ever
    assert counts[1, 0].tolist() == [1, 2, 2]  # day 5 includes the day-5 interaction (at or before)
    assert counts[0, 1].tolist() == [0, 2, 2]
    first, last, seen = tl.first_last(np.array([3, 1]), np.array([day0 + DAY_US, day0 - 1]))
    assert seen.tolist() == [True, False] and first[0] == last[0] == day0


@pytest.mark.parametrize("seed", range(4))
def test_item_timeline_range_search_equals_the_whole_array_search(seed: int) -> None:
    """The compiled per-item search (timelines with a start table) gives the very integers and times of
    the whole-key-array search: tied times, items with no events, items past the table, as_of before,
    between and after every event, any broadcast shape."""
    rng = np.random.default_rng(seed)
    n_events = [0, 1, 50, 3000][seed]
    items = rng.integers(1, 40, max(n_events, 1))[:n_events]
    times = (rng.integers(0, 60, n_events) * DAY_US // 2).astype(np.int64)
    if n_events == 0:
        items, times = np.array([3]), np.array([DAY_US])  # an empty timeline has nothing to search
    tl = ItemTimeline.from_events(items, times, lookup=True)
    queries = rng.integers(0, 60, (7, 25))  # items 0 (unknown), 1-39, and 40-59 past the table
    as_of = (rng.integers(-2, 64, (7, 1)) * DAY_US // 2).astype(np.int64)
    for q_items, q_t in [(queries, as_of), (queries[0], as_of[:, 0][:1]), (queries[:, :0], as_of)]:
        got = tl._stats_in_ranges(q_items, q_t, (1, 7, 30))
        want = tl._stats_by_search(q_items, q_t, (1, 7, 30))
        for g, w, name in zip(got, want, ("counts", "first", "last", "seen"), strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape, name
            np.testing.assert_array_equal(g, w, err_msg=name)
    # stats() takes the compiled path for integer times, the search for other timelines.
    np.testing.assert_array_equal(
        tl.stats(queries, as_of, (7,))[0], tl._stats_by_search(queries, as_of, (7,))[0]
    )


def test_repeated_bags_expand_to_the_rows_they_stand_for_and_embed_the_same() -> None:
    from dataclasses import replace

    from torchrec import EmbeddingBagCollection
    from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType

    from recstack.models.inputs import pooled_embeddings, single

    ragged = replace(mean_bag(np.array([3, 1, 4, 2, 2]), np.array([2, 0, 3])), repeat=2)
    out = ragged.expanded()
    assert out.lengths.tolist() == [2, 2, 0, 0, 3, 3]
    assert out.values.tolist() == [3, 1, 3, 1, 4, 2, 2, 4, 2, 2]
    assert np.allclose(out.weights, [0.5] * 4 + [1 / 3] * 6)
    one = single(np.array([5, 0]), repeat=3).expanded()
    assert one.values.tolist() == [5, 5, 5, 0, 0, 0] and one.lengths.tolist() == [1] * 6
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_{f}", embedding_dim=4, num_embeddings=8, feature_names=[f], pooling=PoolingType.SUM
            )
            for f in ("a", "b")
        ],
        is_weighted=True,
    )
    repeated = {"a": ragged, "b": single(np.array([5, 0, 7]), repeat=2)}
    written_out = {name: replace(bag.expanded(), single=False) for name, bag in repeated.items()}
    # A repeated bag and a single-valued row lookup give what the plain weighted bags give, bit for bit,
    # and what the EBC's own forward gives.
    with torch.no_grad():
        assert torch.equal(pooled_embeddings(ebc, repeated), pooled_embeddings(ebc, written_out))
        assert torch.equal(pooled_embeddings(ebc, repeated), ebc(to_kjt(repeated)).values())


def test_latest_items_are_each_historys_last_ones_newest_first_padded_with_zero() -> None:
    from recstack.ranking.features import latest_items

    rng = np.random.default_rng(0)
    lengths = np.array([0, 1, 3, 12, 0, 10])
    values = rng.integers(1, 100, int(lengths.sum()))
    got = latest_items(values, lengths, 10)
    ends = np.cumsum(lengths)
    for b, (end, n) in enumerate(zip(ends, lengths, strict=True)):
        row = values[end - n : end][::-1][:10]
        assert got[b].tolist() == [*row.tolist(), *[0] * (10 - len(row))]
    assert latest_items(np.empty(0, np.int64), np.zeros(2, np.int64), 3).tolist() == [[0, 0, 0]] * 2


@pytest.mark.parametrize("seed", range(6))
def test_category_affinity_kernels_equal_the_numpy_steps(seed: int) -> None:
    """The compiled category sums (the ranking context's CSR layout: int32 indices, float32 data) give the
    very float64 values of the numpy steps (any other layout): same products, summed in the same order.
    Histories with no categorized item, empty histories, and the unknown item 0 among the candidates."""
    import scipy.sparse as sp

    from recstack.ranking.features import category_affinity

    rng = np.random.default_rng(seed)
    for trial in range(40):
        n_items, c = int(rng.integers(2, 300)), int(rng.integers(1, 40))
        m = sp.random(n_items, c, density=rng.uniform(0.01, 0.5), format="csr", dtype=np.float32, rng=rng)
        norms = np.sqrt(np.asarray(m.sum(axis=1)).ravel())
        cats = (sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ m).tocsr().astype(np.float32)
        assert (cats.indptr.dtype, cats.indices.dtype) == (np.int32, np.int32)
        b = int(rng.integers(1, 6))
        lengths = rng.integers(0, 60, size=b)
        values = rng.integers(1, n_items, size=int(lengths.sum()))
        items = rng.integers(0, n_items, size=(b, int(rng.integers(1, 250))))
        numpy_layout = cats.copy()
        numpy_layout.indptr = numpy_layout.indptr.astype(np.int64)
        numpy_layout.indices = numpy_layout.indices.astype(np.int64)
        got = category_affinity(cats, values, lengths, items)
        want = category_affinity(numpy_layout, values, lengths, items)
        assert got.dtype == want.dtype == np.float64, trial
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
    with pytest.raises(IndexError, match="candidate item index out of range"):
        category_affinity(cats, values, lengths, np.full((1, 2), n_items))


def _numpy_pair_columns(
    scores, ranks, t, counts, first, last, seen, affinity, vectors, items, values, lengths, n_events
):
    """The numpy steps ``dense_features`` took before its compiled pass (the reference)."""
    from recstack.kernels import NEVER_SEEN_DAYS
    from recstack.ranking.features import RECENT_ITEMS, latest_items

    def log_days(delta_us, seen):
        return np.log1p(np.where(seen, np.maximum(delta_us, 0) / DAY_US, NEVER_SEEN_DAYS))

    b, n = items.shape
    recent = latest_items(values, lengths, RECENT_ITEMS)
    sims = np.einsum("bnd,brd->bnr", vectors[items], vectors[recent])
    valid = (recent > 0)[:, None, :]
    sim_max = np.where(valid.any(axis=2), np.where(valid, sims, -1.0).max(axis=2), 0.0)
    sim_mean = np.where(valid, sims, 0.0).sum(axis=2) / np.maximum(valid.sum(axis=2), 1)
    cols = [
        scores - scores.max(axis=1, keepdims=True),
        np.log1p(ranks),
        *np.log1p(counts).transpose(2, 0, 1),
        log_days(t - first, seen),
        log_days(t - last, seen),
        affinity,
        sim_max,
        sim_mean,
        np.broadcast_to(np.log1p(n_events).astype(np.float32)[:, None], (b, n)),
    ]
    return np.stack(cols, axis=-1).astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_pair_features_kernel_equals_the_numpy_steps(seed: int) -> None:
    """The compiled dense-feature pass gives the numpy steps' float32 values bit for bit (what the ranker
    was trained on). Covered: empty histories, the unknown item among history and candidates, items never
    seen (and the placeholder times that go with them), requests before an item's events, weighted
    (float) counts, and broadcast (read-only, non-contiguous) inputs."""
    from recstack.kernels import pair_features
    from recstack.ranking.features import DENSE_FEATURES, RECENT_ITEMS, latest_items

    rng = np.random.default_rng(seed)
    for trial in range(25):
        n_items, d = int(rng.integers(2, 400)), int(rng.choice([8, 16, 64]))
        vectors = rng.normal(size=(n_items + 1, d)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors[0] = 0
        b, n = int(rng.integers(1, 5)), int(rng.integers(1, 250))
        lengths = rng.integers(0, 30, size=b).astype(np.int64)
        values = rng.integers(0, n_items + 1, size=int(lengths.sum())).astype(np.int64)
        items = rng.integers(0, n_items + 1, size=(b, n)).astype(np.int64)
        scores = rng.normal(size=(b, n)).astype(np.float32)
        ranks = np.broadcast_to(np.arange(1, n + 1), (b, n))
        t = rng.integers(0, 100 * DAY_US, size=b).astype(np.int64)
        counts = rng.integers(0, 5000, size=(b, n, 4)).astype(np.int64)
        if trial % 2:
            counts = counts * rng.uniform(0.5, 2.0, size=counts.shape)  # weighted (Redis daily counts)
        first = rng.integers(-10 * DAY_US, 120 * DAY_US, size=(b, n)).astype(np.int64)
        last = first + rng.integers(0, 10 * DAY_US, size=(b, n))
        seen = rng.random((b, n)) < 0.8
        affinity = rng.random((b, n))
        n_events = rng.integers(0, 2000, size=b)
        want = _numpy_pair_columns(
            scores,
            ranks,
            t[:, None],
            counts,
            first,
            last,
            seen,
            affinity,
            vectors,
            items,
            values,
            lengths,
            n_events,
        )
        recent = latest_items(values, lengths, RECENT_ITEMS)
        sims = np.einsum("bnd,brd->bnr", vectors[items], vectors[recent])
        got = pair_features(
            scores,
            ranks,
            t,
            counts.astype(np.float64),
            first,
            last,
            seen,
            affinity,
            sims,
            recent,
            n_events.astype(np.float64),
        )
        assert got.shape == want.shape == (b, n, len(DENSE_FEATURES)) and got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=f"trial {trial}")
    empty = pair_features(
        np.zeros((2, 0), np.float32),
        np.zeros((2, 0), np.int64),
        np.zeros(2, np.int64),
        np.zeros((2, 0, 4)),
        np.zeros((2, 0), np.int64),
        np.zeros((2, 0), np.int64),
        np.zeros((2, 0), bool),
        np.zeros((2, 0)),
        np.zeros((2, 0, RECENT_ITEMS), np.float32),
        np.zeros((2, RECENT_ITEMS), np.int64),
        np.zeros(2),
    )
    assert empty.shape == (2, 0, len(DENSE_FEATURES))


def test_float32_sum_is_numpys_sum() -> None:
    """numpy's pairwise summation order, for every row length up to its block, with signed zeros."""
    from recstack.kernels import PAIRWISE_BLOCK, float32_sum

    rng = np.random.default_rng(0)
    for n in range(PAIRWISE_BLOCK + 1):
        for _ in range(20):
            x = (rng.normal(size=n) * 10.0 ** rng.integers(-8, 8, size=n)).astype(np.float32)
            assert np.float32(float32_sum(x)).tobytes() == x.sum().tobytes(), n
    for zeros in (np.full(3, -0.0, np.float32), np.full(12, -0.0, np.float32)):
        assert np.float32(float32_sum(zeros)).tobytes() == zeros.sum().tobytes()
    with pytest.raises(ValueError, match="up to 128"):
        float32_sum(np.zeros(PAIRWISE_BLOCK + 1, np.float32))


def test_dense_features_refuse_non_integer_request_times() -> None:
    from recstack.ranking.features import dense_features

    with pytest.raises(TypeError, match="as_of must hold integer times"):
        dense_features(
            None,
            np.zeros(1, np.int64),
            np.ones((1, 2), np.int64),
            np.zeros((1, 2), np.float32),
            np.ones((1, 2), np.int64),
            np.array([1.5]),
            (np.zeros(0, np.int64), np.zeros(1, np.int64)),
        )
