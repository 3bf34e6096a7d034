"""Pooling (max_pool, max_unpool, soft_pool, lse_pool, st_max_pool) against float64 oracles
built from explicitly extracted windows (reference.py), lax.reduce_window (with
window_dilation too), closed-form limits, and check_grads; integer input against exact
integer arithmetic. PyTorch's own outputs are the oracle of test_pool_torch.py."""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from jax import lax
from jax.test_util import check_grads

import jaxrelax

SMOOTH = {"soft": jaxrelax.soft_pool, "lse": jaxrelax.lse_pool}

# (spatial shape, window, strides, padding, window_dilation): every legal kind of geometry.
GEOMETRIES = [
    ((6,), (2,), (2,), "VALID", None),
    ((7,), (3,), (2,), ((1, 1),), None),  # overlapping, padded
    ((5,), (3,), None, "SAME", None),  # odd size, default strides
    ((2,), (3,), (1,), ((1, 1),), None),  # a window larger than the input
    ((1,), (2,), (1,), ((1, 0),), None),  # size-1 spatial dim
    ((4, 5), (2, 2), (2, 2), "VALID", None),
    ((5, 5), (3, 3), (2, 2), ((1, 1), (1, 1)), None),
    ((4, 6), (3, 2), (2, 1), "SAME", None),  # even sizes, a non-square window
    ((3, 1), (2, 1), (3, 1), ((1, 0), (0, 0)), None),  # a stride larger than the window
    ((5, 4), (3, 3), (1, 1), ((2, 1), (0, 2)), None),  # windows holding one real entry
    ((3, 4, 3), (2, 2, 2), (2, 2, 1), "VALID", None),
    ((3, 3, 4), (3, 3, 3), (2, 2, 2), ((1, 1), (1, 1), (1, 1)), None),
    # dilated: a window's entries window_dilation apart
    ((7,), (2,), (1,), "VALID", (3,)),  # a dilation larger than the window
    ((9,), (3,), (2,), ((3, 2),), (2,)),  # a pad as wide as the window (not its extent 5)
    ((2,), (2,), (1,), ((2, 1),), (2,)),  # an extent larger than the input
    ((6, 7), (2, 3), (2, 1), ((1, 1), (2, 2)), (3, 2)),
    ((5, 6), (3, 2), (1, 2), "SAME", (2, 3)),  # SAME pads for the extent (5, 4)
    ((5, 4, 5), (2, 2, 3), (2, 1, 2), ((1, 0), (0, 1), (2, 2)), (2, 3, 2)),
]


def _pads(spatial, window, strides, padding, dilation=None):
    """(padding as (low, high) pairs, strides, dilation), with the defaults spelled out."""
    strides = (1,) * len(window) if strides is None else strides
    dilation = (1,) * len(window) if dilation is None else dilation
    if isinstance(padding, str):
        extent = [(w - 1) * d + 1 for w, d in zip(window, dilation, strict=True)]
        padding = tuple(lax.padtype_to_pads(spatial, extent, strides, padding))
    return padding, strides, dilation


def _geometry_id(g):
    spatial, window, strides, padding, dilation = g
    name = f"{'x'.join(map(str, spatial))}-w{'x'.join(map(str, window))}-s{strides}-{padding}"
    return name if dilation is None else f"{name}-d{'x'.join(map(str, dilation))}"


def _reduce_window_max(x, window, strides, padding, dilation):
    """flax's formulation of the max-pool (lax.reduce_window), dilated as lax dilates; a
    string padding as lax pads for it."""
    if not isinstance(padding, str):
        padding = ((0, 0), *padding, (0, 0))
    return lax.reduce_window(
        x,
        -jnp.inf,
        lax.max,
        (1, *window, 1),
        (1, *strides, 1),
        padding,
        window_dilation=(1, *dilation, 1),
    )


def _input(rng, spatial, batch=(2,), features=3, ties=False):
    shape = (*batch, *spatial, features)
    if ties:
        return rng.integers(-1, 2, size=shape).astype(np.float64)
    return rng.normal(size=shape)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied"])
