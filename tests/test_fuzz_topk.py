"""Property-based fuzzing of the top-k family (topk_mask, soft_topk, sparse_topk, st_topk,
gumbel_topk: the entries of tests/registry.py that name these tests) against the float64
oracles of reference.py, on the configuration pool, value strategies and assertions of
fuzz_helpers.py (see test_fuzz.py's docstring for the semantics checked).

``k`` is a Python int for the hard, straight-through and sampled functions, fixed per
configuration (it picks the compiled program: 0, 1, 2, half the slice, the whole slice,
cycling through the pool) and for the relaxations also drawn per slice (an array of values
in ``[0, n]``, halves included). Beyond test_fuzz.py's checks: the relaxations lie in
[0, 1] and sum to ``min(k, entries taking part)``; ``+inf`` entries take a unit each before
the finite ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from fuzz_helpers import (
    FLUSH_DEPENDENT,
    GRAD_TOL,
    POOL,
    SAMPLER_POOL,
    SPARSE_TOL,
    TOL,
    assert_exact,
    assert_forward,
    assert_param_grad,
    assert_subset,
    assert_values,
    assert_x_grad,
    cases,
    collect,
    events,
    fuzzed_names,
    hard_oracles,
    params,
    random_cotangent,
    slice_max_abs,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import NAN_SLICE

import jaxrelax

FUNCTIONS = fuzzed_names(
    "test_fuzz_topk.py::test_topk",
    # k an int, or one per slice
    soft_topk=["soft_topk", "soft_topk_per_slice"],
    sparse_topk=["sparse_topk", "sparse_topk_per_slice"],
)
SAMPLERS = fuzzed_names("test_fuzz_topk.py::test_gumbel_topk")


def _k(config):
    """The int k of a configuration: 0, 1, 2, half or all of the slice, by its place in the
    pool."""
    size = int(np.prod([config.shape[a] for a in _axes(config)]))
    index = (POOL + SAMPLER_POOL).index(config)
    return min([size // 2, 1, size, 0, 2][index % 5], size)


def _axes(config):
    ndim = len(config.shape)
    if config.axis is None:
        return tuple(range(ndim))
    return tuple(sorted(a % ndim for a in np.atleast_1d(config.axis)))


def _k_slices(draw, case):
    """One k per slice, in [0, n]."""
    values = st.sampled_from(sorted({0.0, 0.5, 1.0, 1.5, case.size / 2, case.size - 0.5}))
    values = values.map(lambda v: min(max(v, 0.0), float(case.size)))
    k = draw(arrays(np.float64, case.keep_shape, elements=values))
    return np.asarray(k, case.compute)


_PROGRAMS = {}


def _program(family, config, is_float):
    if (family, config) not in _PROGRAMS:
        _PROGRAMS[family, config] = {}
    return _PROGRAMS[family, config]


def _run(family, case, builder, *args):
    events(case)
    cache = _program(family, case.config, case.is_float)
    with case.context():
        if "compiled" not in cache:
            errors = {}
            program = functools.partial(builder, config=case.config, errors=errors)
            program = functools.partial(program, is_float=case.is_float)
            compiled = jax.jit(program).lower(*args).compile()
            cache["compiled"], cache["errors"] = compiled, errors
        return jax.device_get(cache["compiled"](*args)), cache["errors"]


def _deterministic(x, t, where, g, k_slices, *, config, is_float, errors):
    axis, k = config.axis, _k(config)

    def relaxed(fn, x, t, k):
        return fn(x, k, axis, temperature=t, where=where)

    def st(x, t, backward):
        return jaxrelax.st_topk(x, k, axis, temperature=t, where=where, backward=backward)

    functions = {
        "topk_mask": (lambda x, t: jaxrelax.topk_mask(x, k, axis, where=where), (x, t), g),
        "topk_mask_uniform": (
            lambda x, t: jaxrelax.topk_mask(x, k, axis, where=where, ties="uniform"),
            (x, t),
            g,
        ),
        "soft_topk": (lambda x, t: relaxed(jaxrelax.soft_topk, x, t, k), (x, t), g),
        "soft_topk_per_slice": (
            functools.partial(relaxed, jaxrelax.soft_topk),
            (x, t, k_slices),
            g,
        ),
        "sparse_topk": (lambda x, t: relaxed(jaxrelax.sparse_topk, x, t, k), (x, t), g),
        "sparse_topk_per_slice": (
            functools.partial(relaxed, jaxrelax.sparse_topk),
            (x, t, k_slices),
            g,
        ),
        "st_topk": (functools.partial(st, backward="soft"), (x, t), g),
        "st_topk_sparse": (functools.partial(st, backward="sparse"), (x, t), g),
        "st_topk_identity": (functools.partial(st, backward="identity"), (x, t), g),
    }
    return collect(functions, is_float, errors)


def _results(name, case, builder, *args):
    results, errors = _run(builder.__name__, case, builder, *args)
    if name in errors:
        raise errors[name]
    return results[name]


def _kind(name):
    return "sparse" if "sparse" in name else "soft"


def _assert_relaxed(value, case, k):
    """In [0, 1] (NaN slices aside), summing to min(k, entries taking part) per slice (exactly,
    to the rounding of the output: the oracle's own sum can be further off, its threshold
    found by bisection among scores of 1e6 or more)."""
    value = np.asarray(value, np.float64)
    kinds = case.per_element(case.kinds)
    live = kinds != NAN_SLICE
    assert ((value[live] >= 0) & (value[live] <= 1)).all(), f"outside [0, 1]: {value} {case}"
    if case.size:
        sums = np.sum(np.where(live, value, 0), axis=case.axes)
        want_sums = np.minimum(case.per_slice(k), np.sum(case.valid, axis=case.axes))
        tol = 10 * float(jnp.finfo(case.out).eps) * max(1, case.size)
        ok = (case.kinds == NAN_SLICE) | (np.abs(sums - want_sums) <= tol * np.maximum(1, k))
        assert ok.all(), f"sums {sums}, expected {want_sums} for {case}"


def _check_relaxed_grads(name, case, p, g, grads, k):
    """Against the closed-form VJP of the oracle's output (soft), or of the library's own
    output for sparse_topk, whose free set {0 < p < 1} is decided by rounding at the
    breakpoints."""
    kind = _kind(name)
    tol = GRAD_TOL[case.out_name]
    t = case.slice_t()
    t_keep = np.expand_dims(t, case.axes)
    g_max = slice_max_abs(case, g)
    dx, dk, dt = ref.np_relaxed_topk_vjp(p, g, k, case.axes, t_keep, kind)
    dt = dt if np.ndim(dt) else np.full(case.slice_shape, dt)
    s, z = ref.relaxed_topk_slope(p, kind)
    spread = np.sum(np.where(case.valid, s * (1 + np.abs(z)), 0), axis=case.axes)
    # Where the slope's total is at the rounding of p (every p within ulps of 0 or 1), the
    # gradient is decided by that rounding (0 / 0 in the limit): it is not compared.
    rounded = np.sum(np.where(case.valid, s, 0), axis=case.axes) < 1e3 * np.finfo(case.compute).eps
    assert_x_grad(grads[0], dx, case, g_max / t, tol, skip=rounded)
    scale = g_max / t * (1 + spread)
    assert_param_grad(grads[1], dt, case, scale, tol, case.t_array, "dt", skip=rounded)
    if len(grads) > 2:
        assert_param_grad(grads[2], dk, case, g_max, tol, k, "dk", skip=rounded)


# Library bugs the suite found (reported; strict xfails, see params).
TOPK_BUGS = {
    "topk_mask_uniform-float32-4x5-axis-1-maskfull-tslice": (
        "topk_mask ties subnormal scores with 0 (XLA's CPU backend flushes them) but not the "
        "smallest normal, 1.2e-38, unlike hardmax, whose docstring ties scores below 4 tiny "
        "with 0; topk_mask's docstring says neither: neither oracle (x, or x with scores "
        "below 4 tiny flushed) matches" + FLUSH_DEPENDENT
    ),
}


@pytest.mark.parametrize("name, config", params(FUNCTIONS, POOL, known_failures=TOPK_BUGS))
@given(data=st.data())
def test_topk(name, config, data):
    case = data.draw(cases(config, name), label="case")
    k_slices = _k_slices(data.draw, case)
    g = random_cotangent(case, case.x.shape)
    value, *rest = _results(
        name, case, _deterministic, case.x, case.t_array, case.where, g, k_slices
    )
    k = k_slices if name.endswith("per_slice") else _k(config)
    hard = name.startswith(("topk_mask", "st_topk"))
    if hard:
        ties = "uniform" if name.endswith("uniform") else "first"
        oracles = hard_oracles(case, lambda x: ref.np_topk_mask(x, k, case.axis, case.where, ties))
        assert_exact(value, oracles, case)
    else:
        want = ref.np_relaxed_topk(
            case.xc, k, case.axis, case.t, case.where, _kind(name), case.compute
        )
        assert_values(value, want, case, SPARSE_TOL[case.out_name])
        _assert_relaxed(value, case, k)
    if not case.is_float:
        return
    forward, grads = rest
    assert_forward(value, forward, case, hard, TOL[case.out_name])
    if name.startswith("topk_mask"):
        assert_x_grad(grads[0], np.zeros(case.x.shape), case, 0 * slice_max_abs(case, g), 0)
        return
    if name == "st_topk_identity":
        want = np.where(case.valid, g.astype(np.float64), 0)
        assert_x_grad(grads[0], want, case, 0 * slice_max_abs(case, g), 0)
        return
    kind = "sparse" if name == "st_topk_sparse" else _kind(name)
    if kind == "sparse":
        p = np.asarray(value if not hard else _library(case, k, kind), np.float64)
    else:
        p = ref.np_relaxed_topk(case.xc, k, case.axis, case.t, case.where, "soft", case.compute)
    _check_relaxed_grads(kind if hard else name, case, p, g, grads, k)


def _library(case, k, kind):
    """The relaxation's output as the library computes it (for st_topk's backward pass)."""
    with case.context():
        return _relaxed(case.x, case.t_array, case.where, k=k, axis=case.axis, kind=kind)


@functools.partial(jax.jit, static_argnames=("k", "axis", "kind"))
def _relaxed(x, t, where, *, k, axis, kind):
    """Compiled once per configuration, as the fuzzed programs are (op by op, its threshold
    solver's loops compile again at every call)."""
    fn = jaxrelax.sparse_topk if kind == "sparse" else jaxrelax.soft_topk
    return fn(x, k, axis, temperature=t, where=where)


# --- gumbel_topk ---


def _samplers(key, x, t, where, g, *, config, is_float, errors):
    axis, k = config.axis, _k(config)
    compute = x.dtype if x.dtype == jnp.float64 else jnp.float32

    def sample(x, t, hard):
        return jaxrelax.gumbel_topk(key, x, k, axis, temperature=t, hard=hard, where=where)

    functions = {
        "gumbel_topk": (functools.partial(sample, hard=False), (x, t), g),
        "gumbel_topk_hard": (functools.partial(sample, hard=True), (x, t), g),
    }
    return collect(functions, is_float, errors), jax.random.gumbel(key, x.shape, compute)


# Library bugs the suite found (reported; strict xfails, see params).
SAMPLER_BUGS = {
    "gumbel_topk-float64-4x5-axis-1-maskfull-tslice": (
        "gumbel_topk takes fewer than min(k, classes left) classes where finite logits are "
        "more than finfo.max apart: the logits less the slice's finite maximum overflow to "
        "-inf (gumbel_topk(key, [-max, -max, max], 2) is [0, 0, 1], hard or not)"
    ),
}


@pytest.mark.parametrize(
    "name, config", params(SAMPLERS, SAMPLER_POOL, known_failures=SAMPLER_BUGS)
)
@given(data=st.data())
def test_gumbel_topk(name, config, data):
    case = data.draw(cases(config, name), label="case")
    g = random_cotangent(case, case.x.shape)
    with case.context():
        key = jax.random.key(case.seed)
    (results, noise), errors = _run(
        "samplers", case, _samplers, key, case.x, case.t_array, case.where, g
    )
    if name in errors:
        raise errors[name]
    value, forward, grads = results[name]
    k = _k(config)
    perturbed = _perturbed(case, np.asarray(noise), k)
    hard = name.endswith("hard")
    soft = ref.np_relaxed_topk(perturbed, k, case.axis, case.t, case.where, "soft", case.compute)
    if hard:
        assert_subset(value, perturbed, case, k)
    else:
        assert_values(value, soft, case, SPARSE_TOL[case.out_name])
        _assert_relaxed(value, case, k)
    assert_forward(value, forward, case, hard, TOL[case.out_name])
    _check_relaxed_grads("soft", case, soft, g, grads, k)


def _perturbed(case, noise, k):
    """The perturbed logits as the library forms them, in the compute dtype: the logits less
    the maximum of their finite entries plus the noise, +inf logits kept (drawn first); in a
    slice with more than k +inf logits, those are the noise alone and all others -inf."""
    x = case.xc
    compute = case.compute
    with np.errstate(all="ignore"):
        mask = case.mask
        top = mask & np.isposinf(x)
        finite = mask & ~top & ~np.isneginf(x)
        m = np.max(np.where(finite, x, -np.inf), axis=case.axes, keepdims=True, initial=-np.inf)
        m = np.where(np.isfinite(m), m, 0).astype(compute)
        shifted = np.where(finite | np.isnan(x), (x - m).astype(compute), -np.inf)
        shifted = np.where(top, np.inf, np.where(mask, shifted, -np.inf))
        many = np.sum(top, axis=case.axes, keepdims=True) > k
        limit = np.where(many, np.where(top, 0, -np.inf), shifted).astype(compute)
        return (limit + noise.astype(compute)).astype(np.float64)
