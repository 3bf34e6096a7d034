"""Property-based fuzzing of the perturbed optimizers (perturbed_argmax, perturbed_topk,
perturbed_max, perturbed_fy_loss and perturbed over hardmax: the entries of tests/registry.py
that name test_perturbed) with the configurations and value strategy of fuzz_helpers.py
(+-inf, NaN, 1e30, finfo.max, subnormals, exact ties, masks with every entry or all but one
masked, size-0 and size-1 slices, tuple axes, axis=None), its temperatures drawn as sigma
(1e-6 to 1e20, and finfo.tiny; a scalar or one per slice).

The values are random, so the oracle is the documented semantics, example by example:

- perturbed_argmax: multiples of 1/num_samples in [0, 1], summing to 1 per slice (0 for an
  empty slice); masked and -inf entries 0; in a slice holding +inf only the +inf entries win;
  its VJP zero at masked and -inf entries and everywhere in a slice holding +inf;
- perturbed_topk: sums min(k, number of competing entries); masked and -inf entries 0;
- perturbed_max: -inf for an empty slice, +inf for one holding +inf; its gradient the
  cotangent times perturbed_argmax with the same key;
- perturbed_fy_loss: 0 for an empty slice; its gradient perturbed_argmax - labels, 0 at masked
  and -inf entries;
- perturbed(hardmax): the VJP zero at infinite entries; NaN anywhere in its output makes its
  whole VJP NaN (its estimate pairs the cotangent with the whole output);
- every slice holding an unmasked NaN is NaN, values and gradients, and no other value or
  gradient is NaN; outputs in the input's float dtype (float32 for integers), gradients in
  the input's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from fuzz_helpers import POOL, cases, config_id, fuzzed_names
from hypothesis import given
from hypothesis import strategies as st

import jaxrelax

NUM_SAMPLES = 4
FUZZED = fuzzed_names("test_fuzz_perturbed.py::test_perturbed")
PERTURBED_POOL = [
    c for c in POOL if c.dtype in ("float32", "bfloat16", "float16", "float64", "int32")
][:10] + [c for c in POOL if c.shape == (0, 4)]

_PROGRAMS = {}


def _program(config, shapes):
    """Every function, its value and VJP, for one configuration, compiled once."""
    key = (config, shapes)
    if key not in _PROGRAMS:
        axis = config.axis

        def run(seed, x, sigma, where, labels, g, g_slices):
            rng_key = jax.random.key(seed)
            kwargs = dict(num_samples=NUM_SAMPLES, sigma=sigma, where=where)
            if not jnp.issubdtype(x.dtype, jnp.floating):
                x = x.astype(jnp.float32)
            k = min(2, int(np.prod([x.shape[a] for a in _axes(config, x.ndim)])))
            functions = {  # registry id: (output name, function, cotangent)
                "perturbed_argmax": (
                    "argmax",
                    lambda x: jaxrelax.perturbed_argmax(rng_key, x, axis, **kwargs),
                    g,
                ),
                "perturbed_topk": (
                    "topk",
                    lambda x: jaxrelax.perturbed_topk(rng_key, x, k, axis, **kwargs),
                    g,
                ),
                "perturbed_max": (
                    "max",
                    lambda x: jaxrelax.perturbed_max(rng_key, x, axis, **kwargs),
                    g_slices,
                ),
                "perturbed_fy_loss": (
                    "loss",
                    lambda x: jaxrelax.perturbed_fy_loss(rng_key, x, labels, axis, **kwargs),
                    g_slices,
                ),
                "perturbed": (
                    "generic",
                    lambda x: jaxrelax.perturbed(
                        lambda y: jaxrelax.hardmax(y, axis, where=where),
                        num_samples=NUM_SAMPLES,
                        sigma=sigma,
                    )(rng_key, x),
                    g,
                ),
            }
            out = {}
            for id_ in FUZZED:  # (a KeyError: a registry entry this program does not build)
                name, fn, cotangent = functions[id_]
                value, vjp = jax.vjp(fn, x)
                out[name] = value
                out[f"{name}_dx"] = vjp(cotangent.astype(value.dtype))[0]
            return out

        _PROGRAMS[key] = run
    return _PROGRAMS[key]


def _axes(config, ndim):
    if config.axis is None:
        return tuple(range(ndim))
    return tuple(sorted(a % ndim for a in np.atleast_1d(config.axis)))


def _compiled(config, args):
    shapes = tuple(None if a is None else (np.shape(a), np.asarray(a).dtype) for a in args)
    key = ("compiled", config, shapes)
    if key not in _PROGRAMS:
        lowered = jax.jit(_program(config, shapes)).lower(*args)
        _PROGRAMS[key] = lowered.compile()
    return _PROGRAMS[key]


@pytest.mark.parametrize("config", PERTURBED_POOL, ids=config_id)
@given(data=st.data())
def test_perturbed(config, data):
    case = data.draw(cases(config, "perturbed"))
    with case.context():
        _check(case)


def _check(case):
    rng = np.random.default_rng(case.seed)
    kinds = np.expand_dims(ref.slice_kinds(case.xc, case.axes, case.where), case.axes)
    kinds = np.broadcast_to(kinds, case.x.shape)
    valid = case.valid
    nan_slice, empty, posinf = kinds == ref.NAN_SLICE, kinds == ref.EMPTY, kinds == ref.POSINF
    # labels: one valid entry per slice where there is one
    scores = np.where(valid, rng.random(case.x.shape), -1)
    labels = np.zeros(case.x.shape, case.compute)
    if case.x.size:
        best = np.max(scores, case.axes, keepdims=True)
        labels = ((scores == best) & valid).astype(case.compute)
    g = rng.normal(size=case.x.shape).astype(case.compute)
    g_slices = rng.normal(size=case.slice_shape).astype(case.compute)
    sigma = np.asarray(case.t, case.compute)
    args = (case.seed, case.x, sigma, case.where, labels, g, g_slices)
    out = {k: np.asarray(v) for k, v in _compiled(case.config, args)(*args).items()}
    for name, value in out.items():
        assert value.dtype == case.out, (name, value.dtype, case.out)
        v = value.astype(np.float64)
        per_element = v.shape == case.x.shape
        where_nan = nan_slice if per_element else _slices(nan_slice, case)
        if name == "generic_dx":  # perturbed pairs the cotangent with the whole output
            where_nan = np.broadcast_to(np.any(nan_slice), v.shape)
        assert not np.isnan(v[~where_nan]).any(), (name, v, case)
        assert np.isnan(v[where_nan]).all(), (name, v, case)
    ok = ~nan_slice
    argmax = out["argmax"].astype(np.float64)
    assert np.all((argmax[ok] >= 0) & (argmax[ok] <= 1))
    np.testing.assert_allclose(argmax[ok] * NUM_SAMPLES, np.round(argmax[ok] * NUM_SAMPLES))
    assert np.all(argmax[ok & ~valid] == 0)
    assert np.all(argmax[ok & posinf & ~np.isposinf(case.xc)] == 0)
    sums = np.sum(np.where(ok, argmax, 0), case.axes, keepdims=True)
    slice_ok = _slices(ok, case, keepdims=True)
    slice_empty = _slices(empty, case, keepdims=True)
    np.testing.assert_allclose(sums[slice_ok], np.where(slice_empty, 0, 1)[slice_ok], atol=1e-2)
    for name in ["argmax_dx", "topk_dx", "loss_dx", "max_dx"]:
        assert np.all(out[name][ok & ~valid] == 0), (name, case)
    assert np.all(out["argmax_dx"][ok & posinf] == 0)
    if not nan_slice.any():
        assert np.all(out["generic_dx"][np.isinf(case.xc)] == 0)
    topk = out["topk"].astype(np.float64)
    k = min(2, case.size)
    competing = np.sum(valid, case.axes, keepdims=True)
    np.testing.assert_allclose(
        np.sum(np.where(ok, topk, 0), case.axes, keepdims=True)[slice_ok],
        np.minimum(k, competing)[slice_ok],
        atol=2e-2,
    )
    assert np.all(topk[ok & ~valid] == 0)
    maximum = np.expand_dims(out["max"].astype(np.float64), case.axes)
    assert np.all(maximum[slice_empty & slice_ok] == -np.inf)
    assert np.all(maximum[_slices(posinf, case, keepdims=True)] == np.inf)
    half = case.out.itemsize == 2
    tol = 1e-2 if half else 1e-5
    slope = np.expand_dims(g_slices, case.axes) * out["argmax"].astype(np.float64)
    np.testing.assert_allclose(out["max_dx"][ok].astype(np.float64), slope[ok], rtol=tol, atol=tol)
    loss = np.expand_dims(out["loss"].astype(np.float64), case.axes)
    assert np.all(loss[slice_empty & slice_ok] == 0)
    want = np.expand_dims(g_slices, case.axes) * (out["argmax"].astype(np.float64) - labels)
    np.testing.assert_allclose(out["loss_dx"][ok].astype(np.float64), want[ok], rtol=tol, atol=tol)


def _slices(per_element, case, keepdims=False):
    """Per slice: whether any entry of the slice is set (all entries agree here)."""
    if not case.axes:
        return per_element
    return np.any(per_element, case.axes, keepdims=keepdims)