def test_max_pool_values_indices_and_gradient(geometry, ties, rng, x64):
    spatial, window, strides, padding, dilation = geometry
    pads, steps, dilations = _pads(*geometry)
    x = _input(rng, spatial, ties=ties)
    options = dict(window_dilation=dilation)
    values, indices = jaxrelax.max_pool(x, window, strides, padding, return_indices=True, **options)
    want_values, want_indices = ref.np_max_pool(x, window, steps, pads, dilation)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(jaxrelax.max_pool(x, window, strides, padding, **options), values)
    # flax's formulation (lax.reduce_window) agrees on the values
    flax_like = _reduce_window_max(x, window, steps, padding, dilations)
    np.testing.assert_array_equal(values, flax_like)
    # the gradient goes to the indexed position of each window (summed where they overlap;
    # lax.reduce_window has no gradient with dilation)
    cotangent = rng.normal(size=values.shape)
    for return_indices in (False, True):

        def pooled(x, return_indices=return_indices):
            out = jaxrelax.max_pool(
                x, window, strides, padding, return_indices=return_indices, **options
            )
            return out[0] if return_indices else out

        _, vjp = jax.vjp(pooled, x)
        want = ref.np_scatter_to_plane(x.shape, len(window), want_indices, cotangent)
        np.testing.assert_allclose(vjp(cotangent)[0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
@pytest.mark.parametrize("kind", ["soft", "lse"])
def test_smooth_pools_match_the_patch_reference(geometry, kind, rng, x64):
    spatial, window, strides, padding, dilation = geometry
    pads, steps, _ = _pads(*geometry)
    x = _input(rng, spatial, ties=kind == "lse")
    t = rng.uniform(0.3, 2.0, size=(2, *([1] * len(spatial)), 3))  # per batch and feature
    fn = functools.partial(SMOOTH[kind], window_dilation=dilation)
    got = fn(x, window, strides, padding, temperature=t)
    want = ref.np_smooth_pool(x, window, steps, pads, t, kind, dilation)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    cotangent = rng.normal(size=got.shape)
    _, vjp = jax.vjp(lambda x, t: fn(x, window, strides, padding, temperature=t), x, t)
    dx, dt = vjp(cotangent)
    want_dx, want_dt = ref.np_smooth_pool_vjp(x, cotangent, window, steps, pads, t, kind, dilation)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-12)
    axes = tuple(range(1, 1 + len(spatial)))
    np.testing.assert_allclose(dt, want_dt.sum(axes, keepdims=True), rtol=1e-10, atol=1e-12)
    # st_max_pool: max_pool's values, soft_pool's gradient
    if kind == "soft":
        st_max_pool = functools.partial(jaxrelax.st_max_pool, window_dilation=dilation)
        st = st_max_pool(x, window, strides, padding, temperature=t)
        max_pooled = jaxrelax.max_pool(x, window, strides, padding, window_dilation=dilation)
        np.testing.assert_array_equal(st, max_pooled)
        _, st_vjp = jax.vjp(
            lambda x, t: st_max_pool(x, window, strides, padding, temperature=t), x, t
        )
        for a, b in zip(st_vjp(cotangent), (dx, dt), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("geometry", [GEOMETRIES[i] for i in (1, 9, 15)], ids=_geometry_id)
@pytest.mark.parametrize("kind", ["soft", "lse"])
def test_smooth_pools_pass_check_grads_to_second_order(geometry, kind, rng, x64):
    spatial, window, strides, padding, dilation = geometry
    x = _input(rng, spatial, batch=(), features=2)
    fn = functools.partial(SMOOTH[kind], window_dilation=dilation)
    check_grads(
        jax.jit(lambda x, t: fn(x, window, strides, padding, temperature=t)),
        (x, 0.7),
        order=2,
        modes=["rev"],
    )


def test_max_pool_second_derivative_is_zero(rng, x64):
    x = _input(rng, (5, 5))
    hvp = jax.grad(
        lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(jaxrelax.max_pool(x, (3, 3)) ** 2))(x) * x)
    )
    # d/dx of sum(2 y dy/dx x): piecewise linear, so its gradient is 2 * (dy/dx)^T dy/dx x +
    # the gradient itself: checked against the explicit formula with the winners' positions.
    values, indices = ref.np_max_pool(x, (3, 3), (1, 1), ((0, 0), (0, 0)))
    first = ref.np_scatter_to_plane(x.shape, 2, indices, 2 * values)
    win_x = np.take_along_axis(x.reshape(2, -1, 3), indices.reshape(2, -1, 3), 1).reshape(
        values.shape
    )
    second = ref.np_scatter_to_plane(x.shape, 2, indices, 2 * win_x)
    np.testing.assert_allclose(hvp(x), first + second, rtol=1e-12)


