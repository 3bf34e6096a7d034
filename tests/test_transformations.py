"""Every public function under jit, vmap, grad and grad-of-grad, over axes, batch shapes and
dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrelax


def _tempered(fn, **options):
    return lambda x, axis, t: fn(x, axis, temperature=t, **options)


# name -> (function of (x, axis, temperature), whether it takes a tuple axis, whether smooth)
FUNCTIONS = {
    "hardmax": (lambda x, axis, t: jaxrelax.hardmax(x, axis), True, False),
    "hardmax_uniform": (lambda x, axis, t: jaxrelax.hardmax(x, axis, ties="uniform"), True, False),
    "softmax": (_tempered(jaxrelax.softmax), True, True),
    "smooth_max": (_tempered(jaxrelax.smooth_max), True, True),
    "smooth_max_softmax": (_tempered(jaxrelax.smooth_max, method="softmax"), True, True),
    "soft_argmax": (_tempered(jaxrelax.soft_argmax), False, True),
    "st_hardmax": (_tempered(jaxrelax.st_hardmax), True, False),
    "st_hardmax_identity": (_tempered(jaxrelax.st_hardmax, backward="identity"), True, False),
    "st_argmax": (_tempered(jaxrelax.st_argmax), False, False),
    "st_max": (_tempered(jaxrelax.st_max), True, False),
    "sparsemax": (_tempered(jaxrelax.sparsemax), True, False),
    "entmax15": (_tempered(jaxrelax.entmax15), True, False),
    "entmax_alpha": (
        lambda x, axis, t: jaxrelax.entmax(x, 1.3, axis, temperature=t),
        True,
        False,
    ),
    "spatial_soft_argmax": (
        lambda x, axis, t: jaxrelax.spatial_soft_argmax(x, temperature=t),
        None,
        True,
    ),
    "topk_mask": (lambda x, axis, t: jaxrelax.topk_mask(x, 2, axis), True, False),
    "topk_mask_uniform": (
        lambda x, axis, t: jaxrelax.topk_mask(x, 2, axis, ties="uniform"),
        True,
        False,
    ),
    "soft_topk": (lambda x, axis, t: jaxrelax.soft_topk(x, 2.5, axis, temperature=t), True, True),
    "sparse_topk": (
        lambda x, axis, t: jaxrelax.sparse_topk(x, 2, axis, temperature=t),
        True,
        False,
    ),
    "st_topk": (_tempered(lambda x, axis, **kw: jaxrelax.st_topk(x, 2, axis, **kw)), True, False),
    "st_topk_sparse": (
        _tempered(lambda x, axis, **kw: jaxrelax.st_topk(x, 2, axis, backward="sparse", **kw)),
        True,
        False,
    ),
    "gumbel_topk": (
        lambda x, axis, t: jaxrelax.gumbel_topk(jax.random.key(0), x, 2, axis, temperature=t),
        True,
        True,
    ),
    "gumbel_topk_hard": (
        lambda x, axis, t: jaxrelax.gumbel_topk(
            jax.random.key(0), x, 2, axis, temperature=t, hard=True
        ),
        True,
        False,
    ),
}
AXES = [-1, 0, (0, 2)]


def _cases():
    for name, (_, tuple_ok, _) in FUNCTIONS.items():
        axes = AXES if tuple_ok is not None else [None]
        if "topk" in name:  # compile-heavy: a tuple of axes (test_topk.py has the others)
            axes = [(0, 2)]
        for axis in axes:
            if isinstance(axis, tuple) and not tuple_ok:
                continue
            yield pytest.param(name, axis, id=f"{name}-{axis}")


def _scalar(fn, axis, weights):
    return lambda x, t: jnp.sum(fn(x, axis, t).astype(jnp.float32) * weights)


@pytest.mark.parametrize("name, axis", list(_cases()))
def test_jit_vmap_grad(name, axis, rng):
    fn, _, smooth = FUNCTIONS[name]
    x = jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32)
    t = jnp.float32(0.8)
    eager = fn(x, axis, t)
    np.testing.assert_allclose(
        jax.jit(fn, static_argnums=1)(x, axis, t), eager, rtol=1e-6, atol=1e-6
    )
    # vmap over a new leading axis, of x and of a traced temperature
    batch = jnp.stack([x, 2 * x])
    temps = jnp.array([0.8, 1.7], jnp.float32)
    batched_axis = tuple(a % 3 for a in axis) if isinstance(axis, tuple) else axis
    mapped = jax.vmap(lambda x, t: fn(x, batched_axis, t))(batch, temps)
    for i in range(2):
        np.testing.assert_allclose(
            mapped[i], fn(batch[i], batched_axis, temps[i]), rtol=1e-6, atol=1e-6
        )
    # grad with respect to x and temperature, jitted and not
    weights = jnp.asarray(rng.normal(size=eager.shape), jnp.float32)
    loss = _scalar(fn, axis, weights)
    gx, gt = jax.grad(loss, argnums=(0, 1))(x, t)
    jx, jt = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, t)
    assert jnp.isfinite(gx).all() and jnp.isfinite(gt)
    np.testing.assert_allclose(jx, gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jt, gt, rtol=1e-5, atol=1e-6)
    # grad-of-grad: d/dt of the x-gradient, through the custom rules
    second = jax.grad(lambda t: jnp.sum(jax.grad(loss)(x, t) * weights.sum()))(t)
    assert jnp.isfinite(second)
    if name.startswith(("hardmax", "topk_mask")):
        assert (gx == 0).all() and gt == 0


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.float64])
@pytest.mark.parametrize("name", FUNCTIONS)
def test_dtypes(name, dtype, rng):
    fn = FUNCTIONS[name][0]
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.asarray(rng.normal(size=(2, 3, 4)), dtype)
        out = fn(x, -1, 0.5)
        assert out.dtype == dtype
        g = jax.grad(lambda x: fn(x, -1, 0.5).astype(jnp.float32).sum())(x)
        assert g.dtype == dtype and jnp.isfinite(g.astype(jnp.float32)).all()
        if name.startswith("gumbel") and dtype == jnp.float64:
            return  # the noise is drawn in the logits' dtype
        ref = fn(x.astype(jnp.float32), -1, 0.5)  # bf16 is computed in float32 and rounded once
        # (float64 against float32: the top-k thresholds hold float32's rounding, eps * n)
        atol = 1e-6 if "topk" in name and dtype == jnp.float64 else 1e-7
        np.testing.assert_allclose(
            out.astype(jnp.float32), ref.astype(dtype).astype(jnp.float32), rtol=1e-6, atol=atol
        )


@pytest.mark.parametrize("shape", [(7,), (2, 7), (2, 3, 1, 7)])
def test_batch_shapes(shape, rng):
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    flat = x.reshape(-1, 7)
    for name, (fn, _, _) in FUNCTIONS.items():
        if name == "spatial_soft_argmax" or name.startswith(("st_topk", "gumbel_topk")):
            continue  # (the top-k estimators reuse the rules of topk_mask and soft_topk)
        np.testing.assert_allclose(
            fn(x, -1, 0.5).reshape(flat.shape[0], -1),
            fn(flat, -1, 0.5).reshape(flat.shape[0], -1),
            rtol=1e-6,
        )


@pytest.mark.parametrize("name", [n for n, v in FUNCTIONS.items() if v[2]])
def test_hessian_of_smooth_functions(name, x64, rng):
    fn = FUNCTIONS[name][0]
    x = jnp.asarray(rng.normal(size=(2, 6)))
    weights = jnp.asarray(rng.normal(size=fn(x, -1, 0.5).shape))
    loss = lambda x: jnp.sum(fn(x, -1, 0.5) * weights)  # noqa: E731
    hessian = jax.hessian(loss)(x)
    assert hessian.shape == (2, 6, 2, 6)
    np.testing.assert_allclose(hessian, hessian.transpose(2, 3, 0, 1), atol=1e-12)  # symmetric
    # against finite differences of the gradient
    eps = 1e-6
    direction = jnp.asarray(rng.normal(size=x.shape))
    fd = (jax.grad(loss)(x + eps * direction) - jax.grad(loss)(x - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(jnp.tensordot(hessian, direction, 2), fd, rtol=1e-6, atol=1e-8)


def test_traced_temperature_is_not_checked_under_jit():
    # A traced temperature cannot be checked: a negative one gives NaN, not a plausible
    # distribution (and 0 the limit t -> 0).
    x = jnp.array([1.0, 2.0, 0.5])
    np.testing.assert_array_equal(
        jax.jit(lambda t: jaxrelax.softmax(x, temperature=t))(0.0), [0, 1, 0]
    )
    for t in [-1.0, -1e-30]:
        assert np.isnan(jax.jit(lambda t: jaxrelax.softmax(x, temperature=t))(t)).all()
        assert np.isnan(jax.jit(lambda t: jaxrelax.sparsemax(x, temperature=t))(t)).all()


@pytest.mark.parametrize(
    "name", [n for n in FUNCTIONS if n != "spatial_soft_argmax" and "topk" not in n]
)
def test_empty_slices(name):  # (top-k: k = 0 on empty slices, in test_fuzz_topk.py)
    fn, _, _ = FUNCTIONS[name]
    x = jnp.zeros((3, 0))
    out = fn(x, -1, 0.5)
    reduced = out.shape == (3,)
    if reduced:  # an empty maximum is -inf, an empty expected index 0
        expected = 0.0 if "argmax" in name else -np.inf
        np.testing.assert_array_equal(out, np.full(3, expected))
    else:
        assert out.shape == (3, 0)
    # and the backward pass runs (an empty min-reduction used to raise)
    jax.grad(lambda x: jnp.sum(jnp.where(jnp.isfinite(fn(x, -1, 0.5)), 0.0, 1.0)))(x)
