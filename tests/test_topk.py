"""Tests of the top-k family: topk_mask, soft_topk, sparse_topk, st_topk and gumbel_topk.

The oracles are written here, in float64 NumPy, independently of the library and of
reference.py:

- ``np_topk_mask``: a sort of each slice; ties at the k-th value go to the lowest indices
  ("first") or share what is left equally ("uniform").
- ``np_soft_topk``: the LML projection (Amos et al. 2019), p_i = sigmoid((x_i - tau) / t) with
  sum p = k, tau found by bisection until its bracket is two adjacent float64 numbers.
- ``np_sparse_topk``: the Euclidean projection of x / t onto {0 <= p <= 1, sum p = k}: bisection
  on tau of sum clip(z - tau, 0, 1) = k, then tau in closed form on the free set (exact zeros
  and ones elsewhere); where the solutions tau form an interval (no free entry), its midpoint.
- ``_plackett_luce_subsets``: the probability of each k-subset under sampling without
  replacement proportional to softmax(logits), by enumerating the orderings.

All share the documented limits: masked and -inf entries take no part, +inf entries are chosen
first (with more +inf entries than k they share the k units equally), a slice with k or fewer
candidates chooses them all (exactly 1.0), an unmasked NaN makes its slice NaN.

Tolerances: float64 results are compared to 1e-12 and float32 results to 1e-6 (the scale of
the output is 1), against the oracle run on the same, already rounded input, except where
float arithmetic cannot do better: see ``_relaxed``, which widens them by the effect of a few
roundings of tau, of z = x / t and of the slice's sum (large |x / t|, large k).

Compiling dominates the cost (about a second per program for the relaxed functions), so the
oracle comparisons run soft/sparse_topk under one jit per shape with k and the temperature
traced, and a few tests call the functions eagerly. Sweeps (adversarial and 131072-long
slices, every function under jit/vmap/grad, hypothesis, bfloat16) are marked slow.

Statistical assertions allow 5 standard errors per cell (a single normal check fails by chance
with probability about 6e-7) or a chi-square at a false-alarm rate of 1e-6; all use fixed keys,
so a run is reproducible and a pass is a pass.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads
from scipy import special, stats

import jaxrelax

INF, NAN = np.inf, np.nan
Z = 5.0  # standard errors allowed
BASE_TOL = {np.float32: 1e-6, np.float64: 1e-12}
ROUNDINGS = 4  # roundings allowed on top of BASE_TOL where a magnitude amplifies them
RELAXED = {"soft": jaxrelax.soft_topk, "sparse": jaxrelax.sparse_topk}


# --- oracles ---


class _Slices:
    """x's slices along ``axis`` as float64 rows (row-major within each slice) and back."""

    def __init__(self, x, axis=-1, where=None):
        x = np.asarray(x, np.float64)
        self.shape = x.shape
        if axis is None:
            self.axes = tuple(range(x.ndim))
        else:
            self.axes = tuple(sorted(a % x.ndim for a in np.atleast_1d(axis)))
        rest = [a for a in range(x.ndim) if a not in self.axes]
        self.order = rest + list(self.axes)
        self.moved = tuple(x.shape[a] for a in self.order)
        count = int(np.prod([x.shape[a] for a in rest]))
        self.n = int(np.prod([x.shape[a] for a in self.axes]))
        self.rows = np.transpose(x, self.order).reshape(count, self.n)
        mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
        self.masks = np.transpose(mask, self.order).reshape(count, self.n)

    def per_slice(self, value):
        """A scalar or per-slice parameter (size 1 along the axes) as one float64 per row."""
        keep = [1 if a in self.axes else s for a, s in enumerate(self.shape)]
        value = np.broadcast_to(np.asarray(value, np.float64), keep)
        return np.transpose(value, self.order).reshape(-1)

    def restore(self, rows):
        return np.transpose(rows.reshape(self.moved), np.argsort(self.order))


def _row_topk_mask(row, valid, k, ties):
    if np.isnan(row[valid]).any():
        return np.full(row.shape, NAN)
    out = np.zeros(row.shape)
    candidates = np.flatnonzero(valid & (row > -INF))
    if len(candidates) <= k:
        out[candidates] = 1.0
        return out
    if k == 0:
        return out
    boundary = np.sort(row[candidates])[::-1][k - 1]
    above = candidates[row[candidates] > boundary]
    tied = candidates[row[candidates] == boundary]  # in index order
    needed = k - len(above)
    out[above] = 1.0
    if ties == "first":
        out[tied[:needed]] = 1.0
    else:
        out[tied] = needed / len(tied)
    return out


def np_topk_mask(x, k, axis=-1, where=None, ties="first"):
    s = _Slices(x, axis, where)
    rows = [_row_topk_mask(r, m, k, ties) for r, m in zip(s.rows, s.masks, strict=True)]
    return s.restore(np.array(rows).reshape(s.rows.shape))


def _lml(z, k):
    """(tau, tau, tau): sum(sigmoid(z - tau)) = k for finite z and 0 < k < len(z)."""
    logit = np.log(k) - np.log(len(z) - k)
    lo = z.min() - max(logit, 0.0) - 1  # the sum there exceeds k
    hi = z.max() + max(-logit, 0.0) + 1  # and there falls short of it
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        if special.expit(z - mid).sum() > k:
            lo = mid
        else:
            hi = mid
    return mid, mid, mid


def _capped_simplex(z, k):
    """(tau, lowest tau, highest tau): sum(clip(z - tau, 0, 1)) = k for finite z, 0 < k < len(z).

    The solutions form an interval when no entry is free (strictly inside (0, 1)); tau is then
    its midpoint."""
    lo, hi = z.min() - 1, z.max()  # masses len(z) and 0
    while True:
        mid = 0.5 * (lo + hi)
        if mid <= lo or mid >= hi:
            break
        mass = np.clip(z - mid, 0, 1).sum()
        if mass == k:
            break
        if mass > k:
            lo = mid
        else:
            hi = mid
    d = z - mid
    upper, free = d >= 1, (d > 0) & (d < 1)
    if free.any():
        tau = (z[free].sum() + upper.sum() - k) / free.sum()
        return tau, tau, tau
    assert upper.sum() == k, "the oracle landed on a breakpoint; change the input"
    low, high = z[~upper].max(), z[upper].min() - 1
    return 0.5 * (low + high), low, high


@np.errstate(over="ignore", under="ignore", invalid="ignore")
def _relaxed(x, k, axis=-1, temperature=1.0, where=None, kind="soft", dtype=np.float64):
    """(p, tolerance, sum_tolerance) of soft_topk or sparse_topk, for results in ``dtype``.

    The tolerance is BASE_TOL[dtype] (1e-6 or 1e-12: the scale of the output is 1), widened
    where float arithmetic in ``dtype`` cannot do better, by ROUNDINGS roundings of:
    - tau and each z_i = x_i / t, which move a soft p_i by p_i (1 - p_i) (|z_i| + |tau|) eps,
      and a sparse one on the free set F by (|tau| + max_F |z|) eps;
    - the slice's sum (about k eps), which moves tau by k eps / sum_j p_j (1 - p_j) (soft) or
      by k eps / |F| (sparse);
    - sigmoid (p_i eps).
    Sparse entries whose distance to [0, 1] before clipping exceeds those roundings (for any
    solution tau) must be exactly 0 or 1: tolerance 0. Sums: ROUNDINGS * k * eps, widened by
    the same roundings of tau and z.
    """
    s = _Slices(x, axis, where)
    ks, ts = s.per_slice(k), s.per_slice(temperature)
    eps, base = np.finfo(dtype).eps, BASE_TOL[dtype]
    outs, tols, sum_tols = [], [], []
    for row, valid, k, t in zip(s.rows, s.masks, ks, ts, strict=True):
        out, tol = np.zeros(s.n), np.full(s.n, base)
        sum_tol = max(ROUNDINGS * eps * max(k, 1.0), base)
        outs.append(out)
        tols.append(tol)
        if np.isnan(row[valid]).any():
            out[:] = NAN
            sum_tols.append(NAN)
            continue
        valid = valid & (row > -INF)
        count, posinf = valid.sum(), valid & (row == INF)
        sum_tols.append(sum_tol)
        if k >= count:
            out[valid] = 1.0
            continue
        if k <= 0:
            continue
        if posinf.sum() >= k:
            out[posinf] = k / posinf.sum()
            continue
        out[posinf] = 1.0
        free = valid & ~posinf
        z, k_free = row[free] / t, k - posinf.sum()
        if kind == "soft":
            tau, _, _ = _lml(z, k_free)
            p = special.expit(z - tau)
            spread = p * (1 - p)
            rounding = spread * (np.abs(z) + abs(tau))
            slack = rounding + k_free * spread / max(spread.sum(), 1e-300) + p
            tol[free] = np.maximum(base, ROUNDINGS * eps * slack)
            sum_tols[-1] += ROUNDINGS * eps * rounding.sum()
        else:
            tau, low, high = _capped_simplex(z, k_free)
            p = np.clip(z - tau, 0, 1)
            inside = (p > 0) & (p < 1)
            # tau = (sum_F z + |U| - k) / |F|: the sums round at the scale of z and of k
            scale = (
                abs(tau) + np.abs(z[inside]).max(initial=0.0) + 1 + k_free / max(inside.sum(), 1)
            )
            margin = ROUNDINGS * eps * (np.abs(z) + abs(tau) + 1 + scale * inside.any())
            distance = np.where(p == 1, z - high - 1, low - z)  # from [0, 1], for any tau
            exact = ~inside & (distance > margin)
            tol[free] = np.where(exact, 0.0, np.maximum(base, ROUNDINGS * eps * scale))
            sum_tols[-1] += ROUNDINGS * eps * scale * (~exact).sum()
        out[free] = p
    rows = lambda values: np.array(values).reshape(s.rows.shape)  # noqa: E731
    batch = tuple(s.moved[: len(s.moved) - len(s.axes)])
    return s.restore(rows(outs)), s.restore(rows(tols)), np.array(sum_tols).reshape(batch)