@pytest.mark.parametrize("dilation", [None, (2, 3)])
def test_temperature_limits(dilation, rng, x64):
    x = _input(rng, (6, 7), ties=True)  # ties: t -> 0 gives their mean, which is the max
    window, strides, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
    options = dict(window_dilation=dilation)
    max_pooled = jaxrelax.max_pool(x, window, strides, padding, **options)
    for fn in (jaxrelax.soft_pool, jaxrelax.lse_pool):  # lse_pool: + t log(ties) at most
        np.testing.assert_allclose(
            fn(x, window, strides, padding, temperature=1e-6, **options), max_pooled, atol=3e-6
        )
    # t -> inf: the mean over the window's real (unpadded) entries, from lax's sum-pools
    dilations = (1, *((1, 1) if dilation is None else dilation), 1)
    geometry = ((1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    sums = lax.reduce_window(x, 0.0, lax.add, *geometry, window_dilation=dilations)
    counts = lax.reduce_window(np.ones_like(x), 0.0, lax.add, *geometry, window_dilation=dilations)
    soft = jaxrelax.soft_pool(x, window, strides, padding, temperature=1e12, **options)
    np.testing.assert_allclose(soft, sums / counts, rtol=1e-9, atol=1e-9)
    # lse_pool lies in [max, max + t log |w|], |w| the real entries
    for t in (0.1, 1.0, 10.0):
        lse = jaxrelax.lse_pool(x, window, strides, padding, temperature=t, **options)
        assert (lse >= max_pooled - 1e-12).all()
        assert (lse <= max_pooled + t * np.log(counts) + 1e-12).all()
        soft = jaxrelax.soft_pool(x, window, strides, padding, temperature=t, **options)
        assert (soft <= max_pooled + 1e-12).all() and (soft >= sums / counts - 1e-12).all()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_soft_pool_at_the_largest_temperatures_is_the_mean(dtype):
    """At t near finfo.max the weights are uniform: the window's mean, as smooth_max with the
    softmax method gives (the logits (x - max) / t are subnormal there, and flushed on CPU),
    with the gradient 1 / |w| on each entry."""
    with jax.enable_x64(dtype == "float64"):
        x = jnp.asarray([0.0, 1.0, 2.0, 3.0], dtype)[None, :, None]
        for t in [1e30, float(jnp.finfo(dtype).max) / 4]:
            pooled = jaxrelax.soft_pool(x, (4,), temperature=t)
            np.testing.assert_allclose(pooled.ravel(), [1.5], rtol=1e-6)
            smooth = jaxrelax.smooth_max(x.ravel(), temperature=t, method="softmax")
            np.testing.assert_allclose(pooled.ravel(), [smooth], rtol=1e-6)
            grad = jax.grad(lambda x, t=t: jaxrelax.soft_pool(x, (4,), temperature=t).sum())(x)
            np.testing.assert_allclose(grad.ravel(), [0.25] * 4, rtol=1e-6)


@pytest.mark.parametrize("t", [5e37, 1e38, 1.5e38])
def test_soft_pools_near_the_largest_temperatures_keep_their_scale_and_infinities(t):
    # float32: 1 / t is subnormal (flushed) beyond 8.5e37, 2 / t beyond 1.7e38; scores near
    # finfo.max still differ by a few units of t there. Closed forms in float64.
    big = float(jnp.finfo(jnp.float32).max) / 2  # lse_pool of finfo.max overflows
    x = jnp.asarray([big, 0.0, -big], jnp.float32)[:, None]
    u = np.array([big, 0.0, -big]) / t
    p = np.exp(u - u.max()) / np.exp(u - u.max()).sum()
    np.testing.assert_allclose(jaxrelax.soft_pool(x, (3,), temperature=t)[0, 0], p @ (u * t), 1e-5)
    lse = t * (u.max() + np.log(np.exp(u - u.max()).sum()))
    np.testing.assert_allclose(jaxrelax.lse_pool(x, (3,), temperature=t)[0, 0], lse, 1e-5)
    # +inf wins its window at any temperature: the others weigh 0, as do their gradients
    x = jnp.asarray([3.5, np.inf, -big], jnp.float32)[:, None]
    for pool in (jaxrelax.soft_pool, jaxrelax.lse_pool):
        assert pool(x, (3,), temperature=t)[0, 0] == np.inf
        grad = jax.grad(lambda x, pool=pool: pool(x, (3,), temperature=t)[0, 0])(x)
        np.testing.assert_array_equal(grad.ravel(), [0, 1, 0])


def test_infinities_nan_and_huge_values():
    inf, nan = np.inf, np.nan
    #               +inf wins  -inf loses  all -inf     NaN         two +inf
    x = np.array([1.0, inf, -inf, 2.0, -inf, -inf, nan, 3.0, inf, inf], np.float32)[:, None]
    window = ((2,), (2,))
    values, indices = jaxrelax.max_pool(x, *window, return_indices=True)
    np.testing.assert_array_equal(values[:, 0], [inf, 2.0, -inf, nan, inf])
    np.testing.assert_array_equal(indices[:, 0], [1, 3, 4, 6, 8])
    for fn in (jaxrelax.soft_pool, jaxrelax.lse_pool):
        out = fn(x, *window)
        np.testing.assert_array_equal(out[[0, 2, 3, 4], 0], [inf, -inf, nan, inf])
        assert np.isfinite(out[1, 0])
        for t in (1e-3, 1.0, 1e3):
            grad = jax.grad(
                lambda x, fn=fn, t=t: jnp.nansum(
                    fn(x, *window, temperature=t)[jnp.array([0, 1, 2, 4])]
                )
            )(x)
            # +inf entries share their window's gradient; -inf, and the finite entry beside
            # a +inf, get none; the all -inf window none. The NaN window is not summed (its
            # entries' gradient may be NaN: 0 times NaN), and leaves the others unaffected.
            others = np.r_[0:6, 8:10]
            np.testing.assert_array_equal(grad[others, 0], [0, 1, 0, 1, 0, 0, 0.5, 0.5])
    # max_pool's gradient goes to the winner, the NaN window's to its NaN
    grad = jax.grad(lambda x: jaxrelax.max_pool(x, *window).sum())(x)
    np.testing.assert_array_equal(grad[:, 0], [0, 1, 0, 1, 1, 0, 1, 0, 1, 0])


@pytest.mark.parametrize("dtype, big", [(np.float32, 1e30), (np.float32, 3e38), (np.float16, 1e4)])
def test_huge_values_do_not_overflow(dtype, big, rng):
    x = (rng.uniform(-1, 1, size=(2, 4, 4, 2)) * big).astype(dtype)
    x[0, 0, 0, 0] = big
    for kind, fn in SMOOTH.items():
        for t in (1e-3, 1.0, min(big, 1e30)):  # (beyond about 1e38: see softmax's note)
            out = fn(x, (2, 2), (2, 2), temperature=t)
            assert out.dtype == dtype
            want = ref.np_smooth_pool(x.astype(np.float64), (2, 2), (2, 2), ((0, 0),) * 2, t, kind)
            np.testing.assert_allclose(
                np.asarray(out, np.float64), want, rtol=2e-3 if dtype == np.float16 else 1e-5
            )
            grad = jax.grad(
                lambda x, fn=fn, t=t: fn(x, (2, 2), (2, 2), temperature=t).astype(jnp.float32).sum()
            )(x)
            assert grad.dtype == dtype and np.isfinite(np.asarray(grad, np.float32)).all()


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.int32])
def test_dtypes(dtype, rng):
    x = jnp.asarray(rng.integers(-5, 6, size=(2, 6, 6, 3)), dtype)
    # the relaxations promote integers; max_pool and max_unpool keep them (flax, PyTorch)
    out_dtype = jnp.float32 if dtype == jnp.int32 else dtype
    x32 = x.astype(jnp.float32)
    for fn in (jaxrelax.max_pool, jaxrelax.soft_pool, jaxrelax.lse_pool, jaxrelax.st_max_pool):
        out = fn(x, (3, 3), (2, 2), "SAME")
        assert out.dtype == (dtype if fn is jaxrelax.max_pool else out_dtype)
        np.testing.assert_allclose(
            np.asarray(out, np.float32),
            np.asarray(fn(x32, (3, 3), (2, 2), "SAME").astype(out_dtype), np.float32),
        )
        if dtype != jnp.int32:
            grad = jax.grad(
                lambda x, fn=fn: fn(x, (3, 3), (2, 2), "SAME").astype(jnp.float32).sum()
            )(x)
            want = jax.grad(lambda x, fn=fn: fn(x, (3, 3), (2, 2), "SAME").sum())(x32)
            assert grad.dtype == dtype
            np.testing.assert_allclose(
                np.asarray(grad, np.float32), np.asarray(want.astype(dtype), np.float32)
            )
    values, indices = jaxrelax.max_pool(x, (2, 2), (2, 2), return_indices=True)
    unpooled = jaxrelax.max_unpool(values, indices, spatial_shape=(6, 6))
    assert values.dtype == unpooled.dtype == dtype


