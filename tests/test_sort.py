"""The sort-and-rank family's float64 oracle (tests/reference_sort.py), checked on its own:
the isotonic reduction against a direct solve of the projection, and its limits."""

from pathlib import Path

import jax
import jax.numpy as jnp
import jax.test_util  # noqa: F401
import numpy as np
import pytest
import reference_sort as ref
from scipy import stats

import jaxrelax


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


# --- jaxrelax's orders against the oracle ---

KINDS = ["l2", "kl"]
QUANTILES = np.array([0.0, 0.3, 0.5, 0.99, 1.0])


def _slices(fn, x, *args):
    return np.stack([fn(row, *args) for row in np.asarray(x, np.float64).reshape(-1, x.shape[-1])])


def _adversarial(n):
    """One outlier below a cluster spaced just under 1 (the temperature): merging adjacent
    violators needs one round per entry here."""
    x = np.arange(n) * 0.9
    x[0] = -10.0 * n * n
    return x


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("descending", [False, True])
def test_agrees_with_the_oracle_in_float64(x64, kind, descending):
    rng = np.random.default_rng(1)
    inputs = [  # one shape: compiled once per function
        rng.normal(size=(2, 33)),
        np.round(rng.normal(size=(2, 33)) * 2) / 2,  # ties
        rng.normal(size=(2, 33)) * 8,  # a fair share pools
        np.stack([_adversarial(33), -_adversarial(33)]),
    ]
    for x in inputs:
        for t in (0.05, 1.0, 7.0):
            got = jaxrelax.soft_rank(x, temperature=t, regularization=kind, descending=descending)
            want = _slices(ref.soft_rank, x, t, kind, descending)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)
            got = jaxrelax.soft_sort(x, temperature=t, regularization=kind, descending=descending)
            want = _slices(ref.soft_sort, x, t, kind, descending)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9 * np.abs(x).max())
            if not descending:  # the linear interpolation of the ascending soft sort
                got = jaxrelax.soft_quantile(x, QUANTILES, temperature=t, regularization=kind)
                want = np.quantile(_slices(ref.soft_sort, x, t, kind, False), QUANTILES, -1)
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9 * np.abs(x).max())


@pytest.mark.parametrize("kind", KINDS)
def test_large_rows_and_the_adversarial_row_in_float32(kind):
    """Every level of the tree and the worst case of pooling rounds, against the oracle."""
    rng = np.random.default_rng(2)
    n = 3000
    for x, t in ((rng.normal(size=n) * n / 4, 1.0), (_adversarial(n), 1.0)):
        got = jaxrelax.soft_rank(jnp.asarray(x, jnp.float32), temperature=t, regularization=kind)
        np.testing.assert_allclose(got, ref.soft_rank(x, t, kind), rtol=1e-5, atol=2e-3)
        got = jaxrelax.soft_sort(jnp.asarray(x, jnp.float32), temperature=t, regularization=kind)
        want = ref.soft_sort(x, t, kind)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(x).max())


def _oracle_jacobian(fn, x, step=1e-6):
    return np.stack(
        [(fn(x + step * e) - fn(x - step * e)) / (2 * step) for e in np.eye(len(x))], -1
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["soft_rank", "soft_sort"])
def test_jacobians_against_the_oracle_and_finite_differences(x64, kind, name):
    rng = np.random.default_rng(3)
    x, t = rng.normal(size=12) * 3, 1.5
    fn = getattr(jaxrelax, name)
    oracle = getattr(ref, name)
    got = jax.jacrev(lambda x: fn(x, temperature=t, regularization=kind))(x)
    want = _oracle_jacobian(lambda x: oracle(x, t, kind), x)
    np.testing.assert_allclose(got, want, atol=1e-6)
    pooled = np.sum(np.abs(np.asarray(got) - np.diag(np.diag(np.asarray(got)))) > 1e-9)
    assert pooled > 0, "the test point should pool some entries"
    jax.test_util.check_grads(
        lambda x, t: fn(x, temperature=t, regularization=kind), (x, t), order=2, modes=["rev"]
    )