def np_soft_topk(x, k, axis=-1, temperature=1.0, where=None):
    return _relaxed(x, k, axis, temperature, where, "soft")[0]


def np_sparse_topk(x, k, axis=-1, temperature=1.0, where=None):
    return _relaxed(x, k, axis, temperature, where, "sparse")[0]


ORACLES = {"soft": np_soft_topk, "sparse": np_sparse_topk}


def _plackett_luce_subsets(logits, k, where=None):
    """{sorted tuple of k classes: probability} of k draws without replacement, each drawn
    with probability proportional to exp(logits) among the classes not yet drawn."""
    logits = np.asarray(logits, np.float64)
    weights = np.exp(logits - logits.max())
    if where is not None:
        weights = np.where(where, weights, 0.0)
    probs = {}
    for order in itertools.permutations(np.flatnonzero(weights > 0), k):
        prob, left = 1.0, weights.sum()
        for i in order:
            prob *= weights[i] / left
            left -= weights[i]
        key = tuple(sorted(int(i) for i in order))
        probs[key] = probs.get(key, 0.0) + prob
    return probs


def _assert_within(actual, expected, tol, err_msg=""):
    """|actual - expected| <= tol entrywise (NaN where expected is NaN, and only there)."""
    actual = np.asarray(actual).astype(np.float64)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected), err_msg=err_msg)
    error = np.where(np.isnan(expected), 0.0, np.abs(actual - np.nan_to_num(expected)))
    bad = ~(error <= tol)
    if bad.any():
        where = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{err_msg}: {bad.sum()} of {bad.size} entries off, worst excess "
            f"{np.max(error - tol):.3g}; first at {where}: got {actual[where]!r}, expected "
            f"{expected[where]!r} +- {tol[where]:.3g}"
        )


@functools.partial(jax.jit, static_argnames=("kind", "axis"))
def _relaxed_jit(x, k, temperature, where, kind, axis=-1):
    """soft/sparse_topk compiled once per shape: k and the temperature are traced."""
    return RELAXED[kind](x, k, axis, temperature=temperature, where=where)


def _check_relaxed(kind, x, k, dtype, axis=-1, temperature=1.0, where=None, err_msg=""):
    """Runs soft/sparse_topk in ``dtype`` and compares with the oracle on the rounded input:
    values entry by entry, sums slice by slice (see ``_relaxed`` for the tolerances)."""
    x = np.asarray(x, dtype)
    out = _relaxed_jit(
        x, np.asarray(k, dtype), np.asarray(temperature, dtype), where, kind=kind, axis=axis
    )
    assert out.dtype == dtype, err_msg
    expected, tol, sum_tol = _relaxed(x, k, axis, temperature, where, kind, dtype)
    _assert_within(out, expected, tol, err_msg)
    sums = np.nansum(_Slices(out, axis).rows, 1).reshape(sum_tol.shape)
    expected_sums = np.nansum(_Slices(expected, axis).rows, 1).reshape(sum_tol.shape)
    ok = np.isnan(sum_tol) | (np.abs(sums - expected_sums) <= sum_tol)
    assert ok.all(), (err_msg, "sums", sums[~ok], expected_sums[~ok], sum_tol[~ok])
    out = np.asarray(out)
    assert ((out >= 0) & (out <= 1) | np.isnan(out)).all(), err_msg
    return out


def test_oracles_agree_with_their_definitions(rng):
    # The oracles, checked against brute force: sort ranks, LML stationarity, and the
    # projection's optimality conditions (KKT, sufficient for this convex problem).
    x = rng.integers(0, 4, size=(6, 9)).astype(float)
    for k in range(10):
        for ties in ["first", "uniform"]:
            mask = np_topk_mask(x, k, ties=ties)
            np.testing.assert_allclose(mask.sum(1), k)
            for row, m in zip(x, mask, strict=True):
                order = np.lexsort((np.arange(9), -row))  # by value, then index
                if ties == "first":
                    np.testing.assert_array_equal(np.flatnonzero(m), np.sort(order[:k]))
                else:
                    np.testing.assert_array_equal(m[order[: max(k, 1)]] > 0, k > 0)
    x = rng.normal(size=(4, 7)) * 0.5
    for k in [0.5, 1, 3, 6.5]:
        p = np_soft_topk(x, k, temperature=0.7)
        np.testing.assert_allclose(p.sum(1), k, rtol=1e-14)
        tau = x - 0.7 * special.logit(p)  # one tau per slice
        np.testing.assert_allclose(tau, tau[:, :1].repeat(7, 1), rtol=0, atol=1e-12)
    x = rng.normal(size=(40, 7)) * 2
    for k in [0.5, 1, 3, 6.5]:
        q = np_sparse_topk(x, k, temperature=0.7)
        np.testing.assert_allclose(q.sum(1), k, rtol=1e-14)
        free_rows = 0
        for z, row in zip(x / 0.7, q, strict=True):
            # z - p = tau on the free set, >= tau where p = 1, <= tau where p = 0
            gap = z - row
            inside = (row > 0) & (row < 1)
            if inside.any():
                free_rows += 1
                tau = gap[inside].mean()
                np.testing.assert_allclose(gap[inside], tau, rtol=0, atol=1e-12)
            else:
                tau = gap[row == 0].max(initial=-INF)
            assert (gap[row == 1] >= tau - 1e-12).all() and (gap[row == 0] <= tau + 1e-12).all()
        assert free_rows > 0
    probs = _plackett_luce_subsets(np.log([0.1, 0.2, 0.3, 0.4]), 2)
    assert abs(sum(probs.values()) - 1) < 1e-14 and len(probs) == 6
    # P({a, b}) = p_a p_b / (1 - p_a) + p_b p_a / (1 - p_b)
    np.testing.assert_allclose(probs[(0, 1)], 0.02 / 0.9 + 0.02 / 0.8, rtol=1e-14)


# --- topk_mask ---


@functools.partial(jax.jit, static_argnames=("k", "axis", "ties"))
def _mask_jit(x, where, k, axis=-1, ties="first"):
    return jaxrelax.topk_mask(x, k, axis, where=where, ties=ties)


