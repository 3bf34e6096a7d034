"""Every function of tests/registry.py (variants included) under jit, vmap, grad and
grad-of-grad, over axes, batch shapes and dtypes.

Each function is called as the registry's standard call: on slices of a (3, 4, 5) array
over several axes, on (3, 4, 5) heatmaps, entry by entry, or on (2, 5, 4, 3) images for
pooling. Where an entry has no temperature, its "temperature" below is an unused argument
(with gradient 0).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import registry
from registry import ENTRIES

AXES = [-1, 0, (0, 2)]
NO_AXIS = ()  # (the call passes no axis)


def _shape(entry, slices=(3, 4, 5)):
    return (2, 5, 4, 3) if entry.input == registry.IMAGES else slices


def _function(entry):
    """The entry as f(x, axis, t): axis () for none, t an unused argument without a
    temperature."""

    def fn(x, axis, t):
        axes = () if axis == NO_AXIS else (axis,)
        if entry.temperature is None:
            return entry(x, *axes)
        return entry(x, *axes, temperature=t)

    return fn


def _axes(entry):
    if entry.axis is registry.NO_AXIS:
        return [NO_AXIS]
    if entry.k is not None:  # compile-heavy: a tuple of axes (test_topk.py has the others)
        return [(0, 2)]
    return AXES if entry.axis == registry.ANY_AXIS else [a for a in AXES if isinstance(a, int)]


def _cases():
    for name, entry in ENTRIES.items():
        for axis in _axes(entry):
            yield pytest.param(name, axis, id=f"{name}-{axis if axis != NO_AXIS else 'all'}")


def _scalar(fn, axis, weights):
    return lambda x, t: jnp.sum(fn(x, axis, t).astype(jnp.float32) * weights)


@pytest.mark.parametrize("name, axis", list(_cases()))
def test_jit_vmap_grad(name, axis, rng):
    entry = ENTRIES[name]
    fn = _function(entry)
    x = jnp.asarray(rng.normal(size=_shape(entry)), jnp.float32)
    t = jnp.float32(0.8)
    # eager: the value and the gradient with respect to x and temperature of
    # sum(fn(x, t) * weights) (the VJP of fn with cotangent weights)
    eager, vjp = jax.vjp(lambda x, t: fn(x, axis, t), x, t)
    weights = jnp.asarray(rng.normal(size=eager.shape), jnp.float32)
    gx, gt = vjp(weights.astype(eager.dtype))
    loss = _scalar(fn, axis, weights)
    # vmap over a new leading axis, of x and of a traced temperature
    batch = jnp.stack([x, 2 * x])
    temps = jnp.array([0.8, 1.7], jnp.float32)
    batched_axis = tuple(a % 3 for a in axis) if isinstance(axis, tuple) else axis

    # One program: the value; the vmapped value and the values it maps; the gradient with
    # respect to x and temperature; grad-of-grad (d/dt of the x-gradient, through the
    # custom rules).
    def program(x, t, batch, temps):
        mapped = jax.vmap(lambda x, t: fn(x, batched_axis, t))(batch, temps)
        one_by_one = [fn(batch[i], batched_axis, temps[i]) for i in range(2)]
        second = jax.grad(lambda t: jnp.sum(jax.grad(loss)(x, t) * weights.sum()))(t)
        return fn(x, axis, t), mapped, one_by_one, jax.grad(loss, argnums=(0, 1))(x, t), second

    jitted, mapped, one_by_one, (jx, jt), second = jax.jit(program)(x, t, batch, temps)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    for i in range(2):
        np.testing.assert_allclose(mapped[i], one_by_one[i], rtol=1e-6, atol=1e-6)
    # grad with respect to x and temperature, jitted and not
    assert jnp.isfinite(gx).all() and jnp.isfinite(gt)
    np.testing.assert_allclose(jx, gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jt, gt, rtol=1e-5, atol=1e-6)
    assert jnp.isfinite(second)
    if entry.gradient == registry.HARD:
        assert (gx == 0).all() and gt == 0


_VALUE_AND_GRAD = {}


def _value_and_grad(name):
    """The entry's value at axis -1 and temperature 0.5, and the gradient of its sum, jitted
    (one function per entry, so that each input dtype compiles once)."""
    if name not in _VALUE_AND_GRAD:
        entry = ENTRIES[name]
        fn = _function(entry)
        axis = -1 if entry.axis is not registry.NO_AXIS else NO_AXIS

        def value_and_grad(x):
            out = fn(x, axis, 0.5)
            return out, jax.grad(lambda x: fn(x, axis, 0.5).astype(jnp.float32).sum())(x)

        _VALUE_AND_GRAD[name] = jax.jit(value_and_grad)
    return _VALUE_AND_GRAD[name]


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", ENTRIES)
def test_dtypes(name, dtype, rng):
    entry = ENTRIES[name]
    value_and_grad = _value_and_grad(name)
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(rng.normal(size=_shape(entry, (2, 3, 4))), dtype)
        out, g = value_and_grad(x)
        assert out.dtype == dtype
        assert g.dtype == dtype and jnp.isfinite(g.astype(jnp.float32)).all()
        if entry.sampled and dtype == jnp.float64:
            return  # the noise is drawn in the input's dtype
        ref, _ = value_and_grad(x.astype(jnp.float32))  # bf16 is computed in float32, rounded once
        # (float64 against float32: the top-k thresholds hold float32's rounding, eps * n)
        atol = 1e-6 if entry.k is not None and dtype == jnp.float64 else 1e-7
        np.testing.assert_allclose(
            out.astype(jnp.float32), ref.astype(dtype).astype(jnp.float32), rtol=1e-6, atol=atol
        )


def _batch_shape_entries():
    """Functions of slices over an axis (a sampler draws its noise for the input's shape, so
    a reshaped input draws other noise)."""
    return [
        name
        for name, entry in ENTRIES.items()
        if entry.input == registry.SLICES
        and entry.axis is not registry.NO_AXIS
        and not entry.sampled
    ]


@pytest.mark.parametrize("name", _batch_shape_entries())
def test_batch_shapes(name, rng):
    fn = _function(ENTRIES[name])

    @jax.jit
    def program(x, flat):  # on x and on its rows
        return fn(x, -1, 0.5), fn(flat, -1, 0.5)

    # (One program per function and shape: one program for all functions made XLA's CPU
    # compiler crash once, in a worker that had compiled many others.)
    for shape in [(7,), (2, 7), (2, 3, 1, 7)]:
        x = jnp.asarray(rng.normal(size=shape), jnp.float32)
        flat = x.reshape(-1, 7)
        batched, rows = program(x, flat)
        np.testing.assert_allclose(
            batched.reshape(flat.shape[0], -1),
            rows.reshape(flat.shape[0], -1),
            rtol=1e-6,
            err_msg=name,
        )


@pytest.mark.parametrize("name", registry.select(gradient=registry.SMOOTH))
def test_hessian_of_smooth_functions(name, x64, rng):
    entry = ENTRIES[name]
    fn = _function(entry)
    axis = -1 if entry.axis is not registry.NO_AXIS else NO_AXIS
    shape = (1, 4, 3, 1) if entry.input == registry.IMAGES else (2, 6)
    x = jnp.asarray(rng.normal(size=shape))
    weights = jnp.asarray(rng.normal(size=jax.eval_shape(lambda x: fn(x, axis, 0.5), x).shape))
    loss = lambda x: jnp.sum(fn(x, axis, 0.5) * weights)  # noqa: E731
    hessian = jax.jit(jax.hessian(loss))(x)
    assert hessian.shape == shape + shape
    n = len(shape)
    transposed = hessian.transpose(*range(n, 2 * n), *range(n))
    np.testing.assert_allclose(hessian, transposed, atol=1e-12)  # symmetric
    # against finite differences of the gradient
    eps = 1e-6
    direction = jnp.asarray(rng.normal(size=x.shape))
    grad = jax.jit(jax.grad(loss))
    fd = (grad(x + eps * direction) - grad(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.tensordot(hessian, direction, n), fd, rtol=1e-6, atol=1e-8)


def test_traced_temperature_is_not_checked_under_jit():
    # A traced temperature cannot be checked: a negative one gives NaN, not a plausible
    # distribution (and 0 the limit t -> 0).
    x = jnp.array([1.0, 2.0, 0.5])
    softmax, sparsemax = ENTRIES["softmax"], ENTRIES["sparsemax"]
    np.testing.assert_array_equal(jax.jit(lambda t: softmax(x, temperature=t))(0.0), [0, 1, 0])
    for t in [-1.0, -1e-30]:
        assert np.isnan(jax.jit(lambda t: softmax(x, temperature=t))(t)).all()
        assert np.isnan(jax.jit(lambda t: sparsemax(x, temperature=t))(t)).all()


def _empty_slice_entries():
    """Functions of slices (a k-of-n function needs k = 0 on empty slices: in
    test_fuzz_topk.py)."""
    return [
        name
        for name, entry in ENTRIES.items()
        if entry.input in (registry.SLICES, registry.ELEMENTWISE) and entry.k is None
    ]


@pytest.mark.parametrize("name", _empty_slice_entries())
def test_empty_slices(name):
    entry = ENTRIES[name]
    fn = _function(entry)
    axis = -1 if entry.axis is not registry.NO_AXIS else NO_AXIS
    x = jnp.zeros((3, 0))
    out = fn(x, axis, 0.5)
    if entry.reduces:  # an empty maximum is -inf, an empty expected index 0, ...
        np.testing.assert_array_equal(out, np.full(3, entry.empty))
    else:
        assert out.shape == (3, 0)
    # and the backward pass runs (an empty min-reduction used to raise)
    jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(fn(x, axis, 0.5)), 0.0, 1.0)))(x)