# (dtype, the values drawn: extremes that float32 cannot hold apart, and the dtype's minimum,
# which is also the padding's value; a geometry, plain or dilated)
INTEGERS = [
    ("int8", [-128, -127, 0, 126, 127], GEOMETRIES[1]),
    ("uint8", [0, 1, 254, 255], GEOMETRIES[9]),  # windows of one real entry
    ("int32", [-(2**31), 2**31 - 2, 2**31 - 1, 2**24 + 1, 2**24], GEOMETRIES[13]),
    ("int64", [-(2**63), 2**62, 2**62 + 1, 2**53 + 1, 2**53], GEOMETRIES[15]),  # past float64's
]


@pytest.mark.parametrize(
    "dtype, drawn, geometry", INTEGERS, ids=[f"{i[0]}-{_geometry_id(i[2])}" for i in INTEGERS]
)
def test_integers_are_pooled_exactly_in_their_dtype(dtype, drawn, geometry, rng, x64):
    """max_pool and max_unpool of integers: exact, in the input's dtype, with the indices of
    the same order's floats (ranks: the values themselves would round in float64)."""
    spatial, window, strides, padding, dilation = geometry
    pads, steps, _ = _pads(*geometry)
    x = rng.choice(np.asarray(drawn, dtype), size=(2, *spatial, 3))
    ranks = np.searchsorted(np.unique(x), x).astype(np.float64)  # the same order, exact
    options = dict(window_dilation=dilation)
    values, indices = jaxrelax.max_pool(x, window, strides, padding, return_indices=True, **options)
    assert values.dtype == dtype and indices.dtype == jnp.int32
    want_values, want_indices = ref.np_max_pool(ranks, window, steps, pads, dilation)
    np.testing.assert_array_equal(indices, want_indices)
    plane = int(np.prod(spatial))
    found = np.take_along_axis(x.reshape(2, plane, 3), want_indices.reshape(2, -1, 3), 1)
    np.testing.assert_array_equal(values, found.reshape(values.shape))
    np.testing.assert_array_equal(np.unique(x)[want_values.astype(int)], values)
    np.testing.assert_array_equal(jaxrelax.max_pool(x, window, strides, padding, **options), values)
    # the windows' maxima in place, the rest 0, in the dtype; integers carry no gradient
    unpooled = jaxrelax.max_unpool(values, indices, spatial_shape=spatial)
    assert unpooled.dtype == dtype
    kept = ref.np_scatter_to_plane(x.shape, len(window), indices, np.ones(values.shape)) > 0
    np.testing.assert_array_equal(unpooled, np.where(kept, x, 0))
    _, vjp = jax.vjp(lambda x: jaxrelax.max_pool(x, window, strides, padding, **options), x)
    assert vjp(np.zeros(values.shape, jax.dtypes.float0))[0].dtype == jax.dtypes.float0


