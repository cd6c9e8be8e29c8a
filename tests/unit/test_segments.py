"""Segment slices of the P1 metrics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recstack.evaluation.metrics import ranking_metrics
from recstack.evaluation.segments import (
    long_tail_items,
    new_items,
    segment_metrics,
    user_history_lengths,
)

# Items 1..6, column 0 = OOV. Train counts sorted: item 1 (10), 2 (6), 3 (2), 4 (1), 5 (1), 6 (0); total 20.
COUNTS = np.array([0, 10, 6, 2, 1, 1, 0])


def _csr(rows: list[list[int]], n_cols: int = 7) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    r, c = zip(*data, strict=True) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_cols))


# user 0: train {1}       (1 item, short), test {2, 6}, ranked [2, 6]
# user 1: train {1, 2, 3} (3 items, long), test {5},    ranked [4, 6]
# user 2: train {2, 3}    (2 items, short), test {1, 4}, ranked [1, 5]
TRAIN = _csr([[1], [1, 2, 3], [2, 3]])
TEST = _csr([[2, 6], [5], [1, 4]])
TOPK = np.array([[2, 6], [4, 6], [1, 5]])


def _segments(**kwargs: object) -> dict[str, dict[str, float]]:
    return segment_metrics(TOPK, TEST, TRAIN, COUNTS, ks=(1, 2), exposure_k=2, **kwargs)


def test_history_lengths() -> None:
    assert user_history_lengths(TRAIN).tolist() == [1, 3, 2]


def test_long_tail_definition() -> None:
    # share 0.5: target 10 interactions; item 1 alone reaches it -> head {1}, tail {2..6}; OOV in neither.
    assert np.flatnonzero(long_tail_items(COUNTS, 0.5)).tolist() == [2, 3, 4, 5, 6]
    # share 0.6: target 12; cumulative 10, 16 -> head {1, 2}.
    assert np.flatnonzero(long_tail_items(COUNTS, 0.6)).tolist() == [3, 4, 5, 6]
    # share 1: every trained item is head; only the never-trained item 6 is tail.
    assert np.flatnonzero(long_tail_items(COUNTS, 1.0)).tolist() == [6]
    assert np.flatnonzero(long_tail_items(COUNTS, 0.0)).tolist() == [1, 2, 3, 4, 5, 6]
    # Ties by lower index: counts 3, 3, 3, 1 (total 10), target 5 -> cumulative 3, 6 -> head {1, 2}.
    assert np.flatnonzero(long_tail_items(np.array([0, 3, 3, 3, 1]), 0.5)).tolist() == [3, 4]
    # No train interactions at all: no head, everything is tail.
    assert np.flatnonzero(long_tail_items(np.zeros(4, dtype=int))).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="head_interaction_share"):
        long_tail_items(COUNTS, 1.5)


def test_new_items_excludes_oov() -> None:
    assert np.flatnonzero(new_items(COUNTS)).tolist() == [6]


def test_short_history_users_hand_computed() -> None:
    # Short (<= 2 train items): users 0 and 2.
    # user 0: hits at ranks 1, 2 of 2 test items -> recall@1 1/2, recall@2 1, ndcg@2 1, precision@2 1.
    # user 2: hit at rank 1 of 2 test items -> recall@1 1/2, recall@2 1/2,
    #         ndcg@2 = 1 / (1 + 1/log2(3)), precision@2 1/2.
    m = _segments(short_history_max=2)["short_history_users"]
    assert m["users"] == 2
    assert m["recall@1"] == pytest.approx(0.5)
    assert m["recall@2"] == pytest.approx(0.75)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / (1 + 1 / math.log2(3))) / 2)
    assert m["precision@2"] == pytest.approx(0.75)
    assert m["hit_rate@1"] == pytest.approx(1.0) and m["mrr@2"] == pytest.approx(1.0)
    assert m["coverage@2"] == pytest.approx(4 / 6)  # {2, 6, 1, 5} of 6 catalog items (OOV not counted)


def test_long_tail_items_hand_computed() -> None:
    # Tail = {2..6}. Restricted test: user 0 {2, 6}, user 1 {5}, user 2 {4} (item 1 is head).
    # user 0: hits at ranks 1, 2 -> recall@1 1/2, recall@2 1, ndcg@1 1, ndcg@2 1, hit 1.
    # user 1: ranked [4, 6], no hit -> 0.
    # user 2: ranked [1, 5]; item 1 is a test item but head, so it is a miss here -> 0.
    m = _segments()["long_tail_items"]
    assert m["users"] == 3
    assert m["recall@1"] == pytest.approx(1 / 6)
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["hit_rate@2"] == pytest.approx(1 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3) and m["ndcg@2"] == pytest.approx(1 / 3)
    # Exposure: slots [2, 6, 4, 6, 1, 5], all but item 1 in the tail -> 5 / 6.
    assert m["share_of_recs"] == pytest.approx(5 / 6)
    assert set(m) == {"users", "share_of_recs"} | {
        f"{n}@{k}" for n in ("recall", "hit_rate", "ndcg") for k in (1, 2)
    }


def test_new_items_hand_computed() -> None:
    # New = {6}. Only user 0 has a new test item (6), ranked 2nd:
    # recall@1 0, recall@2 1, ndcg@2 = (1/log2(3)) / 1 (IDCG over min(2, 1) = 1 item), hit@1 0, hit@2 1.
    m = _segments()["new_items"]
    assert m["users"] == 1
    assert m["recall@1"] == 0.0 and m["recall@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert m["hit_rate@1"] == 0.0 and m["hit_rate@2"] == 1.0
    assert m["share_of_recs"] == pytest.approx(2 / 6)  # item 6 fills 2 of the 6 slots


def test_whole_catalog_segment_equals_plain_metrics() -> None:
    # With no head every item is tail: the restricted relevance is the full one.
    tail = _segments(head_interaction_share=0.0)["long_tail_items"]
    plain = ranking_metrics(TOPK, TEST, ks=(1, 2))
    for key in ("users", "recall@2", "ndcg@2", "hit_rate@1"):
        assert tail[key] == pytest.approx(plain[key]), key
    assert tail["share_of_recs"] == 1.0


def test_empty_segments_are_zero_not_nan() -> None:
    counts = np.array([0, 10, 6, 2, 1, 1, 3])  # no new items
    m = segment_metrics(TOPK, TEST, TRAIN, counts, ks=(1, 2), short_history_max=0, exposure_k=2)
    for name in ("short_history_users", "new_items"):
        assert m[name]["users"] == 0
        assert all(v == 0 for v in m[name].values()), name
    assert m["new_items"]["share_of_recs"] == 0.0


def test_empty_slots_ignored_in_exposure() -> None:
    topk = np.array([[6, -1], [4, -1], [1, -1]])
    m = segment_metrics(topk, TEST, TRAIN, COUNTS, ks=(1, 2), exposure_k=2)
    assert m["new_items"]["share_of_recs"] == pytest.approx(1 / 3)  # 6 in 1 of the 3 filled slots


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match="aligned rows"):
        segment_metrics(TOPK, TEST, TRAIN[:2], COUNTS, ks=(1, 2), exposure_k=2)
    with pytest.raises(ValueError, match="OOV column 0"):
        segment_metrics(TOPK, TEST, TRAIN, COUNTS[1:], ks=(1, 2), exposure_k=2)
    with pytest.raises(ValueError, match="fewer than"):
        segment_metrics(TOPK, TEST, TRAIN, COUNTS, ks=(1, 2))  # exposure_k 10 > 2 columns