def test_hard_limits(x64):
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(size=(4, 9)), 1)
    np.testing.assert_array_equal(jaxrelax.rank(x), np.stack([stats.rankdata(r) for r in x]))
    np.testing.assert_array_equal(
        jaxrelax.rank(x, descending=True), np.stack([stats.rankdata(-r) for r in x])
    )
    np.testing.assert_allclose(jaxrelax.soft_rank(x, temperature=1e-6), jaxrelax.rank(x))
    np.testing.assert_allclose(jaxrelax.soft_sort(x, temperature=1e-6), np.sort(x), atol=1e-9)
    q = np.array([0.0, 0.1, 0.5, 0.77, 1.0])
    np.testing.assert_allclose(
        jaxrelax.soft_quantile(x, q, temperature=1e-6), np.quantile(x, q, axis=-1), atol=1e-9
    )
    np.testing.assert_allclose(
        jaxrelax.soft_quantile(x, 0.3, 0, temperature=1e-6), np.quantile(x, 0.3, axis=0)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_straight_through_forms(kind):
    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, 10)), jnp.float32)
    kw = dict(temperature=2.0, regularization=kind)
    for st, soft, hard in (
        (jaxrelax.st_sort, jaxrelax.soft_sort, jnp.sort(x)),
        (jaxrelax.st_rank, jaxrelax.soft_rank, jaxrelax.rank(x)),
    ):
        np.testing.assert_array_equal(st(x, **kw), hard)
        g = np.random.default_rng(6).normal(size=x.shape)
        want = jax.grad(lambda x, f=soft, g=g: jnp.sum(g * f(x, **kw)))(x)
        got = jax.grad(lambda x, f=st, g=g: jnp.sum(g * f(x, **kw)))(x)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(jaxrelax.st_sort(x, descending=True), jnp.sort(x)[:, ::-1])


@pytest.mark.parametrize("kind", KINDS)
def test_masks_infinities_and_nan(kind):
    x = np.array([3.0, -1.0, np.inf, 0.5, -np.inf, 2.0, 7.0, np.inf])
    where = np.array([True, True, True, True, True, True, False, True])
    finite = np.array([3.0, -1.0, 0.5, 2.0])
    t = 0.8
    ranks = np.asarray(jaxrelax.soft_rank(x, temperature=t, regularization=kind, where=where))
    want = ref.soft_rank(finite, t, kind) + 1  # one -inf below
    np.testing.assert_allclose(ranks[[0, 1, 3, 5]], want, rtol=1e-6)
    np.testing.assert_array_equal(ranks[[2, 4, 6, 7]], [6.5, 1.0, 0.0, 6.5])
    sorted_x = np.asarray(jaxrelax.soft_sort(x, temperature=t, regularization=kind, where=where))
    np.testing.assert_allclose(sorted_x[1:5], ref.soft_sort(finite, t, kind), rtol=1e-6)
    np.testing.assert_array_equal(sorted_x[[0, 5, 6, 7]], [-np.inf, np.inf, np.inf, 0.0])
    down = np.asarray(
        jaxrelax.soft_sort(x, temperature=t, regularization=kind, where=where, descending=True)
    )
    np.testing.assert_allclose(down[2:6], ref.soft_sort(finite, t, kind, True), rtol=1e-6)
    for fn in (jaxrelax.soft_rank, jaxrelax.soft_sort, jaxrelax.st_rank, jaxrelax.st_sort):

        def loss(x, f=fn):
            out = f(x, temperature=t, where=where)
            return jnp.sum(jnp.cos(jnp.where(jnp.isinf(out), 0, out)))

        g = jax.grad(loss)(x)
        assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[[2, 4, 6, 7]] == 0)
    nothing = np.zeros(8, bool)
    np.testing.assert_array_equal(jaxrelax.soft_rank(x, where=nothing), np.zeros(8))
    np.testing.assert_array_equal(jaxrelax.soft_quantile(x, 0.5, where=nothing), 0.0)
    with_nan = np.array([[1.0, np.nan, 2.0], [1.0, 0.0, 2.0]])
    for fn in (jaxrelax.soft_rank, jaxrelax.soft_sort, jaxrelax.rank):
        out = np.asarray(fn(with_nan))
        assert np.isnan(out[0]).all() and np.isfinite(out[1]).all()
    for fn in (jaxrelax.soft_rank, jaxrelax.soft_sort, jaxrelax.st_rank, jaxrelax.st_sort):
        g = np.asarray(jax.grad(lambda x, f=fn: jnp.sum(jnp.sin(f(x))))(with_nan))
        assert np.isnan(g[0]).all() and np.isfinite(g[1]).all()
    masked_nan = np.asarray(jaxrelax.soft_rank(with_nan, where=~np.isnan(with_nan)))
    np.testing.assert_allclose(masked_nan[0], [1.0, 0.0, 2.0], atol=0.3)


