"""The sort-and-rank family's float64 oracle (tests/reference_sort.py), checked on its own:
the isotonic reduction against a direct solve of the projection, and its limits."""

import numpy as np
import pytest
import reference_sort as ref
from scipy import stats


@pytest.mark.parametrize("kind", ["l2", "kl"])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_isotonic_reduction_is_the_projection(kind, n):
    rng = np.random.default_rng(n)
    for _ in range(3):
        z, w = rng.normal(size=n), rng.normal(size=n)
        np.testing.assert_allclose(
            ref.projection(z, w, kind), ref.brute_projection(z, w, kind), atol=2e-5
        )


def _hard_ranks(x, kind):
    """scipy's average ranks; for kl, tied entries pool their ranks by a log-mean-exp."""
    ranks = stats.rankdata(x)
    if kind == "kl":
        for value in np.unique(x):
            tied = x == value
            ranks[tied] = np.log(np.mean(np.exp(np.flatnonzero(np.sort(x) == value) + 1.0)))
    return ranks


@pytest.mark.parametrize("kind", ["l2", "kl"])
def test_limits_are_the_hard_sort_and_rank(kind):
    x = np.array([0.3, -1.2, 2.5, 0.3, 0.0, -1.2, 4.0])
    np.testing.assert_allclose(ref.soft_rank(x, 1e-6, kind), _hard_ranks(x, kind), atol=1e-9)
    np.testing.assert_allclose(
        ref.soft_rank(x, 1e-6, kind, descending=True), _hard_ranks(-x, kind), atol=1e-9
    )
    np.testing.assert_allclose(ref.soft_sort(x, 1e-6, kind), np.sort(x), atol=1e-9)
    np.testing.assert_allclose(
        ref.soft_sort(x, 1e-6, kind, descending=True), np.sort(x)[::-1], atol=1e-9
    )


def test_l2_keeps_sums_and_flattens_to_the_mean_at_a_large_temperature():
    x = np.random.default_rng(0).normal(size=9)
    n = len(x)
    for t in (0.1, 1.0, 10.0):
        ranks, sorted_x = ref.soft_rank(x, t), ref.soft_sort(x, t)
        np.testing.assert_allclose(ranks.sum(), n * (n + 1) / 2)
        np.testing.assert_allclose(sorted_x.sum(), x.sum())
        assert np.all(np.diff(sorted_x) >= -1e-12)
    np.testing.assert_allclose(ref.soft_rank(x, 1e6), np.full(n, (n + 1) / 2), atol=1e-4)
    np.testing.assert_allclose(ref.soft_sort(x, 1e6), np.full(n, x.mean()), atol=1e-4)
