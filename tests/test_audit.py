"""Regression tests for the defects an outside audit found, one group per defect, each with
the audit's reproducer and wider cases. (The fuzz suite in test_fuzz.py searches for the same
classes of bug at random; these pin the known ones.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import registry
from reference import np_entmax, np_softmax

import jaxrelax

FMAX = float(np.finfo(np.float32).max)
INF = np.inf
KEY = jax.random.key(0)
DTYPES = [jnp.bfloat16, jnp.float32]  # float16 takes the bfloat16 path; test_fuzz.py has all

# Every distribution-valued function of tests/registry.py (of slices, with a mask), as
# f(x, where=...), and entmax with alpha a traced array. (The orders, in which -inf entries
# take part, are audited in test_sort.py.)
DISTRIBUTIONS = {
    **{
        name: registry.ENTRIES[name]
        for name in registry.select(
            input=registry.SLICES, reduces=False, where=True, k=None, order=False
        )
    },
    "entmax_traced_alpha": lambda x, **kw: jaxrelax.entmax(x, alpha=jnp.array(1.7), **kw),
}
# Every scalar-valued function of the registry with a mask, with its value on an empty slice.
REDUCTIONS = {
    name: (registry.ENTRIES[name], registry.ENTRIES[name].empty)
    for name in registry.select(reduces=True, where=True, order=False)
}


def _sampled(name):
    return name in registry.ENTRIES and registry.ENTRIES[name].sampled


def _first_of_ties(name):
    """Hard (or straight-through) with ties broken by the first index."""
    entry = registry.ENTRIES.get(name)
    hard = entry is not None and entry.gradient in (registry.HARD, registry.STRAIGHT_THROUGH)
    return hard and entry.options.get("ties", "first") == "first"


def _grad(fn, x):
    """The gradient of the sum of fn's finite outputs, in x's dtype."""

    def loss(x):
        value = fn(x).astype(jnp.float32)
        return jnp.sum(jnp.where(jnp.isfinite(value), value, 0) * 1.5)

    return np.asarray(jax.grad(loss)(x).astype(jnp.float32))


# --- 1. empty slices of length 1 ---


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_empty_slices_of_length_one_give_zeros(name, dtype):
    fn = DISTRIBUTIONS[name]
    x = jnp.array([[2.0], [3.0], [-INF]], dtype)
    where = jnp.array([[True], [False], [True]])
    value = np.asarray(fn(x, where=where).astype(jnp.float32))
    np.testing.assert_array_equal(value, [[1.0], [0.0], [0.0]])
    assert not np.isnan(_grad(lambda x: fn(x, where=where), x)).any()
    np.testing.assert_array_equal(_grad(lambda x: fn(x, where=where), x)[1:], 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", REDUCTIONS)
def test_empty_reductions_of_length_one(name, dtype):
    fn, empty = REDUCTIONS[name]
    x = jnp.array([[2.0], [3.0], [-INF]], dtype)
    where = jnp.array([[True], [False], [True]])
    value = np.asarray(fn(x, where=where).astype(jnp.float32))
    # (a loss ignores label mass on masked and -inf classes alike)
    np.testing.assert_array_equal(value[1:], [empty, empty])
    grad = _grad(lambda x: fn(x, where=where), x)
    np.testing.assert_array_equal(grad[1:], 0)


def test_the_audits_reproducers():
    x = jnp.ones((3, 1))
    where = jnp.array([[True], [False], [True]])
    np.testing.assert_array_equal(jaxrelax.softmax(x, where=where), [[1.0], [0.0], [1.0]])
    np.testing.assert_array_equal(jaxrelax.hardmax(jnp.array([-INF])), [0.0])
    assert jaxrelax.smooth_max(jnp.array([-INF])) == -INF
    np.testing.assert_array_equal(
        jaxrelax.spatial_soft_argmax(jnp.full((1, 1), -INF), channel_axis=None), [0, 0]
    )


# --- 2. NaN through general alpha ---


@pytest.mark.parametrize("alpha", [1.3, 2.5, jnp.array(1.3), jnp.array([[1.3], [1.5]])])
def test_general_alpha_propagates_nan(alpha):
    x = jnp.array([[1.0, jnp.nan, 0.0], [1.0, 2.0, 0.0]])
    p = np.asarray(jaxrelax.entmax(x, alpha=alpha))
    assert np.isnan(p[0]).all() and np.isfinite(p[1]).all()
    loss = np.asarray(jaxrelax.entmax_loss(x, jnp.eye(3)[:2], alpha=alpha))
    assert np.isnan(loss[0]) and np.isfinite(loss[1])
    assert np.isnan(jaxrelax.entmax(jnp.array([1.0, jnp.nan, 0.0]), alpha=1.3)).all()


# --- 3. alpha near 1 and extreme temperatures ---

SCORES = np.array([0.3, -1.2, 2.0, 0.7, -0.1, 1.9])


@pytest.mark.parametrize("alpha", [1.0001, 1.001, 1.02, 1.035, 1.1])
def test_alpha_near_one_matches_the_reference(alpha):
    expected = np_entmax(SCORES, alpha)
    np.testing.assert_allclose(
        jaxrelax.entmax(jnp.float32(SCORES), alpha=alpha), expected, atol=2e-6
    )
    # and it tends to softmax
    assert np.abs(expected - np_softmax(SCORES)).max() < 3 * (alpha - 1)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax", "entmax_traced_alpha"])
@pytest.mark.parametrize("temperature", [1e-30, 1e-20, 1e-6])
def test_tiny_temperatures_give_the_hard_limit(name, temperature):
    x = jnp.array([1.0, 3.0, 3.0, -2.0])
    p = DISTRIBUTIONS[name](x, temperature=temperature)
    np.testing.assert_allclose(p, [0.0, 0.5, 0.5, 0.0], atol=1e-6)


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "entmax", "entmax_traced_alpha"])
@pytest.mark.parametrize("temperature", [1e20, 1e30, 3e38])
def test_huge_temperatures_give_the_uniform_limit(name, temperature):
    x = jnp.array([1.0, 3.0, -INF, -2.0])
    p = DISTRIBUTIONS[name](x, temperature=temperature)
    np.testing.assert_allclose(p, [1 / 3, 1 / 3, 0.0, 1 / 3], rtol=1e-5)


def test_the_audits_temperature_reproducers():
    s = jnp.float32(SCORES)
    assert np.isfinite(jaxrelax.entmax15(s, temperature=1e-20)).all()
    assert np.isfinite(jaxrelax.entmax15(s, temperature=1e20)).all()
    np.testing.assert_array_equal(
        jaxrelax.entmax(s, alpha=1.1, temperature=1e-6), [0, 0, 1, 0, 0, 0]
    )
    assert np.isfinite(jaxrelax.entmax(s, alpha=1.02)).all()


# --- 4. alpha = 1 as an array or traced ---

X = jnp.array([[0.3, -1.2, 2.0, 0.7], [1.0, 1.0, -3.0, 0.0]])
LABELS = jnp.array([[0.0, 0.0, 0.0, 1.0], [0.5, 0.0, 0.0, 0.5]])
COTANGENT = jnp.array([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 2.0, -1.0]])


def test_alpha_one_as_an_array_is_softmax():
    expected = jaxrelax.softmax(X, temperature=0.7)
    for alpha in [jnp.array(1.0), jnp.ones((2, 1)), np.float32(1.0)]:
        np.testing.assert_allclose(jaxrelax.entmax(X, alpha=alpha, temperature=0.7), expected, 1e-6)
        np.testing.assert_allclose(
            jaxrelax.entmax_loss(X, LABELS, alpha=alpha, temperature=0.7),
            jaxrelax.entmax_loss(X, LABELS, alpha=1.0, temperature=0.7),
            rtol=1e-6,
        )
    # the cross-entropy less the labels' entropy
    log_p = jax.nn.log_softmax(X / 0.7)
    entropy = -np.sum(np.where(LABELS > 0, LABELS * np.log(np.maximum(LABELS, 1e-30)), 0), -1)
    np.testing.assert_allclose(
        jaxrelax.entmax_loss(X, LABELS, alpha=jnp.array(1.0), temperature=0.7),
        -jnp.sum(LABELS * log_p, -1) - entropy,
        rtol=1e-5,
    )


@pytest.mark.parametrize("what", ["entmax", "entmax_loss"])
def test_alpha_gradient_at_one_is_the_one_sided_limit(what, x64):
    x, labels, cotangent = (jnp.asarray(a, jnp.float64) for a in (X, LABELS, COTANGENT))

    def f(alpha):
        if what == "entmax":
            return jnp.sum(jaxrelax.entmax(x, alpha=alpha, temperature=0.7) * cotangent)
        return jnp.sum(jaxrelax.entmax_loss(x, labels, alpha=alpha, temperature=0.7))

    h = 1e-6  # one-sided: the error is O(h)
    one_sided = (f(1.0 + h) - f(1.0)) / h
    assert abs(float(one_sided)) > 0.05  # not the 0 the audit saw
    np.testing.assert_allclose(jax.grad(f)(jnp.array(1.0)), one_sided, rtol=1e-4)
    np.testing.assert_allclose(jax.grad(f)(1.0 + h), (f(1.0 + 2 * h) - f(1.0)) / (2 * h), 1e-6)
    # the closed form: d entmax_alpha / d alpha at 1 is p ((log p)^2 - E_p[(log p)^2]) / -2
    if what == "entmax":
        p = jax.nn.softmax(x / 0.7)
        log_p = jnp.log(p)
        dp = -p * (log_p**2 - jnp.sum(p * log_p**2, -1, keepdims=True)) / 2
        np.testing.assert_allclose(jax.grad(f)(jnp.array(1.0)), jnp.sum(dp * cotangent), 1e-10)


@pytest.mark.parametrize("alpha", [1.0, 1.0001, 1.01, 1.3, 1.9])
def test_float32_alpha_and_temperature_gradients_near_one(alpha):
    def f(x, t, a):
        return jnp.sum(jaxrelax.entmax(x, alpha=a, temperature=t) * COTANGENT)

    with jax.enable_x64(True):
        args64 = (X.astype(jnp.float64), jnp.float64(0.7), jnp.float64(alpha))
        expected = jax.grad(f, argnums=(0, 1, 2))(*args64)
    got = jax.grad(f, argnums=(0, 1, 2))(X, jnp.float32(0.7), jnp.float32(alpha))
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, np.asarray(e, np.float64), rtol=1e-4, atol=1e-5)


# --- 5. +inf against the largest finite float ---


@pytest.mark.parametrize("name", [n for n in DISTRIBUTIONS if not _sampled(n)])
def test_inf_beats_the_largest_float(name):
    value = DISTRIBUTIONS[name](jnp.array([FMAX, INF]))
    np.testing.assert_array_equal(value, [0.0, 1.0])
    value = DISTRIBUTIONS[name](jnp.array([[FMAX, INF, 3.0, INF]]))
    expected = [0.0, 1.0, 0.0, 0.0] if _first_of_ties(name) else [0, 0.5, 0, 0.5]
    np.testing.assert_allclose(value[0], expected, rtol=1e-6)
    assert not np.isnan(_grad(DISTRIBUTIONS[name], jnp.array([FMAX, INF, 1.0]))).any()


def test_inf_index_and_max():
    assert jaxrelax.st_argmax(jnp.array([FMAX, INF])) == 1 == jnp.argmax(jnp.array([FMAX, INF]))
    assert jaxrelax.smooth_max(jnp.array([FMAX, INF])) == INF
    assert jaxrelax.st_max(jnp.array([FMAX, INF])) == INF


# --- 6. hard samplers and several +inf logits ---


@pytest.mark.parametrize(
    "sample",
    [
        lambda key, x: jaxrelax.gumbel_softmax(key, x, hard=True),
        lambda key, x: jaxrelax.gumbel_rao(key, x, num_samples=2),
    ],
)
def test_hard_samplers_share_the_mass_of_infinite_logits(sample):
    x = jnp.array([INF, 0.0, INF, FMAX])
    n = 400
    keys = jax.random.split(jax.random.key(1), n)
    counts = np.asarray(jax.vmap(lambda k: sample(k, x))(keys).sum(0))
    assert counts[1] == counts[3] == 0 and counts.sum() == n
    # Binomial(400, 1/2): 5 standard errors are 50 draws (a false failure about once in 2e6).
    assert abs(counts[0] - n / 2) < 5 * np.sqrt(n / 4)


# --- 7. axis=None ---

Z = jnp.array([[0.5, -1.0, 2.0], [1.5, 2.0, 0.0]])


def test_axis_none_reduces_over_all_axes():
    np.testing.assert_allclose(jaxrelax.softmax(Z, axis=None), jax.nn.softmax(Z, axis=None), 1e-6)
    np.testing.assert_allclose(jaxrelax.smooth_max(Z, axis=None), jax.nn.logsumexp(Z), 1e-6)
    assert jaxrelax.st_max(Z, axis=None) == 2.0
    np.testing.assert_array_equal(jaxrelax.hardmax(Z, axis=None), [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_allclose(jnp.sum(jaxrelax.sparsemax(Z, axis=None)), 1.0, 1e-6)
    assert jaxrelax.st_argmax(Z, axis=None) == jnp.argmax(Z) == 2
    flat = jax.nn.softmax(Z.reshape(-1) / 0.5) @ jnp.arange(6.0)
    np.testing.assert_allclose(jaxrelax.soft_argmax(Z, axis=None, temperature=0.5), flat, 1e-6)
    where = Z < 2
    assert jaxrelax.st_argmax(Z, axis=None, where=where) == 3
    assert jaxrelax.st_argmax(Z, axis=None, temperature=jnp.ones((1, 1))) == 2


def test_scalar_input_with_axis_none():
    assert jaxrelax.smooth_max(2.0, axis=None) == jax.nn.logsumexp(2.0) == 2.0
    assert jaxrelax.softmax(2.0, axis=None) == 1.0
    assert jaxrelax.soft_argmax(2.0, axis=None) == 0.0


# --- 10. the identity surrogate at -inf ---


def test_identity_backward_is_zero_at_minus_inf():
    x = jnp.array([[1.0, -INF, 3.0, INF], [-INF, 0.0, 2.0, 1.0]])
    where = jnp.array([True, True, True, False])
    grad = jax.grad(
        lambda x: jnp.sum(jaxrelax.st_hardmax(x, where=where, backward="identity") * COTANGENT)
    )(x)
    np.testing.assert_array_equal(grad, [[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 2.0, 0.0]])


# --- 12. integer promotion, as jax.nn ---


@pytest.mark.parametrize("dtype", [jnp.int8, jnp.int16, jnp.int32, jnp.uint8, jnp.bool_])
def test_integers_promote_like_jax_nn(dtype, x64):
    x = jnp.array([1, 0, 1], dtype)
    expected = jax.nn.softmax(x.astype(jnp.float32)).dtype  # bool is not taken by jax.nn
    if dtype != jnp.bool_:
        assert jax.nn.softmax(x).dtype == expected == jnp.float32
    assert jaxrelax.softmax(x).dtype == jaxrelax.hardmax(x).dtype == jnp.float32
    assert jaxrelax.smooth_max(x).dtype == jnp.float32
    assert jaxrelax.softmax(jnp.array([1, 2], jnp.int64)).dtype == jnp.float64


# --- the decisions ---


def test_fenchel_young_loss_with_the_label_on_an_infinite_score():
    x = jnp.array([[INF, 0.0, 1.0], [INF, INF, 1.0], [INF, INF, 1.0]])
    labels = jnp.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    # The limit of equal, ever larger scores: 0 when p is the label; Omega(y) - Omega(p) when
    # all label mass is on the +inf scores; +inf otherwise. Gradients (p - y) / t. Label mass
    # on -inf scores is ignored, as on masked ones.
    loss = jaxrelax.sparsemax_loss(x, labels)
    np.testing.assert_array_equal(loss, [0.0, 0.25, INF])
    grad = jax.grad(lambda x: jnp.sum(jaxrelax.sparsemax_loss(x, labels)[:2]))(x)
    np.testing.assert_array_equal(grad[:2], [[0, 0, 0], [-0.5, 0.5, 0]])
    minus = jnp.array([0.0, -INF])
    # labels (0.5, 0): Omega = (0.25 - 1) / 2, p = (1, 0): Omega = 0, x . (p - y) = 0
    assert jaxrelax.sparsemax_loss(minus, jnp.array([0.5, 0.5])) == -0.375
    grad = jax.grad(lambda x: jaxrelax.sparsemax_loss(x, jnp.array([0.0, 1.0])))(minus)
    np.testing.assert_array_equal(grad, [1.0, 0.0])


@pytest.mark.parametrize("temperature", [1e-20, 1e-3, 1.0])
def test_loss_temperature_gradient_at_extreme_temperatures(temperature, x64):
    x, labels = jnp.array([3.0, 0.0, -1.0]), jnp.array([0.0, 1.0, 0.0])
    grad = jax.grad(lambda t: jaxrelax.sparsemax_loss(x, labels, temperature=t))(temperature)
    # p is one-hot at 0 for these scores and temperatures, so the loss is x . (p - y) / t
    np.testing.assert_allclose(grad, -3.0 / temperature**2, rtol=1e-12)


def test_alpha_above_two_at_the_smallest_temperature():
    tiny = float(jnp.finfo(jnp.float32).tiny)
    np.testing.assert_allclose(
        jaxrelax.entmax(jnp.zeros(5), alpha=3.0, temperature=tiny), 0.2, 1e-6
    )


def test_binary_concrete_saturates_in_float32():
    sample = jaxrelax.binary_concrete(KEY, jnp.zeros(20000), temperature=0.05)
    assert (sample == 1).any() and (sample == 0).any()  # the documented closed interval
    grad = jax.grad(lambda z: jnp.sum(jaxrelax.binary_concrete(KEY, z, temperature=0.05)))(
        jnp.zeros(20000)
    )
    assert np.isfinite(grad).all() and (grad[sample == 1] == 0).all()


# --- one NaN policy: a NaN input shows in its slice's gradient too (as in jax.nn) ---

NAN_GRADIENT_ENTRIES = registry.select(
    input=registry.SLICES, gradient=lambda g: g not in (registry.HARD,)
)


@pytest.mark.parametrize("name", NAN_GRADIENT_ENTRIES)
def test_a_nan_slice_has_a_nan_gradient_and_the_others_are_finite(name):
    """Row 0 holds a NaN: its values and its gradient are NaN, masked entries included, as
    with jax.nn.softmax; row 1 is untouched. (Hard functions have a zero gradient
    everywhere; their NaN values are checked elsewhere.)"""
    entry = registry.ENTRIES[name]
    x = jnp.array([[1.0, jnp.nan, 0.5, 2.0, -1.0], [1.0, 2.0, 3.0, 4.0, 0.5]])
    weights = jnp.arange(1.0, 11.0).reshape(x.shape)
    value = entry(x)
    assert np.isnan(np.asarray(value[0])).all(), value
    assert np.isfinite(np.asarray(value[1])).all(), value

    def loss(x, row):
        out = entry(x)
        out = out * weights[:, : out.shape[-1]] if out.ndim == 2 else out * jnp.array([2.0, 3.0])
        return jnp.sum(out[row])

    grad = jax.jit(jax.grad(loss), static_argnums=1)  # one program per row, not op by op
    row_0 = np.asarray(grad(x, 0))
    np.testing.assert_array_equal(np.isnan(row_0[0]), True)
    if entry.axis is registry.NO_AXIS and entry.name == "perturbed":
        return  # it perturbs the whole array at once: row 0's NaN reaches every entry
    np.testing.assert_array_equal(row_0[1], 0)  # no leak into row 1
    assert np.isfinite(np.asarray(grad(x, 1))[1]).all()
