"""Pooling (max_pool, max_unpool, soft_pool, lse_pool, st_max_pool) against float64 oracles
built from explicitly extracted windows (reference.py), closed-form limits, and check_grads.
PyTorch's own outputs are the oracle of test_pool_torch.py."""

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

# (spatial shape, window, strides, padding): every legal kind of geometry.
GEOMETRIES = [
    ((6,), (2,), (2,), "VALID"),
    ((7,), (3,), (2,), ((1, 1),)),  # overlapping, padded
    ((5,), (3,), None, "SAME"),  # odd size, default strides
    ((2,), (3,), (1,), ((1, 1),)),  # a window larger than the input
    ((1,), (2,), (1,), ((1, 0),)),  # size-1 spatial dim
    ((4, 5), (2, 2), (2, 2), "VALID"),
    ((5, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((4, 6), (3, 2), (2, 1), "SAME"),  # even sizes, a non-square window
    ((3, 1), (2, 1), (3, 1), ((1, 0), (0, 0))),  # a stride larger than the window
    ((5, 4), (3, 3), (1, 1), ((2, 1), (0, 2))),  # windows holding one real entry
    ((3, 4, 3), (2, 2, 2), (2, 2, 1), "VALID"),
    ((3, 3, 4), (3, 3, 3), (2, 2, 2), ((1, 1), (1, 1), (1, 1))),
]


def _pads(spatial, window, strides, padding):
    strides = (1,) * len(window) if strides is None else strides
    if isinstance(padding, str):
        return tuple(lax.padtype_to_pads(spatial, window, strides, padding)), strides
    return padding, strides


def _geometry_id(g):
    spatial, window, strides, padding = g
    return f"{'x'.join(map(str, spatial))}-w{'x'.join(map(str, window))}-s{strides}-{padding}"


def _input(rng, spatial, batch=(2,), features=3, ties=False):
    shape = (*batch, *spatial, features)
    if ties:
        return rng.integers(-1, 2, size=shape).astype(np.float64)
    return rng.normal(size=shape)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
@pytest.mark.parametrize("ties", [False, True], ids=["random", "tied"])
def test_max_pool_values_indices_and_gradient(geometry, ties, rng, x64):
    spatial, window, strides, padding = geometry
    pads, steps = _pads(*geometry)
    x = _input(rng, spatial, ties=ties)
    values, indices = jaxrelax.max_pool(x, window, strides, padding, return_indices=True)
    want_values, want_indices = ref.np_max_pool(x, window, steps, pads)
    np.testing.assert_array_equal(values, want_values)
    np.testing.assert_array_equal(indices, want_indices)
    assert indices.dtype == jnp.int32
    np.testing.assert_array_equal(jaxrelax.max_pool(x, window, strides, padding), values)
    # flax's formulation (lax.reduce_window) agrees on the values
    flax_like = lax.reduce_window(
        x, -jnp.inf, lax.max, (1, *window, 1), (1, *steps, 1), ((0, 0), *pads, (0, 0))
    )
    np.testing.assert_array_equal(values, flax_like)
    # the gradient goes to the indexed position of each window (summed where they overlap)
    cotangent = rng.normal(size=values.shape)
    for return_indices in (False, True):

        def pooled(x, return_indices=return_indices):
            out = jaxrelax.max_pool(x, window, strides, padding, return_indices=return_indices)
            return out[0] if return_indices else out

        _, vjp = jax.vjp(pooled, x)
        want = ref.np_scatter_to_plane(x.shape, len(window), want_indices, cotangent)
        np.testing.assert_allclose(vjp(cotangent)[0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
@pytest.mark.parametrize("kind", ["soft", "lse"])
def test_smooth_pools_match_the_patch_reference(geometry, kind, rng, x64):
    spatial, window, strides, padding = geometry
    pads, steps = _pads(*geometry)
    x = _input(rng, spatial, ties=kind == "lse")
    t = rng.uniform(0.3, 2.0, size=(2, *([1] * len(spatial)), 3))  # per batch and feature
    fn = SMOOTH[kind]
    got = fn(x, window, strides, padding, temperature=t)
    want = ref.np_smooth_pool(x, window, steps, pads, t, kind)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    cotangent = rng.normal(size=got.shape)
    _, vjp = jax.vjp(lambda x, t: fn(x, window, strides, padding, temperature=t), x, t)
    dx, dt = vjp(cotangent)
    want_dx, want_dt = ref.np_smooth_pool_vjp(x, cotangent, window, steps, pads, t, kind)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-10, atol=1e-12)
    axes = tuple(range(1, 1 + len(spatial)))
    np.testing.assert_allclose(dt, want_dt.sum(axes, keepdims=True), rtol=1e-10, atol=1e-12)
    # st_max_pool: max_pool's values, soft_pool's gradient
    if kind == "soft":
        st = jaxrelax.st_max_pool(x, window, strides, padding, temperature=t)
        np.testing.assert_array_equal(st, jaxrelax.max_pool(x, window, strides, padding))
        _, st_vjp = jax.vjp(
            lambda x, t: jaxrelax.st_max_pool(x, window, strides, padding, temperature=t), x, t
        )
        for a, b in zip(st_vjp(cotangent), (dx, dt), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("geometry", [GEOMETRIES[1], GEOMETRIES[9]], ids=_geometry_id)
@pytest.mark.parametrize("kind", ["soft", "lse"])
def test_smooth_pools_pass_check_grads_to_second_order(geometry, kind, rng, x64):
    spatial, window, strides, padding = geometry
    x = _input(rng, spatial, batch=(), features=2)
    fn = SMOOTH[kind]
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


def test_temperature_limits(rng, x64):
    x = _input(rng, (6, 6), ties=True)  # ties: t -> 0 gives their mean, which is the max
    window, strides, padding = (3, 3), (2, 2), ((1, 1), (1, 1))
    max_pooled = jaxrelax.max_pool(x, window, strides, padding)
    for fn in (jaxrelax.soft_pool, jaxrelax.lse_pool):  # lse_pool: + t log(ties) at most
        np.testing.assert_allclose(
            fn(x, window, strides, padding, temperature=1e-6), max_pooled, atol=3e-6
        )
    # t -> inf: the mean over the window's real (unpadded) entries
    sums = lax.reduce_window(
        x, 0.0, lax.add, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    counts = lax.reduce_window(
        np.ones_like(x), 0.0, lax.add, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
    )
    soft = jaxrelax.soft_pool(x, window, strides, padding, temperature=1e12)
    np.testing.assert_allclose(soft, sums / counts, rtol=1e-9, atol=1e-9)
    # lse_pool lies in [max, max + t log |w|], |w| the real entries
    for t in (0.1, 1.0, 10.0):
        lse = jaxrelax.lse_pool(x, window, strides, padding, temperature=t)
        assert (lse >= max_pooled - 1e-12).all()
        assert (lse <= max_pooled + t * np.log(counts) + 1e-12).all()
        soft = jaxrelax.soft_pool(x, window, strides, padding, temperature=t)
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
    out_dtype = jnp.float32 if dtype == jnp.int32 else dtype
    x32 = x.astype(jnp.float32)
    for fn in (jaxrelax.max_pool, jaxrelax.soft_pool, jaxrelax.lse_pool, jaxrelax.st_max_pool):
        out = fn(x, (3, 3), (2, 2), "SAME")
        assert out.dtype == out_dtype
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
    unpooled = jaxrelax.max_unpool(values, indices, (6, 6))
    assert unpooled.dtype == out_dtype


def test_max_unpool_against_the_scatter_reference(rng, x64):
    values = rng.normal(size=(2, 3, 4, 3))
    values[0, 0, 0, 0], values[1, 2, 3, 2], values[0, 1, 1, 1] = -np.inf, np.nan, np.inf
    indices = rng.integers(0, 5 * 4, size=values.shape)  # many positions named twice
    indices[0, 1, 0, 0] = indices[0, 0, 0, 0]  # -inf meets a finite value
    got = jaxrelax.max_unpool(values, indices, (5, 4))
    want = ref.np_scatter_to_plane((2, 5, 4, 3), 2, indices, values, combine="max")
    np.testing.assert_array_equal(got, want)
    lone = rng.integers(0, 20, size=values.shape)
    lone[0, 0, 0, 0] = 7
    lone[0, :, :, 0] = np.where(lone[0, :, :, 0] == 7, 8, lone[0, :, :, 0])
    lone[0, 0, 0, 0] = 7  # a -inf value alone at its position holds it
    got = jaxrelax.max_unpool(values, lone, (5, 4))
    assert got[0, 1, 3, 0] == -np.inf
    # gradient: each value receives the cotangent at its index
    cotangent = rng.normal(size=got.shape)
    _, vjp = jax.vjp(lambda v: jaxrelax.max_unpool(v, indices, (5, 4)), values)
    gathered = np.take_along_axis(cotangent.reshape(2, 20, 3), indices.reshape(2, 12, 3), 1)
    np.testing.assert_array_equal(vjp(cotangent)[0], gathered.reshape(values.shape))


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=_geometry_id)
def test_unpooling_the_max_pool_keeps_the_window_maxima_in_place(geometry, rng):
    spatial, window, strides, padding = geometry
    x = _input(rng, spatial, ties=True).astype(np.float32)
    values, indices = jaxrelax.max_pool(x, window, strides, padding, return_indices=True)
    unpooled = jaxrelax.max_unpool(values, indices, x.shape[-1 - len(window) : -1])
    assert unpooled.shape == x.shape
    kept = ref.np_scatter_to_plane(x.shape, len(window), indices, np.ones(values.shape)) > 0
    np.testing.assert_array_equal(unpooled, np.where(kept, x, 0))


def test_max_unpool_traced_out_of_range_indices_are_dropped():
    values = jnp.array([[1.0, 2.0, 3.0]]).T  # (3, 1): one spatial dim of 3 windows
    indices = jnp.array([[0, 7, -1]]).T
    out, vjp = jax.vjp(
        lambda v: jax.jit(jaxrelax.max_unpool, static_argnums=2)(v, indices, (4,)), values
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
                *jaxrelax.max_pool(x, window, strides, padding, return_indices=True), (7, 6)
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


def test_every_offset_can_win(x64):
    # one window of each size: a spike at each offset in turn is found at its plane index
    for window in [(3,), (2, 3), (2, 2, 3)]:
        for offset in itertools.product(*map(range, window)):
            x = np.zeros((*window, 1))
            x[(*offset, 0)] = 1.0
            _, index = jaxrelax.max_pool(x, window, return_indices=True)
            assert index.reshape(()) == np.ravel_multi_index(offset, window)


@pytest.mark.parametrize("shape", [(0, 5, 4, 3), (2, 5, 4, 0)], ids=["no-batch", "no-features"])
def test_empty_batch_or_features(shape):
    x = jnp.ones(shape)
    for fn in (jaxrelax.max_pool, jaxrelax.soft_pool, jaxrelax.lse_pool, jaxrelax.st_max_pool):
        out = fn(x, (3, 3), (2, 2), "SAME")
        assert out.shape == (shape[0], 3, 2, shape[-1])
        assert jax.grad(lambda x, fn=fn: fn(x, (3, 3), (2, 2), "SAME").sum())(x).shape == shape
    values, indices = jaxrelax.max_pool(x, (2, 2), (2, 2), return_indices=True)
    assert jaxrelax.max_unpool(values, indices, (5, 4)).shape == shape