def test_extreme_temperatures_overflow_nothing():
    """l2: ``x / t`` (ranks) or ``n / t`` (the sort), and ``t * n`` or ``t * x`` (the
    scale-equivariant forms), each overflow float32 somewhere below: the results are still
    the hard ones at a tiny temperature and the means at a huge one, with finite gradients."""
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 64)), jnp.float32)
    cases = [
        (jaxrelax.soft_rank, x * 1e30, 1e-9, jaxrelax.rank(x)),  # x / t = 1e39
        (jaxrelax.soft_sort, x, 1e-37, jnp.sort(x)),  # n / t = 6e38
        (jaxrelax.soft_rank, x, 1e37, jnp.full(x.shape, 32.5)),  # t * n = 6e38
        (
            jaxrelax.soft_sort,
            x * 1e10 + 5e10,
            1e30,
            jnp.broadcast_to(jnp.mean(x * 1e10 + 5e10, -1, keepdims=True), x.shape),
        ),  # t * x = 5e40
    ]
    for fn, scores, t, want in cases:
        np.testing.assert_allclose(fn(scores, temperature=t), want, rtol=1e-5)
        g = jax.grad(lambda x, t, f=fn: jnp.sum(jnp.sin(f(x, temperature=t) / 1e10)), (0, 1))
        assert all(np.isfinite(v).all() for v in g(scores, t))


def test_temperature_scaled_by_spread_and_size_keeps_its_meaning():
    """The docstrings' recipe: tau * std / n for ranks (tau * n / std for the sort) gives the
    same normalised result at n = 1000 and n = 5000, where the temperature it gives at
    n = 1000, kept fixed, does not."""
    rng = np.random.default_rng(7)

    def rank_gap(n, recipe):
        x = rng.normal(size=(8, n)) * 3.0
        t = 10.0 * x.std(-1, keepdims=True) / n if recipe else 0.03  # pools where pdf > 0.1
        soft = np.asarray(jaxrelax.soft_rank(jnp.asarray(x, jnp.float32), temperature=t))
        return np.mean(np.abs(soft - np.asarray(jaxrelax.rank(x)))) / n

    def sort_gap(n, recipe):
        x = rng.normal(size=(8, n)) * 3.0
        t = 0.2 * n / x.std(-1, keepdims=True) if recipe else 67.0  # pools where pdf < 0.2
        soft = np.asarray(jaxrelax.soft_sort(jnp.asarray(x, jnp.float32), temperature=t))
        return np.mean(np.abs(soft - np.sort(x))) / x.std()

    for gap in (rank_gap, sort_gap):
        small, large = gap(1000, True), gap(5000, True)
        assert 0.8 < large / small < 1.25, (gap.__name__, small, large)
        fixed_small, fixed_large = gap(1000, False), gap(5000, False)
        drift = abs(np.log(fixed_large / fixed_small))
        assert drift > max(np.log(1.3), 2 * abs(np.log(large / small))), (fixed_small, fixed_large)


def test_errors_name_the_argument():
    x = jnp.ones(4)
    with pytest.raises(ValueError, match="regularization"):
        jaxrelax.soft_rank(x, regularization="l1")
    with pytest.raises(ValueError, match="q must be in"):
        jaxrelax.soft_quantile(x, 1.5)
    with pytest.raises(ValueError, match="q must be a scalar or a 1-D"):
        jaxrelax.soft_quantile(x, jnp.ones((2, 2)) / 2)
    with pytest.raises(TypeError, match="descending"):
        jaxrelax.soft_sort(x, descending="yes")


def test_agrees_with_softjax(x64):
    """The peer's fast_soft_sort method (tests/make_sort_peer.py stored its float64 output):
    values and VJPs, at the paper's temperature (its kl rank is another operator: skipped)."""
    data = np.load(Path(__file__).parent / "data" / "softjax_sort.npz")
    for i in range(int(data["num_cases"])):
        case = {k.split("_", 1)[1]: data[k] for k in data.files if k.startswith(f"c{i:02d}_")}
        if case["x"].shape[-1] not in (3, 17) and not bool(case["ties"]) or case["descending"]:
            continue  # a few sizes, each compiled anew (descending: against the oracle above)
        kw = dict(
            temperature=float(case["temperature"]),
            regularization=str(case["kind"]),
            descending=bool(case["descending"]),
        )
        x, g = jnp.asarray(case["x"]), jnp.asarray(case["cotangent"])
        checks = [(jaxrelax.soft_sort, "sort")]
        if bool(case["rank_is_paper"]):
            checks.append((jaxrelax.soft_rank, "rank"))
        for fn, name in checks:
            value, vjp = jax.vjp(lambda x, fn=fn, kw=kw: fn(x, **kw), x)
            np.testing.assert_allclose(value, case[name], rtol=1e-10, atol=1e-9)
            if not bool(case["ties"]):  # tied entries' VJP follows each one's tie order
                np.testing.assert_allclose(vjp(g)[0], case[f"{name}_vjp"], atol=1e-8)