def test_max_unpool_of_integers_scatters_their_maximum(rng, x64):
    """Several values at one position: the largest (the dtype's minimum included, which also
    fills the positions no value names until they are told apart)."""
    low = np.iinfo(np.int64).min
    values = np.array([[5, low, 2**62 + 1, low, 2**62, 3]], np.int64).T  # (6, 1)
    indices = np.array([[0, 1, 2, 3, 2, 0]]).T
    unpooled = jaxrelax.max_unpool(values, indices, spatial_shape=(5,))
    assert unpooled.dtype == np.int64
    np.testing.assert_array_equal(unpooled[:, 0], [5, low, 2**62 + 1, low, 0])
    # and with none of them at the minimum
    unpooled = jaxrelax.max_unpool(values[[0, 2, 4, 5]], indices[[0, 2, 4, 5]], spatial_shape=(5,))
    np.testing.assert_array_equal(unpooled[:, 0], [5, 0, 2**62 + 1, 0, 0])


def test_booleans_are_still_promoted():
    x = jnp.array([[True], [False], [False]])
    assert jaxrelax.max_pool(x, (2,)).dtype == jnp.float32
    values, indices = jaxrelax.max_pool(x, (2,), return_indices=True)
    assert jaxrelax.max_unpool(x[:2], indices, spatial_shape=(3,)).dtype == jnp.float32


