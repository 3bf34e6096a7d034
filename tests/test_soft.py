import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from reference import (
    EDGE_EMPTY_ROWS,
    EDGE_NAN_ROW,
    EDGE_WHERE,
    EDGE_X,
    jax_smooth_max,
    jax_soft_argmax,
    jax_softmax,
    jax_spatial_soft_argmax,
    np_smooth_max,
    np_soft_argmax,
    np_softmax,
    np_spatial_soft_argmax,
)

import jaxrelax

INF, NAN = np.inf, np.nan
METHODS = ["logsumexp", "softmax"]


# --- values against the references ---


@pytest.mark.parametrize("temperature", [0.1, 1.0, 7.5])
@pytest.mark.parametrize(
    "shape, axis", [((6,), -1), ((4, 9), -1), ((4, 9), 0), ((3, 4, 5), (0, 2))]
)
def test_softmax_matches_references(shape, axis, temperature, rng):
    x = rng.normal(scale=3, size=shape).astype(np.float32)
    out = jaxrelax.softmax(x, axis, temperature=temperature)
    np.testing.assert_allclose(out, np_softmax(x, axis, temperature), rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(out, jax.nn.softmax(x / temperature, axis), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape, axis", [((6,), -1), ((4, 9), 0), ((3, 4, 5), (1, 2))])
def test_smooth_max_matches_reference(shape, axis, method, rng):
    x = rng.normal(scale=3, size=shape).astype(np.float32)
    out = jaxrelax.smooth_max(x, axis, temperature=0.7, method=method)
    np.testing.assert_allclose(
        out, np_smooth_max(x, axis, 0.7, method=method), rtol=2e-6, atol=2e-6
    )
    kept = jaxrelax.smooth_max(x, axis, temperature=0.7, method=method, keepdims=True)
    np.testing.assert_array_equal(kept, jnp.expand_dims(out, axis))


def test_per_slice_temperature(rng):
    x = rng.normal(size=(3, 8)).astype(np.float32)
    t = np.array([[0.2], [1.0], [5.0]], np.float32)
    np.testing.assert_allclose(jaxrelax.softmax(x, temperature=t), np_softmax(x, -1, t), rtol=2e-6)
    np.testing.assert_allclose(
        jaxrelax.smooth_max(x, temperature=t), np_smooth_max(x, -1, t), rtol=2e-6
    )
    grad_t = jax.grad(lambda t: jaxrelax.smooth_max(x, temperature=t).sum())(t)
    expected = jax.grad(lambda t: jax_smooth_max(x, t).sum())(t)
    assert grad_t.shape == t.shape
    np.testing.assert_allclose(grad_t, expected, rtol=1e-5)


def test_soft_argmax_and_spatial_match_references(rng):
    x = rng.normal(size=(5, 7)).astype(np.float32)
    np.testing.assert_allclose(
        jaxrelax.soft_argmax(x, 0, temperature=0.5), np_soft_argmax(x, 0, 0.5), rtol=2e-6
    )
    h = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    for normalized in [True, False]:
        out = jaxrelax.spatial_soft_argmax(
            h, temperature=0.3, normalized=normalized, channel_axis=None
        )
        assert out.shape == (2, 3, 2)
        np.testing.assert_allclose(
            out, np_spatial_soft_argmax(h, 0.3, normalized), rtol=2e-5, atol=2e-6
        )


# --- closed forms ---


def test_two_element_closed_forms():
    a, b, t = 0.3, -1.1, 0.4
    x = jnp.array([a, b])
    sig = 1 / (1 + np.exp(-(a - b) / t))
    np.testing.assert_allclose(jaxrelax.softmax(x, temperature=t), [sig, 1 - sig], rtol=1e-6)
    np.testing.assert_allclose(jaxrelax.soft_argmax(x, temperature=t), 1 - sig, rtol=1e-6)
    lse = max(a, b) + t * np.log1p(np.exp(-abs(a - b) / t))
    np.testing.assert_allclose(jaxrelax.smooth_max(x, temperature=t), lse, rtol=1e-6)
    np.testing.assert_allclose(
        jaxrelax.smooth_max(x, temperature=t, method="softmax"), sig * a + (1 - sig) * b, rtol=1e-6
    )


@pytest.mark.parametrize("temperature", [1e-3, 0.3, 3.0, 300.0])
def test_smooth_max_bounds(temperature, rng):
    x = rng.normal(scale=2, size=(50, 17)).astype(np.float32)
    top, mean = x.max(-1), x.mean(-1)
    lse = np.asarray(jaxrelax.smooth_max(x, temperature=temperature))
    slack = 1e-5 * np.abs(top) + 1e-6
    assert (top - slack <= lse).all() and (lse <= top + temperature * np.log(17) + slack).all()
    weighted = np.asarray(jaxrelax.smooth_max(x, temperature=temperature, method="softmax"))
    assert (mean - slack <= weighted).all() and (weighted <= top + slack).all()


def test_temperature_limits(rng):
    x = rng.normal(size=(8, 11)).astype(np.float32)
    np.testing.assert_allclose(
        jaxrelax.softmax(x, temperature=1e-4), jaxrelax.hardmax(x), atol=1e-6
    )
    np.testing.assert_allclose(
        jaxrelax.softmax(x, temperature=1e6), np.full(x.shape, 1 / 11), rtol=1e-4
    )
    for method in METHODS:
        np.testing.assert_allclose(
            jaxrelax.smooth_max(x, temperature=1e-4, method=method), x.max(-1), atol=1e-3
        )
    np.testing.assert_allclose(jaxrelax.soft_argmax(x, temperature=1e-4), x.argmax(-1), atol=1e-4)
    np.testing.assert_allclose(jaxrelax.soft_argmax(x, temperature=1e6), 5.0, atol=1e-3)


@pytest.mark.parametrize("t", [5e37, 1e38, 1.5e38])
def test_softmax_near_the_largest_temperatures(t):
    # float32: 1 / t is subnormal (flushed) beyond 8.5e37, 2 / t beyond 1.7e38; scores near
    # finfo.max still differ by a few units of t there (closed form in float64). +inf takes all
    # the mass at any temperature.
    big = float(jnp.finfo(jnp.float32).max)
    x = np.array([big, 0.0, -big])
    u = x / t
    expected = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    np.testing.assert_allclose(
        jaxrelax.softmax(x.astype(np.float32), temperature=t), expected, 1e-5
    )
    np.testing.assert_allclose(
        jaxrelax.entmax(x.astype(np.float32), alpha=1.0, temperature=t), expected, 1e-5
    )
    with_inf = jnp.asarray([3.5, np.inf, -big, np.inf], jnp.float32)
    for fn in (jaxrelax.softmax, jaxrelax.sparsemax, jaxrelax.entmax15):
        np.testing.assert_allclose(fn(with_inf, temperature=t), [0, 0.5, 0, 0.5], 1e-6)


def test_spatial_soft_argmax_conventions():
    h = jnp.zeros((4, 7)).at[3, 2].set(50.0)
    np.testing.assert_allclose(
        jaxrelax.spatial_soft_argmax(h, normalized=False, channel_axis=None), [3, 2], atol=1e-5
    )
    np.testing.assert_allclose(
        jaxrelax.spatial_soft_argmax(h, channel_axis=None), [1, -1 + 2 * 2 / 6], atol=1e-5
    )
    np.testing.assert_allclose(
        jaxrelax.spatial_soft_argmax(jnp.zeros((5, 9)), channel_axis=None), [0, 0], atol=1e-6
    )
    np.testing.assert_allclose(
        jaxrelax.spatial_soft_argmax(jnp.zeros((5, 9)), normalized=False, channel_axis=None),
        [2, 4],
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        jaxrelax.spatial_soft_argmax(jnp.zeros((1, 1)), channel_axis=None), [-1, -1]
    )  # linspace(-1, 1, 1)


def test_smooth_max_gradients_in_closed_form(rng):
    x = rng.normal(size=9)
    t = 0.6
    p = np_softmax(x, -1, t)
    with jax.enable_x64(True):
        g_x, g_t = jax.grad(jaxrelax.smooth_max, argnums=(0,))(jnp.asarray(x), temperature=t), None
        np.testing.assert_allclose(g_x[0], p, rtol=1e-12)
        g_t = jax.grad(lambda t: jaxrelax.smooth_max(jnp.asarray(x), temperature=t))(t)
        np.testing.assert_allclose(g_t, -(p * np.log(p)).sum(), rtol=1e-12)  # the entropy


# --- gradients in float64 ---

SOFT_FUNCTIONS = {
    "softmax": (
        lambda x, t: jaxrelax.softmax(x, temperature=t) * jnp.arange(1.0, 1 + x.shape[-1]),
        lambda x, t: jax_softmax(x, t) * jnp.arange(1.0, 1 + x.shape[-1]),
    ),
    "smooth_max": (
        lambda x, t: jaxrelax.smooth_max(x, temperature=t),
        lambda x, t: jax_smooth_max(x, t),
    ),
    "smooth_max_softmax": (
        lambda x, t: jaxrelax.smooth_max(x, temperature=t, method="softmax"),
        lambda x, t: jax_smooth_max(x, t, method="softmax"),
    ),
    "soft_argmax": (lambda x, t: jaxrelax.soft_argmax(x, temperature=t), jax_soft_argmax),
    "spatial_soft_argmax": (
        lambda x, t: jaxrelax.spatial_soft_argmax(
            x.reshape(x.shape[:-1] + (2, -1)), temperature=t, channel_axis=None
        ),
        lambda x, t: jax_spatial_soft_argmax(x.reshape(x.shape[:-1] + (2, -1)), t),
    ),
}


@pytest.mark.parametrize("name", SOFT_FUNCTIONS)
def test_check_grads_order_two(name, x64, rng):
    fn, _ = SOFT_FUNCTIONS[name]
    x = jnp.asarray(rng.normal(size=(3, 8)))
    check_grads(fn, (x, 0.7), order=2, modes=["rev"], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", SOFT_FUNCTIONS)
def test_gradients_match_autodiff_of_reference(name, x64, rng):
    fn, ref = SOFT_FUNCTIONS[name]
    x = jnp.asarray(rng.normal(size=(3, 8)))
    cot = jnp.asarray(rng.normal(size=np.shape(ref(x, 0.7))))
    mine = jax.vjp(fn, x, 0.7)[1](cot)
    theirs = jax.vjp(ref, x, 0.7)[1](cot)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # second order: the Hessian of a scalar projection, in x and in temperature
    scalar = lambda f: lambda x, t: jnp.vdot(cot, f(x, t))  # noqa: E731
    np.testing.assert_allclose(
        jax.hessian(scalar(fn))(x, 0.7), jax.hessian(scalar(ref))(x, 0.7), rtol=1e-9, atol=1e-11
    )
    np.testing.assert_allclose(
        jax.grad(jax.grad(scalar(fn), 1), 1)(x, 0.7),
        jax.grad(jax.grad(scalar(ref), 1), 1)(x, 0.7),
        rtol=1e-9,
    )


def test_masked_gradients_match_reference(x64, rng):
    x = jnp.asarray(rng.normal(size=(4, 6)))
    where = jnp.asarray(rng.random((4, 6)) < 0.7).at[:, 0].set(True)
    cot = jnp.asarray(rng.normal(size=(4, 6)))
    mine = jax.vjp(lambda x, t: jaxrelax.softmax(x, temperature=t, where=where), x, 0.5)[1](cot)
    theirs = jax.vjp(lambda x, t: jax_softmax(x, t, where=where), x, 0.5)[1](cot)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# --- edges: masks, infinities, NaN, dtypes ---

EDGE_FUNCTIONS = {
    "softmax": lambda x, **k: jaxrelax.softmax(x, **k),
    "smooth_max": lambda x, **k: jaxrelax.smooth_max(x, **k),
    "smooth_max_softmax": lambda x, **k: jaxrelax.smooth_max(x, method="softmax", **k),
    "soft_argmax": lambda x, **k: jaxrelax.soft_argmax(x, **k),
}
EDGE_REFERENCES = {
    "softmax": lambda x, **k: np_softmax(x, -1, 0.5, k.get("where")),
    "smooth_max": lambda x, **k: np_smooth_max(x, -1, 0.5, k.get("where")),
    "smooth_max_softmax": lambda x, **k: np_smooth_max(x, -1, 0.5, k.get("where"), "softmax"),
    "soft_argmax": lambda x, **k: np_soft_argmax(x, -1, 0.5, k.get("where")),
}


@pytest.mark.parametrize("name", EDGE_FUNCTIONS)
def test_masks_and_infinities(name):
    fn = EDGE_FUNCTIONS[name]
    out = np.asarray(fn(EDGE_X, temperature=0.5, where=EDGE_WHERE))
    np.testing.assert_allclose(out, EDGE_REFERENCES[name](EDGE_X, where=EDGE_WHERE), rtol=1e-6)
    nan_rows = np.isnan(out).reshape(len(EDGE_X), -1).any(1)
    np.testing.assert_array_equal(nan_rows, np.arange(len(EDGE_X)) == EDGE_NAN_ROW)
    # gradients: finite everywhere but the NaN row, zero on masked and -inf entries
    grad = np.asarray(
        jax.vjp(lambda x: fn(x, temperature=0.5, where=EDGE_WHERE), EDGE_X)[1](jnp.ones(out.shape))[
            0
        ]
    )
    assert np.isnan(grad[EDGE_NAN_ROW]).all()
    others = np.arange(len(EDGE_X)) != EDGE_NAN_ROW
    assert np.isfinite(grad[others]).all()
    ignored = ~EDGE_WHERE | np.isneginf(EDGE_X)
    assert (grad[others][ignored[others]] == 0).all()
    np.testing.assert_array_equal(grad[EDGE_EMPTY_ROWS], 0)


def test_fully_masked_values():
    for row in EDGE_EMPTY_ROWS:
        assert (jaxrelax.softmax(EDGE_X, where=EDGE_WHERE)[row] == 0).all()
        assert jaxrelax.smooth_max(EDGE_X, where=EDGE_WHERE)[row] == -INF
        assert jaxrelax.smooth_max(EDGE_X, where=EDGE_WHERE, method="softmax")[row] == -INF
        assert jaxrelax.soft_argmax(EDGE_X, where=EDGE_WHERE)[row] == 0
    assert jaxrelax.smooth_max(EDGE_X)[4] == INF


def test_nan_propagates_on_long_slices():
    # XLA's CPU max-reductions drop NaN on long rows; the results must not.
    x = jnp.zeros((2, 131072)).at[0, 77].set(NAN).at[1, 5].set(INF)
    for fn in [jaxrelax.softmax, jaxrelax.hardmax, jaxrelax.st_hardmax]:
        out = fn(x)
        assert jnp.isnan(out[0]).all() and not jnp.isnan(out[1]).any()
    for fn in [jaxrelax.smooth_max, jaxrelax.soft_argmax, jaxrelax.st_argmax, jaxrelax.st_max]:
        out = fn(x)
        assert jnp.isnan(out[0]) and not jnp.isnan(out[1])
    assert jnp.isnan(jaxrelax.smooth_max(x, method="softmax")[0])


def test_spatial_edges():
    h = jnp.full((2, 3, 4), -INF).at[1, 2, 3].set(0.0).at[1, 0, 0].set(NAN)
    out = jaxrelax.spatial_soft_argmax(h, normalized=False, channel_axis=None)
    np.testing.assert_array_equal(out[0], [0, 0])
    assert jnp.isnan(out[1]).all()


@pytest.mark.parametrize("fn", [jaxrelax.softmax, jaxrelax.smooth_max, jaxrelax.soft_argmax])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_is_computed_in_float32(dtype, fn, rng):
    x = (rng.normal(size=(4, 10)) * 3).astype(np.float32)
    xh = jnp.asarray(x, dtype)
    x32 = np.asarray(xh.astype(jnp.float32))  # the same, already rounded input
    out = fn(xh, temperature=0.5)
    assert out.dtype == dtype
    expected = fn(x32, temperature=0.5).astype(dtype)  # computed in float32, rounded once
    np.testing.assert_array_equal(out.astype(np.float32), expected.astype(np.float32))
    g = jax.grad(lambda x: fn(x, temperature=0.5).astype(jnp.float32).sum())(xh)
    assert g.dtype == dtype


@pytest.mark.parametrize(
    "fn",
    [
        jaxrelax.softmax,
        jaxrelax.smooth_max,
        jaxrelax.soft_argmax,
        jaxrelax.st_hardmax,
        jaxrelax.st_max,
    ],
)
def test_float16_large_logits_do_not_overflow(fn):
    x = jnp.array([1e4, -1e4, 9990.0, 0.0], jnp.float16)
    out = fn(x)
    assert jnp.isfinite(out).all()
    g = jax.grad(lambda x: fn(x).astype(jnp.float32).sum())(x)
    assert jnp.isfinite(g).all() and g.dtype == jnp.float16


def test_float16_large_logits_values():
    x = jnp.array([1e4, -1e4, 9990.0, 0.0], jnp.float16)
    np.testing.assert_allclose(jaxrelax.smooth_max(x).astype(np.float32), 1e4, rtol=1e-3)
    expected = np_softmax(np.asarray(x, np.float32), -1, 10.0)  # 9990 rounds to 9992 in float16
    np.testing.assert_allclose(
        jaxrelax.softmax(x, temperature=10.0).astype(np.float32), expected, atol=1e-3
    )


def test_integer_input_is_promoted():
    out = jaxrelax.softmax(jnp.array([1, 2, 3]))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, jax.nn.softmax(jnp.array([1.0, 2.0, 3.0])), rtol=1e-6)


def test_exact_ties_are_symmetric():
    x = jnp.array([2.0, 5.0, 5.0, 1.0])
    p = jaxrelax.softmax(x, temperature=0.3)
    assert p[1] == p[2]
    g = jax.grad(lambda x: jaxrelax.smooth_max(x, temperature=0.3))(x)
    assert g[1] == g[2]
    np.testing.assert_allclose(
        jaxrelax.soft_argmax(jnp.array([1.0, 4.0, 0.0, 4.0]), temperature=1e-3), 2.0
    )


def test_spatial_soft_argmax_layouts(rng):
    """Channels-last (the default) and channels-first give each channel's keypoint, the
    channel-less heatmaps' coordinates of the same maps; per-channel temperatures follow."""
    maps = rng.normal(size=(2, 3, 5, 4)) * 3  # (batch, channels, H, W)
    t = np.array([0.5, 1.0, 2.0])
    want = np_spatial_soft_argmax(maps, t[:, None, None])  # (2, 3, 2)
    last = np.moveaxis(maps, 1, -1)  # (batch, H, W, channels)
    got = jaxrelax.spatial_soft_argmax(jnp.float32(last), temperature=jnp.float32(t))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    first = jaxrelax.spatial_soft_argmax(
        jnp.float32(maps), temperature=jnp.float32(t[:, None, None]), channel_axis=1
    )
    np.testing.assert_allclose(first, want, rtol=2e-5, atol=2e-6)
    with pytest.raises(ValueError, match="channel_axis=None takes"):
        jaxrelax.spatial_soft_argmax(jnp.zeros((5, 4)))