@pytest.mark.parametrize("axis", [-1, (0, 2), None])
def test_topk_mask_matches_the_sort(axis, rng):
    x = rng.integers(0, 5, size=(3, 4, 6)).astype(np.float32)  # plenty of ties
    where = rng.random(x.shape) < 0.8
    where[0] = True  # whole slices unmasked too (for axis=-1 and (0, 2))
    n = _Slices(x, axis).n
    for ties in ["first", "uniform"]:
        for k in sorted({2, n // 2}):
            out = _mask_jit(x, where, k=k, axis=axis, ties=ties)
            assert out.dtype == np.float32
            expected = np_topk_mask(x, k, axis, where, ties)
            np.testing.assert_allclose(out, expected, rtol=1e-7, err_msg=f"k={k}, {ties}")


def test_topk_mask_first_matches_lax_top_k(rng):
    x = rng.integers(0, 6, size=(50, 20)).astype(np.float32)
    for k in [3, 20]:
        _, indices = jax.lax.top_k(x, k)
        expected = jax.nn.one_hot(indices, 20).sum(1)
        np.testing.assert_array_equal(_mask_jit(x, None, k=k), expected)
        if k == 3:
            np.testing.assert_array_equal(_mask_jit(x.T, None, k=k, axis=0), expected.T)


def test_topk_mask_ties_closed_form():
    x = jnp.array([[3.0, 1.0, 1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    np.testing.assert_array_equal(_mask_jit(x, None, k=2), [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0]])
    np.testing.assert_allclose(
        _mask_jit(x, None, k=2, ties="uniform"),
        [[1, 1 / 3, 1 / 3, 1 / 3, 0], [0.4] * 5],
        rtol=1e-7,
    )
    np.testing.assert_allclose(
        _mask_jit(x, None, k=3, ties="uniform"),
        [[1, 2 / 3, 2 / 3, 2 / 3, 0], [0.6] * 5],
        rtol=1e-7,
    )
    # within a tuple of axes, "first" is row-major over those axes
    y = jnp.array([[1.0, 5.0], [5.0, 5.0]])
    np.testing.assert_array_equal(_mask_jit(y, None, k=2, axis=(0, 1)), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(_mask_jit(y, None, k=2, axis=None), [[0, 1], [1, 0]])
    np.testing.assert_array_equal(_mask_jit(y.T, None, k=2, axis=(0, 1)), [[0, 1], [1, 0]])


def test_topk_mask_with_k_one_is_hardmax(rng):
    x = rng.integers(0, 3, size=(20, 7)).astype(np.float32)
    where = rng.random(x.shape) < 0.7
    x[0] = [INF, 1, INF, 0, -INF, 2, 2]
    x[1] = -INF
    for ties, axis in [("first", -1), ("uniform", -1), ("first", (0, 1))]:
        hardmax = jax.jit(lambda x, a=axis, t=ties: jaxrelax.hardmax(x, a, where=where, ties=t))
        np.testing.assert_array_equal(
            _mask_jit(x, where, k=1, axis=axis, ties=ties), hardmax(x), err_msg=ties
        )


def test_topk_mask_is_piecewise_constant(rng):
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    for ties in ["first", "uniform"]:
        grad = jax.jit(
            jax.grad(lambda x, t=ties: jnp.sum(jaxrelax.topk_mask(x, 3, ties=t) * weights))
        )(x)
        np.testing.assert_array_equal(grad, 0)
    # integers are promoted to the default float
    out = jaxrelax.topk_mask(jnp.array([3, 1, 4, 1, 5]), 2)
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, [0, 0, 1, 0, 1])


# --- soft_topk and sparse_topk against the oracles ---


def _adversarial(rng):
    """name -> (x, ks): slices along the last axis."""
    signs = rng.choice([-1.0, 1.0], size=(3, 100))
    return {
        "ties": (np.array([[1.0, 1.0, 1.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0, -5.0]]), [1, 2, 4]),
        "many ties": (rng.integers(0, 3, size=(3, 1000)).astype(float), [1, 100, 500, 999]),
        "huge range": (signs * 10.0 ** rng.uniform(-8, 8, size=(3, 100)), [1, 5, 50, 99]),
        "tiny range": (1.0 + rng.normal(size=(3, 1000)) * 1e-6, [1, 10, 500]),
        "nearly equal top": (
            np.concatenate([[[5.0, 5.0 - 1e-7]] * 2, rng.normal(size=(2, 98))], 1),
            [1, 2, 3],
        ),
        "n=1": (rng.normal(size=(5, 1)), [0, 1]),
        "two elements": (np.array([[0.3, -0.2], [5.0, -5.0], [0.1, 0.1], [0.0, 1.5]]), [1]),
        "fractional k": (rng.normal(size=(3, 50)) * 3, [0.25, 2.5, 49.75]),
    }


def _long(rng):
    return {
        "n=131072 dense": (rng.normal(size=(1, 131072)) * 0.01, [1, 1000, 65536]),
        "n=131072 sparse": (rng.normal(size=(1, 131072)) * 10, [1, 1000, 131071]),
        "n=131072 ties": (rng.integers(0, 4, size=(1, 131072)).astype(float), [1, 40000]),
        "n=131072 huge range": (
            rng.choice([-1.0, 1.0], size=(1, 131072)) * 10.0 ** rng.uniform(-8, 8, (1, 131072)),
            [1, 70000],
        ),
    }


ADVERSARIAL = list(_adversarial(np.random.default_rng(0)))
LONG = list(_long(np.random.default_rng(0)))


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", RELAXED)
@pytest.mark.parametrize("case", ADVERSARIAL)
def test_matches_the_oracle_on_adversarial_inputs(case, kind, dtype, rng):
    x, ks = _adversarial(rng)[case]
    with jax.enable_x64(dtype == np.float64):
        for k in ks:
            _check_relaxed(kind, x, k, dtype, err_msg=f"{case}, k={k}")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", RELAXED)
@pytest.mark.parametrize("case", LONG)
def test_matches_the_oracle_on_long_slices(case, kind, dtype, rng):
    x, ks = _long(rng)[case]
    with jax.enable_x64(dtype == np.float64):
        for k in ks:
            _check_relaxed(kind, x, k, dtype, err_msg=f"{case}, k={k}")


@pytest.mark.parametrize("kind", RELAXED)
def test_matches_the_oracle_on_random_inputs(kind, rng):
    for shape, axis in [((6, 50), -1), ((3, 4, 20), (0, 2))]:
        x = rng.normal(size=shape)
        where = rng.random(shape) < 0.85
        n = _Slices(x, axis).n
        for temperature in [0.05, 1.0, 20.0]:
            for k in [1, 3, 0.35 * n]:
                _check_relaxed(
                    kind, x, k, np.float32, axis, temperature, where, f"{axis}, {temperature}, {k}"
                )
    with jax.enable_x64(True):
        x = rng.normal(size=(6, 50))
        for temperature in [0.05, 1.0, 20.0]:
            for k in [1, 3, 17.5]:
                _check_relaxed(kind, x, k, np.float64, -1, temperature, None, f"{temperature}, {k}")


@pytest.mark.parametrize("kind", RELAXED)
def test_per_slice_k_and_temperature(kind, rng, x64):
    x = rng.normal(size=(4, 3, 10))
    k = np.array([1.0, 2.5, 7.0, 10.0]).reshape(4, 1, 1) * np.ones((1, 3, 1))
    t = rng.uniform(0.2, 3.0, size=(4, 3, 1))
    out = _check_relaxed(kind, x, k[:, :1], np.float64, -1, t)  # k broadcast from (4, 1, 1)
    np.testing.assert_array_equal(out[3], 1.0)  # k = n
    # vmap over k
    ks = jnp.array([0.5, 3.0, 9.25])
    mapped = jax.jit(jax.vmap(lambda k: RELAXED[kind](x, k, temperature=0.8)))(ks)
    for i, k_i in enumerate(ks):
        np.testing.assert_allclose(mapped[i], ORACLES[kind](x, float(k_i), -1, 0.8), atol=1e-12)


def test_soft_topk_closed_forms(x64):
    # n = 2, k = 1: tau is the midpoint, p_1 = sigmoid((x_1 - x_2) / (2 t)).
    two = jax.jit(lambda d: jaxrelax.soft_topk(jnp.stack([d, 0.0]), 1, temperature=0.6))
    for d in [-30.0, -3.0, -0.4, 0.0, 0.7, 2.5]:
        expected = special.expit(d / 1.2)
        np.testing.assert_allclose(two(d), [expected, 1 - expected], rtol=1e-13, atol=1e-15)
    # n equal entries: k / n each, for any temperature
    np.testing.assert_allclose(
        _relaxed_jit(np.full(7, 3.0), 2.0, 1.0, None, kind="soft"), 2 / 7, rtol=1e-14
    )
    # every entry strictly inside (0, 1)
    x = np.random.default_rng(3).normal(size=(5, 10)).astype(np.float32)
    for k in [1, 5, 9]:
        out = np.asarray(_relaxed_jit(x, np.float32(k), np.float32(1), None, kind="soft"))
        assert ((out > 0) & (out < 1)).all()


def test_sparse_topk_closed_forms(rng, x64):
    # n = 2, k = 1 is sparsemax: p_1 = clip((z_1 - z_2 + 1) / 2, 0, 1).
    two = jax.jit(lambda d: jaxrelax.sparse_topk(jnp.stack([d, 0.0]), 1))
    for d in [-3.0, -1.0, -0.4, 0.0, 0.7, 2.5]:
        expected = np.clip((d + 1) / 2, 0, 1)
        np.testing.assert_allclose(two(d), [expected, 1 - expected], rtol=0, atol=1e-15)
    # all entries free: p = z - mean(z) + k / n
    x = rng.uniform(-0.04, 0.04, size=(20, 30))
    x[0, :4] = [3.0, 1.0, 0.5, -2.0]  # the docstring's example with k = 2: [1, 0.75, 0.25, 0]
    x[0, 4:] = -INF
    out = _relaxed_jit(x, np.array([[2.0]] + [[3.0]] * 19), 1.0, None, kind="sparse")
    np.testing.assert_allclose(out[0, :4], [1, 0.75, 0.25, 0], rtol=0, atol=1e-15)
    expected = x[1:] - x[1:].mean(1, keepdims=True) + 3 / 30
    np.testing.assert_allclose(out[1:], expected, rtol=0, atol=1e-15)
    # exact ones and zeros, and never above 1, whatever the scale
    x = rng.normal(size=(20, 30)) * 100
    for t in [1.0, 0.01, 1e-6]:
        out = np.asarray(_relaxed_jit(x, 4.0, t, None, kind="sparse"))
        assert out.max() <= 1 and out.min() >= 0
        assert ((out == 0) | (out == 1)).sum() >= 0.9 * out.size
    with jax.enable_x64(False):
        big = (rng.normal(size=(20, 30)) * 1e6).astype(np.float32)
        out = np.asarray(_relaxed_jit(big, np.float32(4), np.float32(1e-3), None, kind="sparse"))
        assert out.max() <= 1 and out.min() >= 0
        np.testing.assert_array_equal(out, np_topk_mask(big, 4))  # gaps far above 1


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
def test_sparse_topk_with_k_one_is_sparsemax(dtype, rng):
    with jax.enable_x64(dtype == np.float64):
        x = rng.normal(size=(50, 20)).astype(dtype)
        x[0, :3] = x[0].max() + 1  # ties
        both = jax.jit(
            lambda x, t: (
                jaxrelax.sparse_topk(x, 1, temperature=t),
                jaxrelax.sparsemax(x, temperature=t),
            )
        )
        for t in [0.1, 1.0, 10.0]:
            mine, theirs = both(x, dtype(t))
            # a few roundings of z = x / t
            atol = 8 * np.finfo(dtype).eps * max(1, np.abs(x).max() / t)
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=atol)


@pytest.mark.parametrize("kind", RELAXED)
def test_temperature_limits(kind, rng, x64):
    x = np.round(rng.normal(size=(30, 9)), 1)  # gaps of 0.1, and ties
    x[0, :4] = x[0].max()  # four tied maxima, two chosen
    for k in [1, 2, 5]:
        # t -> 0: topk_mask with tied entries sharing what is left
        cold = _relaxed_jit(x, float(k), 1e-3, None, kind=kind)
        np.testing.assert_allclose(cold, np_topk_mask(x, k, ties="uniform"), rtol=0, atol=1e-9)
        # t -> inf: k / n everywhere (to about |x| / t)
        hot = _relaxed_jit(x, float(k), 1e6, None, kind=kind)
        np.testing.assert_allclose(hot, k / 9, rtol=0, atol=1e-5)


# --- gradients ---


def _soft_jacobian(p, t):
    s = p * (1 - p) / t
    return np.diag(s) - np.outer(s, s) / s.sum(), s / s.sum()


def _sparse_jacobian(p, t):
    free = ((p > 0) & (p < 1)).astype(float)
    return (np.diag(free) - np.outer(free, free) / free.sum()) / t, free / free.sum()


JACOBIANS = {"soft": _soft_jacobian, "sparse": _sparse_jacobian}


@pytest.mark.parametrize("kind", RELAXED)
def test_jacobians_match_their_closed_forms(kind, rng, x64):
    x = jnp.asarray(rng.normal(size=12) * 0.3)
    fn = lambda x, k, t: RELAXED[kind](x, k, temperature=t)  # noqa: E731
    jacobians = jax.jit(jax.jacrev(fn, (0, 1, 2)))
    for k, t in [(1.0, 0.5), (3.0, 0.5), (4.5, 0.2)]:
        p = ORACLES[kind](x, k, -1, t)
        jx, jk = JACOBIANS[kind](p, t)
        if kind == "sparse":
            assert 2 <= jx.diagonal().astype(bool).sum() < 12  # a free set, not everything
        mx, mk, mt = jacobians(x, k, t)
        np.testing.assert_allclose(mx, jx, rtol=0, atol=1e-12)
        np.testing.assert_allclose(mk, jk, rtol=0, atol=1e-12)
        # d/dt against central differences of the oracle (error about 1e-10)
        h = 1e-5
        numeric = (ORACLES[kind](x, k, -1, t + h) - ORACLES[kind](x, k, -1, t - h)) / (2 * h)
        np.testing.assert_allclose(mt, numeric, rtol=0, atol=1e-8)
        # and d/dk, which the closed form gives
        numeric = (ORACLES[kind](x, k + h, -1, t) - ORACLES[kind](x, k - h, -1, t)) / (2 * h)
        np.testing.assert_allclose(jk, numeric, rtol=0, atol=1e-8)


@pytest.mark.parametrize("t", [0.05, 0.02, 0.001])
def test_soft_topk_where_the_mass_is_flat_to_rounding_balances_the_tails(t):
    # float32 [3, 0], k = 1: 1 - p rounds to 0 on the chosen side, so the sum pins the
    # threshold only to within eps of mass (p[1] anywhere below 2.4e-7); the exact threshold
    # is 1.5 by symmetry, p[1] = sigmoid(-1.5 / t) (9.4e-14 at t = 0.05, 0 at t = 0.001), and
    # at an exact k-hot dk is the mean of the one-sided derivatives, 1.5 for cotangent [1, 2].
    x = jnp.array([3.0, 0.0], jnp.float32)
    p, vjp = jax.vjp(lambda k: jaxrelax.soft_topk(x, k, temperature=t), jnp.float32(1.0))
    expected = np.exp(-np.logaddexp(0, 1.5 / t))  # no overflow at t = 0.001
    np.testing.assert_allclose(p[1], expected, rtol=1e-5, atol=1e-45)
    assert p[0] == 1
    if expected < np.finfo(np.float32).tiny:
        np.testing.assert_allclose(vjp(jnp.array([1.0, 2.0]))[0], 1.5, rtol=1e-6)


@pytest.mark.parametrize("kind", RELAXED)
def test_gradient_in_k_at_an_exact_k_hot_is_the_mean_of_its_one_sided_values(kind, x64):
    # Every output exactly 0 or 1: the derivative in k has a left value (the smallest chosen
    # entries give up mass) and a right one (the largest unchosen ones take it), which the
    # oracle's one-sided differences give; the gradient is their mean. soft_topk's slopes
    # must all underflow (|x - tau| / t beyond 745 in float64); sparse_topk is k-hot wherever
    # the k-th and (k+1)-th scores are at least t apart.
    t = {"soft": 1e-5, "sparse": 1.0}[kind]
    x = jnp.array(
        [
            [3.0, 0.0, -1.0, -2.0, -3.0, -4.0],  # the issue's [3, 0] with k = 1, and more
            [2.0, 2.0, 0.5, 0.5, -1.0, 40.0],  # ties on both sides, a masked 40
            [5.0, -INF, 1.0, 1.0, 1.0, -INF],  # -inf entries take no part
            [0.3, 0.1, -0.2, 0.9, 0.6, 0.0],  # a free set (sparse), for contrast
            [4.0, 1.0, -INF, -INF, -INF, -INF],  # k = the finite count: dk = 0
        ]
    )
    where = jnp.ones(x.shape, bool).at[1, 5].set(False)
    k = jnp.array([[1.0], [2.0], [1.0], [2.0], [2.0]])
    g = jnp.arange(1.0, 31.0).reshape(5, 6) ** 1.5
    fn = lambda k: RELAXED[kind](x, k, temperature=t, where=where)  # noqa: E731
    p, vjp = jax.vjp(fn, k)
    (dk,) = vjp(g)
    h = 1e-6
    p, g = np.asarray(p), np.asarray(g)
    slopes = [
        (np.asarray(ORACLES[kind](x, k + h, -1, t, where)) - p) / h,  # right: mass comes in
        (p - np.asarray(ORACLES[kind](x, k - h, -1, t, where))) / h,  # left: mass leaves
    ]
    right, left = (np.sum(s * g, axis=1, keepdims=True) for s in slopes)
    assert np.all(np.isin(p[[0, 1, 2, 4]], [0, 1]))  # exact k-hot rows
    np.testing.assert_allclose(right[0], g[0, 1], rtol=1e-6)  # the two sides differ
    np.testing.assert_allclose(left[0], g[0, 0], rtol=1e-6)
    np.testing.assert_allclose(right[1], (g[1, 2] + g[1, 3]) / 2, rtol=1e-6)  # ties share
    expected = (right + left) / 2
    expected[4] = 0  # only the left side exists: k is clipped at the finite count above it
    np.testing.assert_allclose(dk, expected, rtol=1e-6, atol=1e-9)
    # and sum(p) = min(k, finite count): d sum(p) / dk = 1 wherever k is below the count
    (ones,) = vjp(jnp.ones_like(g))
    np.testing.assert_allclose(ones, [[1], [1], [1], [1], [0]], rtol=1e-12)


@pytest.mark.parametrize("t", [1e37, 1e38, 1.5e38])
def test_soft_topk_near_the_largest_temperatures_is_finite_and_exact(t):
    # float32: the first step's slope bound n / (2 t) underflowed to 0 beyond about 1e38, and
    # the step divided by it gave NaN (found by the fuzz suite drawing t = 1e38). k = 1 of two:
    # the threshold is their midpoint, p = sigmoid(+-(x1 - x0) / (2 t)) in float64.
    x = jnp.array([-3.4028235e38, 1.0], jnp.float32)
    u = (1.0 + 3.4028235e38) / (2 * t)
    expected = [special.expit(-u), special.expit(u)]
    grads = jax.grad(lambda x: jaxrelax.soft_topk(x, 1, temperature=t)[1])(x)
    np.testing.assert_allclose(jaxrelax.soft_topk(x, 1, temperature=t), expected, atol=4e-7)
    assert np.isfinite(np.asarray(grads)).all()


@pytest.mark.parametrize("kind", RELAXED)
def test_the_edge_weights_are_kept_only_when_k_is_differentiated(kind):
    x = jnp.ones((8, 16))

    def kept(fn, *args):
        vjp = jax.eval_shape(lambda *a: jax.vjp(fn, *a)[1], *args)
        return sum(leaf.size >= x.size for leaf in jax.tree_util.tree_leaves(vjp))

    assert kept(lambda x: RELAXED[kind](x, 3.0), x) == 1  # the output
    assert kept(lambda x, k: RELAXED[kind](x, k), x, 3.0) == 2  # and the edge's weights
    assert kept(lambda k: RELAXED[kind](x, k), 3.0) == 2


def test_soft_topk_check_grads(rng, x64):
    x = jnp.asarray(rng.normal(size=(3, 6)))
    weights = jnp.asarray(rng.normal(size=(3, 6)))
    where = jnp.asarray(rng.random((3, 6)) < 0.8).at[:, :3].set(True)

    @jax.jit
    def loss(x, t, k):
        return jnp.sum(jaxrelax.soft_topk(x, k, temperature=t, where=where) * weights)

    # one k and one temperature per slice
    k = jnp.array([[0.5], [1.5], [2.5]])
    t = jnp.array([[0.4], [1.0], [3.0]])
    check_grads(loss, (x, t, k), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.slow
def test_soft_topk_check_grads_scalar_arguments(rng, x64):
    x = jnp.asarray(rng.normal(size=(3, 6)))
    weights = jnp.asarray(rng.normal(size=(3, 6)))
    loss = jax.jit(lambda x, t, k: jnp.sum(jaxrelax.soft_topk(x, k, temperature=t) * weights))
    check_grads(loss, (x, 0.7, 2.0), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_sparse_topk_check_grads_away_from_breakpoints(x64):
    # Well-separated scores: a small perturbation changes neither the free set nor the ones.
    x = jnp.array([[2.0, 1.3, 0.3, -1.0, -2.5, 0.9], [0.9, 1.2, -0.2, 0.1, -3.0, 3.2]])
    k = jnp.array([[2.0], [2.5]])
    for row, k_row in zip(np.asarray(x), [2.0, 2.5], strict=True):
        z = row / 0.9
        tau, _, _ = _capped_simplex(z, k_row)
        assert np.min(np.abs(np.concatenate([z - tau, z - tau - 1]))) > 0.05  # no breakpoint near
        assert ((z - tau > 0) & (z - tau < 1)).sum() >= 2
    weights = jnp.arange(1.0, 7.0)
    loss = jax.jit(lambda x, t, k: jnp.sum(jaxrelax.sparse_topk(x, k, temperature=t) * weights))
    check_grads(loss, (x, 0.9, k), order=1, modes=["rev"], eps=1e-6)


@pytest.mark.parametrize("kind", RELAXED)
def test_gradients_are_zero_when_the_output_is_constant(kind, x64):
    x = jnp.array([[0.3, -1.0, 2.0, 0.5], [1.0, 2.0, 3.0, 4.0], [INF, INF, INF, 1.0]])
    where = jnp.array([[True, True, False, False], [True, True, True, False], [True] * 4])
    fn = lambda x, t, k: RELAXED[kind](x, k, temperature=t, where=where)  # noqa: E731
    k = jnp.array([[3.0], [4.0], [2.0]])  # above the unmasked count (twice); below the +inf count
    weights = jnp.arange(1.0, 13.0).reshape(3, 4)
    run = jax.jit(
        lambda *a: (fn(*a), jax.grad(lambda *a: jnp.sum(fn(*a) * weights), (0, 1, 2))(*a))
    )
    out, (gx, gt, gk) = run(x, 0.5, k)
    np.testing.assert_array_equal(out[:2], [[1, 1, 0, 0], [1, 1, 1, 0]])
    np.testing.assert_allclose(out[2], [2 / 3, 2 / 3, 2 / 3, 0], rtol=1e-15)
    np.testing.assert_array_equal(gx, 0)
    np.testing.assert_array_equal(gt, 0)
    # the +inf entries share k: d/dk of k / 3 on each
    np.testing.assert_allclose(gk, [[0], [0], [(9 + 10 + 11) / 3]], rtol=1e-15)
    # k = 0: zeros, with zero gradients
    out, grads = jax.jit(
        lambda x, t: (lambda out, vjp: (out, vjp(weights[:2])))(
            *jax.vjp(lambda x, t: RELAXED[kind](x, 0, temperature=t), x, t)
        )
    )(x[:2], 0.5)
    np.testing.assert_array_equal(out, 0)
    for g in grads:
        np.testing.assert_array_equal(g, 0)


# --- edges: masks, infinities, NaN ---

EDGE_X = np.array(
    [
        [0.3, 1e30, -1.0, INF, 2.0, NAN],  # huge, infinite and NaN values, masked
        [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],  # fully masked
        [-INF, -INF, 1.5, -INF, -INF, -INF],  # fewer candidates than k: all chosen
        [INF, 0.0, INF, 1.0, INF, -1.0],  # more +inf than k: they share (or tie)
        [INF, 1.0, 0.0, 2.0, -INF, 0.5],  # fewer +inf than k: chosen first
        [0.0, 1.0, NAN, 2.0, 3.0, 4.0],  # an unmasked NaN poisons the slice
        [-INF] * 6,  # nothing finite
        [2.0, 2.0, 2.0, 1.0, 2.0, 0.0],  # ties at the boundary
    ]
)
EDGE_WHERE = np.array(
    [
        [True, False, True, False, True, False],
        [False] * 6,
        [True] * 6,
        [True] * 6,
        [True] * 6,
        [True] * 6,
        [True] * 6,
        [True, True, True, True, False, True],
    ]
)
EDGE_NAN_ROW, EDGE_EMPTY_ROWS, EDGE_K = 5, [1, 6], 2
IGNORED = ~EDGE_WHERE | np.isneginf(EDGE_X)
OTHERS = np.arange(len(EDGE_X)) != EDGE_NAN_ROW


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_mask_edges(dtype):
    with jax.enable_x64(dtype == np.float64):
        x = EDGE_X.astype(dtype)
        for ties in ["first", "uniform"]:
            out = np.asarray(_mask_jit(x, EDGE_WHERE, k=EDGE_K, ties=ties))
            expected = np_topk_mask(EDGE_X, EDGE_K, where=EDGE_WHERE, ties=ties)
            np.testing.assert_allclose(out, expected, rtol=1e-7, err_msg=ties)
            assert np.isnan(out[EDGE_NAN_ROW]).all()
            np.testing.assert_array_equal(out[EDGE_EMPTY_ROWS], 0)
            np.testing.assert_array_equal(out[2], [0, 0, 1, 0, 0, 0])
            np.testing.assert_array_equal(out[4], [1, 0, 0, 1, 0, 0])
            if ties == "first":
                np.testing.assert_array_equal(out[3], [1, 0, 1, 0, 0, 0])
            else:
                np.testing.assert_allclose(out[3], [2 / 3, 0, 2 / 3, 0, 2 / 3, 0], rtol=1e-7)


@pytest.mark.parametrize("dtype", [np.float32, pytest.param(np.float64, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kind", RELAXED)
def test_relaxed_edges(kind, dtype):
    with jax.enable_x64(dtype == np.float64):
        x = EDGE_X.astype(dtype)
        out = _check_relaxed(kind, x, EDGE_K, dtype, -1, 0.7, EDGE_WHERE)
        assert np.isnan(out[EDGE_NAN_ROW]).all()
        np.testing.assert_array_equal(out[EDGE_EMPTY_ROWS], 0)
        np.testing.assert_array_equal(out[IGNORED], 0)
        np.testing.assert_array_equal(out[2], [0, 0, 1, 0, 0, 0])  # exactly 1.0
        np.testing.assert_allclose(out[3], [2 / 3, 0, 2 / 3, 0, 2 / 3, 0], rtol=4e-7)
        assert out[4, 0] == 1
        np.testing.assert_allclose(out[OTHERS].sum(1), [2, 0, 1, 2, 2, 0, 2], rtol=1e-6)
        weights = np.arange(1.0, 7.0, dtype=dtype)

        @jax.jit
        def grad(x, t):
            return jax.grad(
                lambda x, t: jnp.nansum(
                    RELAXED[kind](x, EDGE_K, temperature=t, where=EDGE_WHERE) * weights
                ),
                (0, 1),
            )(x, t)

        # one temperature per slice: a shared one gets the NaN slice's NaN, as in softmax
        gx, gt = grad(x, np.full((len(x), 1), 0.7, dtype))
        gx, gt = np.asarray(gx), np.asarray(gt)
        assert np.isfinite(gx[OTHERS]).all() and np.isfinite(gt[OTHERS]).all()
        np.testing.assert_array_equal(gt[[1, 2, 3, 6]], 0)
        assert (gx[OTHERS][IGNORED[OTHERS]] == 0).all()
        np.testing.assert_array_equal(gx[[1, 2, 3, 6]], 0)  # constant outputs
        assert gx[4, 0] == 0  # the +inf entry
        # the finite entries of row 4 see the problem without the +inf entry, with k - 1
        sub = jax.grad(
            lambda x: jnp.sum(RELAXED[kind](x, 1, temperature=0.7) * weights[[1, 2, 3, 5]])
        )(x[4, [1, 2, 3, 5]])
        np.testing.assert_allclose(gx[4, [1, 2, 3, 5]], sub, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["soft", "sparse", "identity"])
def test_st_topk_edges(backward):
    x = EDGE_X.astype(np.float32)
    for ties in ["first", "uniform"]:

        def st_topk(x, ties=ties):
            return jaxrelax.st_topk(x, EDGE_K, where=EDGE_WHERE, ties=ties, backward=backward)

        out = jax.jit(st_topk)(x)
        expected = _mask_jit(x, EDGE_WHERE, k=EDGE_K, ties=ties)
        np.testing.assert_array_equal(out, expected)
        grad = jax.jit(jax.grad(lambda x: jnp.nansum(st_topk(x) * jnp.arange(1.0, 7.0))))(x)
        grad = np.asarray(grad)
        assert np.isfinite(grad[OTHERS]).all()
        # the identity passes the cotangent of unmasked -inf entries through
        ignored = ~EDGE_WHERE if backward == "identity" else IGNORED
        assert (grad[OTHERS][ignored[OTHERS]] == 0).all()


# --- st_topk ---


@pytest.mark.parametrize(
    "backward",
    [
        "soft",
        pytest.param("sparse", marks=pytest.mark.slow),
        pytest.param("identity", marks=pytest.mark.slow),
    ],
)
def test_st_topk_forward_is_topk_mask_and_backward_is_the_surrogate(backward, rng, x64):
    x = rng.integers(0, 4, size=(3, 4, 5)) + rng.normal(scale=0.1, size=(3, 4, 5))
    x[1, :, :2] = 9.0  # exact ties
    where = rng.random(x.shape) < 0.8
    cot = rng.normal(size=x.shape)
    axis, k = (0, 2), 3
    surrogate = {
        "soft": jaxrelax.soft_topk,
        "sparse": jaxrelax.sparse_topk,
        "identity": lambda x, k, axis, temperature, where: x * where + 0 * temperature,
    }[backward]

    @jax.jit
    def vjps(x, t):
        st_fn = lambda x, t: jaxrelax.st_topk(  # noqa: E731
            x, k, axis, temperature=t, where=where, ties="uniform", backward=backward
        )
        soft_fn = lambda x, t: surrogate(x, k, axis, temperature=t, where=where)  # noqa: E731
        out, st_vjp = jax.vjp(st_fn, x, t)
        return out, st_vjp(cot), jax.vjp(soft_fn, x, t)[1](cot)

    out, grads, expected = vjps(x, 0.6)
    np.testing.assert_allclose(out, np_topk_mask(x, k, axis, where, "uniform"), rtol=1e-15)
    for a, b in zip(grads, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    first = jax.jit(lambda x: jaxrelax.st_topk(x, k, axis, where=where, backward=backward))(x)
    np.testing.assert_array_equal(first, np_topk_mask(x, k, axis, where, "first"))


# --- gumbel_topk ---

LOGITS = np.log(np.array([0.05, 0.15, 0.3, 0.4, 0.1], np.float32))


_gumbel_jit = jax.jit(jaxrelax.gumbel_topk, static_argnums=2, static_argnames=("axis", "hard"))


def _draw(logits, k, count, seed=0, **kwargs):
    keys = jax.random.split(jax.random.key(seed), count)
    return jax.jit(jax.vmap(lambda key: jaxrelax.gumbel_topk(key, logits, k, **kwargs)))(keys)


def test_gumbel_topk_is_the_plain_recipe(rng):
    # The noise is jax.random.gumbel of the key, as in gumbel_softmax.
    key = jax.random.key(3)
    logits = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    noise = jax.random.gumbel(key, logits.shape)
    soft = _gumbel_jit(key, logits, 3, temperature=0.7)
    expected = _relaxed_jit(logits + noise, np.float32(3), np.float32(0.7), None, kind="soft")
    np.testing.assert_allclose(soft, expected, rtol=1e-6, atol=1e-7)
    hard = _gumbel_jit(key, logits, 3, temperature=0.7, hard=True)
    np.testing.assert_array_equal(hard, np_topk_mask(np.asarray(logits + noise), 3))
    other = _gumbel_jit(jax.random.key(4), logits, 3, temperature=0.7)
    assert not np.allclose(other, soft)


@pytest.mark.slow
def test_gumbel_topk_with_k_one_is_gumbel_softmax(rng):
    # sample for sample, from the same key
    key = jax.random.key(3)
    logits = jnp.asarray(rng.normal(size=(4, 7)), jnp.float32)
    np.testing.assert_array_equal(
        _gumbel_jit(key, logits, 1, hard=True),
        jax.jit(lambda key, lg: jaxrelax.gumbel_softmax(key, lg, hard=True))(key, logits),
    )


def test_gumbel_topk_hard_gradient_is_the_relaxed_sample(rng, x64):
    key = jax.random.key(5)
    logits = jnp.asarray(rng.normal(size=(3, 6)))
    cot = jnp.asarray(rng.normal(size=(3, 6)))
    for k in [3]:

        @jax.jit
        def vjps(logits, t, k=k):
            def sample(hard):
                return lambda lg, t: jaxrelax.gumbel_topk(key, lg, k, temperature=t, hard=hard)

            hard, hard_vjp = jax.vjp(sample(True), logits, t)
            soft, soft_vjp = jax.vjp(sample(False), logits, t)
            return hard, soft, hard_vjp(cot), soft_vjp(cot)

        hard, soft, hard_grads, soft_grads = vjps(logits, 0.6)
        np.testing.assert_array_equal(hard, np_topk_mask(np.asarray(soft), k))  # same noise
        for a, b in zip(hard_grads, soft_grads, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_gumbel_topk_check_grads(rng, x64):
    key = jax.random.key(5)
    logits = jnp.asarray(rng.normal(size=(3, 6)))
    cot = jnp.asarray(rng.normal(size=(3, 6)))
    loss = jax.jit(lambda lg, t: jnp.sum(jaxrelax.gumbel_topk(key, lg, 2, temperature=t) * cot))
    check_grads(loss, (logits, 0.6), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


def _subset_frequencies(samples, n):
    samples = np.asarray(samples)
    assert set(np.unique(samples)) <= {0.0, 1.0}
    codes = samples.astype(np.int64) @ (2 ** np.arange(n))
    return np.bincount(codes, minlength=2**n) / len(samples)


@pytest.mark.parametrize(
    "k, masked", [(2, False), (2, True), (3, False)], ids=["k=2", "k=2 masked", "k=3"]
)
def test_gumbel_topk_subsets_follow_plackett_luce(k, masked):
    count = 20_000
    where = np.array([True, True, False, True, True]) if masked else None
    samples = _draw(jnp.asarray(LOGITS), k, count, seed=k + masked, hard=True, where=where)
    np.testing.assert_array_equal(samples.sum(-1), k)
    frequencies = _subset_frequencies(samples, 5)
    subsets = _plackett_luce_subsets(LOGITS, k, where)
    probs = np.zeros(32)
    for subset, p in subsets.items():
        probs[sum(2**i for i in subset)] = p
    np.testing.assert_array_equal(frequencies[probs == 0], 0)  # other subsets never appear
    seen = probs > 0
    # Each subset's frequency within 5 standard errors (10 cells at most: a false alarm
    # probability near 6e-6) ...
    stderr = np.sqrt(probs * (1 - probs) / count)
    assert (np.abs(frequencies - probs)[seen] <= Z * stderr[seen]).all(), (frequencies, probs)
    # ... and jointly: Pearson's chi-square, false-alarm probability 1e-6.
    chi2 = count * ((frequencies - probs)[seen] ** 2 / probs[seen]).sum()
    assert chi2 <= stats.chi2.isf(1e-6, seen.sum() - 1), chi2
    # Each class's frequency is its inclusion probability (binomial errors, at most 0.5 / sqrt
    # of the count).
    inclusion = [sum(p for s, p in subsets.items() if i in s) for i in range(5)]
    np.testing.assert_allclose(samples.mean(0), inclusion, rtol=0, atol=Z * 0.5 / np.sqrt(count))


@pytest.mark.parametrize("masked", [False, True])
def test_gumbel_topk_with_k_one_follows_softmax(masked):
    count = 20_000
    where = np.array([True, True, False, True, True]) if masked else None
    samples = _draw(jnp.asarray(LOGITS), 1, count, seed=7, hard=True, where=where)
    np.testing.assert_array_equal(samples.sum(-1), 1)
    frequencies = np.asarray(samples.mean(0))
    weights = np.exp(LOGITS.astype(np.float64)) * (1 if where is None else where)
    probs = weights / weights.sum()
    stderr = np.sqrt(probs * (1 - probs) / count)
    # 5 cells at 5 standard errors: a false alarm about once in 3e5 runs (fixed keys)
    assert (np.abs(frequencies - probs) <= Z * stderr).all(), (frequencies, probs)


@pytest.mark.slow
def test_gumbel_topk_soft_sample_at_low_temperature_is_the_hard_sample():
    count = 2_000
    soft = _draw(jnp.asarray(LOGITS), 2, count, seed=11, temperature=1e-4)
    hard = _draw(jnp.asarray(LOGITS), 2, count, seed=11, hard=True)
    # Same keys, same noise: they differ by more than 1e-3 only where the 2nd and 3rd
    # perturbed logits are within about 1.4e-3 (exp(-gap / 2t) > 1e-3), about 0.1% of draws.
    close = np.abs(np.asarray(soft) - np.asarray(hard)).max(-1) < 1e-3
    assert close.mean() > 0.99


@pytest.mark.parametrize("hard", [pytest.param(False, marks=pytest.mark.slow), True])
def test_gumbel_topk_masks_and_empty_slices(hard):
    key = jax.random.key(2)
    logits = jnp.array(
        [
            [0.3, 1e30, -1.0, jnp.inf, 2.0],
            [0.0, 0.0, 0.0, 0.0, 0.0],
            [0.5, -jnp.inf, 1.0, jnp.nan, 2.0],
            [5.0, 1.0, 3.0, 4.0, 2.0],
        ]
    )
    where = np.array(
        [
            [True, False, True, False, True],
            [False] * 5,
            [True, True, True, False, True],
            [False, True, False, False, False],
        ]
    )
    for k in [2, 3]:

        @jax.jit
        def sample_and_grad(logits, k=k):
            def sample(lg):
                return jaxrelax.gumbel_topk(key, lg, k, hard=hard, where=where)

            return sample(logits), jax.grad(lambda lg: jnp.sum(sample(lg) * jnp.arange(5.0)))(
                logits
            )

        out, grad = (np.asarray(a) for a in sample_and_grad(logits))
        assert not np.isnan(out).any(), k
        np.testing.assert_array_equal(out[~where], 0)
        np.testing.assert_array_equal(out[1], 0)
        assert out[2, 1] == 0  # -inf never chosen
        np.testing.assert_allclose(out.sum(-1), [min(k, 3), 0, min(k, 3), 1], rtol=1e-6)
        np.testing.assert_array_equal(out[3], [0, 1, 0, 0, 0])  # every candidate, exactly
        if k == 3:
            np.testing.assert_array_equal(out[[0, 2]], [[1, 0, 1, 0, 1], [1, 0, 1, 0, 1]])
        assert np.isfinite(grad).all(), k
        assert (grad[~where] == 0).all() and grad[2, 1] == 0, k


def test_gumbel_topk_nan_logits_propagate():
    key = jax.random.key(0)
    logits = jnp.array([[0.0, jnp.nan, 1.0], [0.0, 0.5, 1.0]])
    for hard in [False, True]:
        sample = _gumbel_jit(key, logits, 2, hard=hard)
        assert jnp.isnan(sample[0]).all() and not jnp.isnan(sample[1]).any(), hard


# --- half precision ---


def _half_cases():
    return {
        "topk_mask": lambda x: jaxrelax.topk_mask(x, 3, ties="uniform"),
        "soft_topk": lambda x: jaxrelax.soft_topk(x, 3, temperature=0.5),
        "sparse_topk": lambda x: jaxrelax.sparse_topk(x, 3, temperature=0.5),
        "gumbel_topk_hard": lambda x: jaxrelax.gumbel_topk(
            jax.random.key(0), x, 3, temperature=0.5, hard=True
        ),
    }


def _half_params():
    for dtype in [jnp.float16, jnp.bfloat16]:
        for name in _half_cases():
            fast = dtype == jnp.float16 and name in ("soft_topk", "sparse_topk")
            marks = () if fast else pytest.mark.slow
            yield pytest.param(name, dtype, marks=marks, id=f"{name}-{dtype.__name__}")


@pytest.mark.parametrize("name, dtype", list(_half_params()))
def test_half_precision(name, dtype, rng):
    x = np.concatenate([rng.normal(size=(3, 40)), [[1e4, -1e4, 5e3, 9.9e3] + [0.0] * 36]])
    x = jnp.asarray(x, dtype)  # 1e4 / 0.5 overflows float16 unless computed in float32
    weights = jnp.arange(40.0)
    fn = _half_cases()[name]

    @jax.jit
    def run(x):
        grad = jax.grad(lambda x: jnp.sum(fn(x).astype(jnp.float32) * weights))(x)
        return fn(x), fn(x.astype(jnp.float32)).astype(dtype), grad

    out, expected, grad = run(x)
    assert out.dtype == dtype
    # computed in float32 and rounded once
    np.testing.assert_array_equal(out.astype(jnp.float32), expected.astype(jnp.float32))
    assert jnp.isfinite(out.astype(jnp.float32)).all()
    np.testing.assert_allclose(
        out.astype(jnp.float32).sum(-1), 3, rtol=1e-2 if dtype == jnp.float16 else 3e-2
    )
    assert grad.dtype == dtype and jnp.isfinite(grad.astype(jnp.float32)).all()


# --- k = 0, k = n, bad arguments ---


RELAXED_NAMES = ("topk_mask", "soft_topk", "sparse_topk")
FUNCTIONS = {
    "topk_mask": lambda x, k, **kw: jaxrelax.topk_mask(x, k, **kw),
    "soft_topk": lambda x, k, **kw: jaxrelax.soft_topk(x, k, **kw),
    "sparse_topk": lambda x, k, **kw: jaxrelax.sparse_topk(x, k, **kw),
    "st_topk": lambda x, k, **kw: jaxrelax.st_topk(x, k, **kw),
    "gumbel_topk": lambda x, k, **kw: jaxrelax.gumbel_topk(jax.random.key(0), x, k, **kw),
    "gumbel_topk_hard": lambda x, k, **kw: jaxrelax.gumbel_topk(
        jax.random.key(0), x, k, hard=True, **kw
    ),
}


@pytest.mark.parametrize(
    "name",
    [n if n in RELAXED_NAMES else pytest.param(n, marks=pytest.mark.slow) for n in FUNCTIONS],
)
def test_k_zero_and_k_n(name, rng):
    fn = FUNCTIONS[name]
    x = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
    where = jnp.asarray([[True] * 5, [True, False, True, False, True], [False] * 5])

    @jax.jit
    def run(x):
        outs = [fn(x, k, where=where) for k in [0, 4, 5]]
        grad = jax.grad(lambda x: jnp.sum(fn(x, 5, where=where) * jnp.arange(5.0)))(x)
        return outs, grad

    (zero, four, five), grad = run(x)
    np.testing.assert_array_equal(zero, 0)
    np.testing.assert_array_equal(five, where.astype(jnp.float32))  # ones on the unmasked
    # k above the number of unmasked entries (but <= n): all of them
    np.testing.assert_array_equal(four[1:], where[1:].astype(jnp.float32))
    np.testing.assert_allclose(four[0].sum(), 4, rtol=1e-6)
    if name != "st_topk":  # st_topk's backward is the surrogate's, whatever its forward
        np.testing.assert_array_equal(grad, 0)
    # and eagerly, without a mask
    np.testing.assert_array_equal(fn(x, 0), 0)
    np.testing.assert_array_equal(fn(x, 5), 1)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_bad_k(name):
    fn = FUNCTIONS[name]
    x = jnp.ones((2, 3))
    real = name in ("soft_topk", "sparse_topk")
    error = ValueError if real else (TypeError, ValueError)
    for k in [-1, 4, -0.5, 3.5, np.nan]:
        with pytest.raises(error, match=r"\bk\b"):
            fn(x, k)
    with pytest.raises(ValueError, match=r"\bk\b"):
        fn(jnp.ones((2, 3, 4)), 13, axis=(1, 2))  # n = 12
    np.testing.assert_array_equal(jax.jit(lambda x: fn(x, 12, axis=(1, 2)))(jnp.ones((2, 3, 4))), 1)
    if real:
        np.testing.assert_allclose(fn(x, 1.5), 0.5)  # a real k is fine
        with pytest.raises(ValueError, match=r"\bk\b"):
            fn(x, jnp.array([[1.0], [4.0]]))  # one slice out of range
        with pytest.raises(ValueError, match=r"\bk\b"):
            fn(x, jnp.ones((2, 3)))  # not size 1 along the axis
        with pytest.raises(ValueError, match=r"\bk\b"):
            fn(x, jnp.ones((3, 1)))  # does not broadcast
    else:
        with pytest.raises((TypeError, ValueError), match=r"\bk\b"):
            fn(x, 1.5)  # an integer is required
        np.testing.assert_array_equal(fn(x, np.int64(3)), 1)  # of any integer type


def test_bad_options():
    x = jnp.ones((2, 3))
    key = jax.random.key(0)
    for bad in ["last", "random", None]:
        with pytest.raises(ValueError, match="ties"):
            jaxrelax.topk_mask(x, 1, ties=bad)
        with pytest.raises(ValueError, match="ties"):
            jaxrelax.st_topk(x, 1, ties=bad)
    for bad in ["hard", "straight", None]:
        with pytest.raises(ValueError, match="backward"):
            jaxrelax.st_topk(x, 1, backward=bad)
    for fn in [jaxrelax.soft_topk, jaxrelax.sparse_topk, jaxrelax.st_topk]:
        with pytest.raises(ValueError, match="temperature"):
            fn(x, 1, temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        jaxrelax.gumbel_topk(key, x, 1, temperature=-1.0)
    with pytest.raises(TypeError, match="hard"):
        jaxrelax.gumbel_topk(key, x, 1, hard=1)
    with pytest.raises(TypeError, match="key"):
        jaxrelax.gumbel_topk(0, x, 1)
    with pytest.raises(ValueError, match="where"):
        jaxrelax.soft_topk(x, 1, where=jnp.ones(4, bool))


# --- transformations ---


TEMPERED = {
    "topk_mask": lambda x, k, axis, t: jaxrelax.topk_mask(x, k, axis),
    "soft_topk": lambda x, k, axis, t: jaxrelax.soft_topk(x, k, axis, temperature=t),
    "sparse_topk": lambda x, k, axis, t: jaxrelax.sparse_topk(x, k, axis, temperature=t),
    "st_topk": lambda x, k, axis, t: jaxrelax.st_topk(x, k, axis, temperature=t),
    "st_topk_sparse": lambda x, k, axis, t: jaxrelax.st_topk(
        x, k, axis, temperature=t, backward="sparse"
    ),
    "gumbel_topk": lambda x, k, axis, t: jaxrelax.gumbel_topk(
        jax.random.key(1), x, k, axis, temperature=t
    ),
    "gumbel_topk_hard": lambda x, k, axis, t: jaxrelax.gumbel_topk(
        jax.random.key(1), x, k, axis, temperature=t, hard=True
    ),
}
SMOOTH = ("soft_topk", "gumbel_topk")


@pytest.mark.slow
@pytest.mark.parametrize("name", TEMPERED)
def test_jit_vmap_grad(name, rng):
    fn = TEMPERED[name]
    x = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    t, k = jnp.float32(0.8), 2
    # (a tuple of axes: test_transformations.py)
    for axis in [-1] + ([] if "gumbel" in name else [None]):
        loss = lambda x, t, axis=axis: jnp.sum(fn(x, k, axis, t) * weights)  # noqa: E731

        @jax.jit
        def run(x, t, loss=loss, axis=axis):
            return fn(x, k, axis, t), jax.grad(loss, argnums=(0, 1))(x, t)

        out, (gx, gt) = run(x, t)
        assert out.shape == x.shape
        if name in ("soft_topk", "sparse_topk"):
            expected = ORACLES[name.split("_")[0]](x, k, axis, 0.8)
            np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6, err_msg=str(axis))
        elif "gumbel" not in name:
            np.testing.assert_array_equal(out, np_topk_mask(x, k, axis), err_msg=str(axis))
        assert jnp.isfinite(gx).all() and jnp.isfinite(gt)
        if name == "topk_mask":
            assert (gx == 0).all() and gt == 0
        else:
            assert (gx != 0).any()
        if axis != -1:
            continue
        # eagerly, and under vmap (of x and a traced temperature)
        np.testing.assert_allclose(fn(x, k, axis, t), out, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(jax.grad(loss)(x, t), gx, rtol=1e-5, atol=1e-6)
        batch = jnp.stack([x, 2 * x])
        temps = jnp.array([0.8, 1.7], jnp.float32)
        mapped = jax.jit(jax.vmap(lambda x, t: fn(x, k, -1, t)))(batch, temps)
        for i in range(2):
            np.testing.assert_allclose(
                mapped[i], fn(batch[i], k, -1, temps[i]), rtol=1e-6, atol=1e-6
            )
        if name in SMOOTH:  # grad-of-grad: d/dt of the x-gradient, through the custom rules
            second = jax.jit(jax.grad(lambda t, f=loss: jnp.sum(jax.grad(f)(x, t) * weights)))(t)
            assert jnp.isfinite(second) and second != 0


@pytest.mark.slow
def test_hessian_of_soft_topk(rng, x64):
    x = jnp.asarray(rng.normal(size=(2, 6)))
    weights = jnp.asarray(rng.normal(size=(2, 6)))
    loss = lambda x: jnp.sum(jaxrelax.soft_topk(x, 2.5, temperature=0.5) * weights)  # noqa: E731
    hessian = jax.jit(jax.hessian(loss))(x)
    np.testing.assert_allclose(hessian, hessian.transpose(2, 3, 0, 1), atol=1e-12)
    eps = 1e-6
    direction = jnp.asarray(rng.normal(size=x.shape))
    grad = jax.jit(jax.grad(loss))
    fd = (grad(x + eps * direction) - grad(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.tensordot(hessian, direction, 2), fd, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_batch_shapes(rng):
    x = jnp.asarray(rng.normal(size=(2, 3, 1, 7)), jnp.float32)
    flat = x.reshape(-1, 7)
    for name, fn in TEMPERED.items():
        if "gumbel" in name:
            continue  # the noise follows the shape
        both = jax.jit(lambda x, f, fn=fn: (fn(x, 3, -1, 0.5), fn(f, 3, -1, 0.5)))
        batched, flattened = both(x, flat)
        np.testing.assert_allclose(batched.reshape(flat.shape), flattened, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_empty_and_size_one_slices():
    for name, fn in TEMPERED.items():
        if name in ("st_topk_sparse", "gumbel_topk"):
            continue  # the same rules as st_topk and gumbel_topk_hard's
        out = fn(jnp.zeros((3, 0)), 0, -1, 0.5)
        assert out.shape == (3, 0), name
        np.testing.assert_array_equal(fn(jnp.array([[2.0], [-1.0]]), 1, -1, 0.5), 1, err_msg=name)
        np.testing.assert_array_equal(fn(jnp.array([[2.0], [-1.0]]), 0, -1, 0.5), 0, err_msg=name)
        np.testing.assert_array_equal(fn(jnp.float32(3.0), 1, None, 0.5), 1, err_msg=name)


# --- properties, drawn by hypothesis ---

SPECIALS = [0.0, 1.0, -1.0, 2.0, 1e30, -1e30, INF, -INF, NAN, 3.4e38]
PROPERTY_SHAPES = [((4, 5), -1), ((3, 1), -1), ((2, 3, 4), (0, 2)), ((3, 4), None)]


@st.composite
def _problems(draw):
    shape, axis = draw(st.sampled_from(PROPERTY_SHAPES))
    size = int(np.prod(shape))
    values = draw(
        st.lists(
            st.one_of(
                st.sampled_from(SPECIALS),
                # XLA on CPU flushes subnormals (hardmax documents ties with 0 below 4 * tiny)
                st.floats(-10, 10, width=32).map(lambda v: 0.0 if abs(v) < 1e-30 else v),
            ),
            min_size=size,
            max_size=size,
        )
    )
    x = np.array(values, np.float32).reshape(shape)
    where = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size))).reshape(shape)
    k = draw(st.integers(0, _Slices(x, axis).n))
    ties = draw(st.sampled_from(["first", "uniform"]))
    return x, where, axis, k, ties


@pytest.mark.slow
@given(_problems())
def test_properties(problem):
    x, where, axis, k, ties = problem
    np.testing.assert_allclose(
        _mask_jit(x, where, k=k, axis=axis, ties=ties),
        np_topk_mask(x, k, axis, where, ties),
        rtol=1e-7,
    )
    for kind in RELAXED:
        _check_relaxed(kind, x, k, np.float32, axis, 1.0, where, err_msg=kind)


@pytest.mark.parametrize("kind", ["soft", "sparse"])
def test_the_refinement_near_a_huge_maximum_holds_up_to_a_quarter_of_finfo_max(kind):
    """As the docstrings say: with the finite maximum at most finfo.max / 4 the relaxations
    solve again near the threshold and match float64; above it the differences keep the
    maximum's rounding (the audit's reproducer)."""
    fn = jaxrelax.soft_topk if kind == "soft" else jaxrelax.sparse_topk
    rest = np.array([-15.375, -17.52])
    for top, refined in [(8e37, True), (3e38, False)]:
        x = np.array([rest[0], top, rest[1]])
        got = np.asarray(fn(jnp.asarray(x, jnp.float32), 2, temperature=1e4), np.float64)
        want = (np_soft_topk if kind == "soft" else np_sparse_topk)(x, 2, temperature=1e4)
        assert got[1] == 1 and abs(got.sum() - 2) < 1e-6
        if refined:
            np.testing.assert_allclose(got, want, rtol=1e-6)
        else:
            np.testing.assert_array_equal(got[[0, 2]], 0.5)
            assert abs(want[0] - 0.5) > 1e-5  # what the rounding loses