@pytest.mark.parametrize("dtype", ["float32", "int8"])
def test_dilated_windows_without_a_winner_name_their_first_real_entry(dtype):
    """A window whose real entries are all -inf (an integer dtype's minimum, as the padding
    is): its first real entry, which with dilation need not be the window's first entry
    past the low padding's edge. Window 3, dilation 2 (extent 5), padding (3, 3) on 5
    positions: window i reads i - 3, i - 1, i + 1."""
    low = -np.inf if dtype == "float32" else np.iinfo(dtype).min
    x = np.full((5, 1), low, dtype)
    values, indices = jaxrelax.max_pool(
        x, (3,), (1,), ((3, 3),), return_indices=True, window_dilation=(2,)
    )
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 1, 0, 1, 2, 3])
    np.testing.assert_array_equal(values[:, 0], [low] * 7)
    assert values.dtype == dtype
    x[4, 0] = 0  # now the windows reading position 4 (i = 3, 5, 7) win there
    _, indices = jaxrelax.max_pool(
        x, (3,), (1,), ((3, 3),), return_indices=True, window_dilation=(2,)
    )
    np.testing.assert_array_equal(indices[:, 0], [1, 0, 1, 4, 1, 4, 3])


def test_max_unpool_against_the_scatter_reference(rng, x64):
    values = rng.normal(size=(2, 3, 4, 3))
    values[0, 0, 0, 0], values[1, 2, 3, 2], values[0, 1, 1, 1] = -np.inf, np.nan, np.inf
    indices = rng.integers(0, 5 * 4, size=values.shape)  # many positions named twice
    indices[0, 1, 0, 0] = indices[0, 0, 0, 0]  # -inf meets a finite value
    got = jaxrelax.max_unpool(values, indices, spatial_shape=(5, 4))
    want = ref.np_scatter_to_plane((2, 5, 4, 3), 2, indices, values, combine="max")
    np.testing.assert_array_equal(got, want)
    lone = rng.integers(0, 20, size=values.shape)
    lone[0, 0, 0, 0] = 7
    lone[0, :, :, 0] = np.where(lone[0, :, :, 0] == 7, 8, lone[0, :, :, 0])
    lone[0, 0, 0, 0] = 7  # a -inf value alone at its position holds it
    got = jaxrelax.max_unpool(values, lone, spatial_shape=(5, 4))
    assert got[0, 1, 3, 0] == -np.inf
    # gradient: each value receives the cotangent at its index
    cotangent = rng.normal(size=got.shape)
    _, vjp = jax.vjp(lambda v: jaxrelax.max_unpool(v, indices, spatial_shape=(5, 4)), values)
    gathered = np.take_along_axis(cotangent.reshape(2, 20, 3), indices.reshape(2, 12, 3), 1)
    np.testing.assert_array_equal(vjp(cotangent)[0], gathered.reshape(values.shape))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_unpooling_the_max_pool_keeps_the_window_maxima_in_place(geometry, rng):
    spatial, window, strides, padding, dilation = geometry
    x = _input(rng, spatial, ties=True).astype(np.float32)
    values, indices = jaxrelax.max_pool(
        x, window, strides, padding, return_indices=True, window_dilation=dilation
    )
    pooling = (window, strides, padding)
    unpooled = jaxrelax.max_unpool(
        values, indices, *pooling, window_dilation=dilation, spatial_shape=spatial
    )
    assert unpooled.shape == x.shape
    kept = ref.np_scatter_to_plane(x.shape, len(window), indices, np.ones(values.shape)) > 0
    np.testing.assert_array_equal(unpooled, np.where(kept, x, 0))
    # Without spatial_shape: PyTorch's output size (pooled * stride for "SAME")
    pads, steps, dilations = _pads(spatial, window, strides, padding, dilation)
    default = tuple(
        p * s if padding == "SAME" else (p - 1) * s + (w - 1) * d + 1 - lo - hi
        for p, s, w, d, (lo, hi) in zip(
            values.shape[-1 - len(window) : -1], steps, window, dilations, pads, strict=True
        )
    )
    inferred = jax.eval_shape(
        lambda: jaxrelax.max_unpool(
            values, np.zeros_like(indices), *pooling, window_dilation=dilation
        )
    )
    assert inferred.shape[-1 - len(window) : -1] == default
    if default == spatial:
        inferred = jaxrelax.max_unpool(values, indices, *pooling, window_dilation=dilation)
        np.testing.assert_array_equal(inferred, unpooled)


