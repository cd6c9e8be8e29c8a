"""The compiled kernels' decorator: a cache where numba can write one, no failure where it cannot."""

from __future__ import annotations

import numpy as np
import pytest
from numba import types

from recstack import kernels


def test_without_a_writable_cache_location_kernels_compile_uncached(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba raises at decoration when no cache location is writable (a read-only image and home); the
    kernel then compiles without a cache instead of stopping the service's import."""
    real = kernels.njit
    asked: list[bool] = []

    def njit(signature, cache=False, nogil=False):  # numba's behaviour without a writable location
        asked.append(cache)
        if cache:
            raise RuntimeError("cannot cache function 'f': no locator available for file '/ro/kernels.py'")
        return real(signature, nogil=nogil)

    monkeypatch.setattr(kernels, "njit", njit)

    @kernels.compiled(types.int64(types.int64))
    def twice(x: int) -> int:
        return 2 * x

    assert twice(21) == 42 and asked == [True, False]


def test_other_compile_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def njit(signature, cache=False, nogil=False):
        raise RuntimeError("something else went wrong")

    monkeypatch.setattr(kernels, "njit", njit)
    with pytest.raises(RuntimeError, match="something else"):
        kernels.compiled(types.int64(types.int64))(lambda x: x)


def test_kernels_are_compiled_at_import_with_their_signatures() -> None:
    for kernel in (kernels.timeline_stats, kernels.mmr_picks, kernels.category_sums, kernels.category_dots):
        assert len(kernel.signatures) == 1 and kernel._can_compile is False  # no lazy compile on a request
    assert kernels.mmr_picks(np.array([0.5, 0.9]), 0.1, np.eye(2), 1).tolist() == [1]