def test_max_unpool_traced_out_of_range_indices_are_dropped():
    values = jnp.array([[1.0, 2.0, 3.0]]).T  # (3, 1): one spatial dim of 3 windows
    indices = jnp.array([[0, 7, -1]]).T
    out, vjp = jax.vjp(
        lambda v: jax.jit(lambda v, i: jaxrelax.max_unpool(v, i, spatial_shape=(4,)))(v, indices),
        values,
    )
    np.testing.assert_array_equal(out[:, 0], [1, 0, 0, 0])
    np.testing.assert_array_equal(vjp(jnp.ones((4, 1)))[0][:, 0], [1, 0, 0])


def test_batch_dims_and_transformations(rng):
    window, strides, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
    x = jnp.asarray(rng.normal(size=(2, 3, 7, 6, 4)), jnp.float32)  # two batch dims
    t = jnp.float32(0.8)
    for name, fn in [
        ("max_pool", lambda x, t: jaxrelax.max_pool(x, window, strides, padding)),
        ("soft_pool", lambda x, t: jaxrelax.soft_pool(x, window, strides, padding, temperature=t)),
        ("lse_pool", lambda x, t: jaxrelax.lse_pool(x, window, strides, padding, temperature=t)),
        (
            "st_max_pool",
            lambda x, t: jaxrelax.st_max_pool(x, window, strides, padding, temperature=t),
        ),
        (
            "max_unpool",
            lambda x, t: jaxrelax.max_unpool(
                *jaxrelax.max_pool(x, window, strides, padding, return_indices=True),
                window,
                strides,
                padding,
                spatial_shape=(7, 6),
            ),
        ),
    ]:
        eager = fn(x, t)
        unbatched = jnp.stack([fn(x[i, j], t) for i in range(2) for j in range(3)])
        np.testing.assert_allclose(
            eager.reshape(unbatched.shape), unbatched, rtol=1e-6, atol=1e-6, err_msg=name
        )
        np.testing.assert_allclose(jax.jit(fn)(x, t), eager, rtol=1e-6, atol=1e-6, err_msg=name)
        temps = jnp.array([0.8, 1.7], jnp.float32)
        mapped = jax.vmap(fn)(x, temps)
        for i in range(2):
            np.testing.assert_allclose(
                mapped[i], fn(x[i], temps[i]), rtol=1e-6, atol=1e-6, err_msg=name
            )
        weights = jnp.asarray(rng.normal(size=eager.shape), jnp.float32)

        def loss(x, t, fn=fn, weights=weights):
            return jnp.sum(fn(x, t) * weights)

        gx, gt = jax.grad(loss, argnums=(0, 1))(x, t)
        jx, jt = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, t)
        np.testing.assert_allclose(jx, gx, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(jt, gt, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.isfinite(gx).all() and np.isfinite(gt)
        second = jax.grad(lambda t, loss=loss: jnp.sum(jax.grad(loss)(x, t) ** 2))(t)
        assert np.isfinite(second)
        if name in ("soft_pool", "lse_pool", "st_max_pool"):
            assert gt != 0 and second != 0
        else:
            assert gt == 0


def test_geometry_matches_flax_conventions():
    x = jnp.ones((1, 7, 6, 2))
    # strides=None is all ones (flax), SAME gives ceil(n / stride)
    assert jaxrelax.max_pool(x, (3, 2)).shape == (1, 5, 5, 2)
    assert jaxrelax.max_pool(x, (3, 3), (2, 2), "SAME").shape == (1, 4, 3, 2)
    assert jaxrelax.soft_pool(x[0], (2, 2), (2, 2)).shape == (3, 3, 2)  # no batch dim
    assert jaxrelax.lse_pool(x[0, 0], (2,), (1,)).shape == (5, 2)  # 1-D


@pytest.mark.parametrize("window", [(2,), (2, 2), (2, 2, 2)])
def test_index_is_the_flat_plane_index(window):
    spatial = (4,) * len(window)
    x = np.arange(np.prod(spatial) * 2, dtype=np.float32).reshape(*spatial, 2)
    _, indices = jaxrelax.max_pool(x, window, window, return_indices=True)
    # the maximum of each window of an increasing array is its last entry
    last = [np.arange(1, n, 2) for n in spatial]
    want = np.ravel_multi_index(np.meshgrid(*last, indexing="ij"), spatial)
    np.testing.assert_array_equal(indices[..., 0], want)
    np.testing.assert_array_equal(indices[..., 1], want)


@pytest.mark.parametrize("dilations", [[None] * 3, [(2,), (3, 2), (2, 1, 2)]])
def test_every_offset_can_win(dilations, x64):
    # one window of each size: a spike at each offset in turn is found at its plane index
    # (with dilation d, offset j lies j * d from the window's start)
    for window, dilation in zip([(3,), (2, 3), (2, 2, 3)], dilations, strict=True):
        steps = (1,) * len(window) if dilation is None else dilation
        extent = tuple((w - 1) * d + 1 for w, d in zip(window, steps, strict=True))
        pool = jax.jit(
            lambda x, window=window, dilation=dilation: jaxrelax.max_pool(
                x, window, return_indices=True, window_dilation=dilation
            )
        )
        for offset in itertools.product(*map(range, window)):
            position = tuple(o * d for o, d in zip(offset, steps, strict=True))
            x = np.zeros((*extent, 1))
            x[(*position, 0)] = 1.0
            value, index = pool(x)
            assert value.reshape(()) == 1.0
            assert index.reshape(()) == np.ravel_multi_index(position, extent)


@pytest.mark.parametrize("shape", [(0, 5, 4, 3), (2, 5, 4, 0)], ids=["no-batch", "no-features"])
def test_empty_batch_or_features(shape):
    x = jnp.ones(shape)
    for fn in (jaxrelax.max_pool, jaxrelax.soft_pool, jaxrelax.lse_pool, jaxrelax.st_max_pool):
        out = fn(x, (3, 3), (2, 2), "SAME")
        assert out.shape == (shape[0], 3, 2, shape[-1])
        assert jax.grad(lambda x, fn=fn: fn(x, (3, 3), (2, 2), "SAME").sum())(x).shape == shape
    values, indices = jaxrelax.max_pool(x, (2, 2), (2, 2), return_indices=True)
    assert jaxrelax.max_unpool(values, indices, spatial_shape=(5, 4)).shape == shape
