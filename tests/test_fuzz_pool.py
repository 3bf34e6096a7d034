"""Property-based fuzzing of the pooling functions (max_pool, max_unpool, soft_pool, lse_pool,
st_max_pool: the entries of tests/registry.py that name test_pooling) against the float64
window oracles of reference.py, with the value strategy of fuzz_helpers.py (+-inf, NaN, 1e30,
finfo.max, subnormals, exact ties) and its temperatures.

Each configuration (shape, window, strides, padding, window dilation, dtype, temperature
shape) compiles one program computing every function, its VJP and max_unpool of max_pool's
indices. The semantics checked, example by example:

- max_pool: the values and indices of the oracle exactly (the first maximum in the window's
  row-major order; NaN windows give NaN and their last NaN; windows of -inf entries their
  first real entry), its VJP the cotangents added at the indices; with tiny scores flushed
  to zero as XLA's CPU backend may do, either oracle is right;
- soft_pool and lse_pool: the oracle's values to a tolerance relative to each window's
  largest finite magnitude, infinities and NaN exactly; the VJPs (x and temperature) NaN-free
  outside NaN windows and close to the closed forms, relative to the cotangent;
- st_max_pool: max_pool's values (up to flushed subnormals) and soft_pool's VJP, bit for bit;
- max_unpool of max_pool's own indices: x at the winners, 0 elsewhere; its VJP the gathered
  cotangent;
- max_pool's and max_unpool's outputs in the input's dtype (integers kept), the others in its
  float dtype (float32 for int32), gradients in the input's (of the promoted input for
  integers).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from fuzz_helpers import (
    DTYPES,
    GRAD_TOL,
    TOL,
    float_elements,
    fuzzed_names,
    temperatures,
)
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import jaxrelax

# The registry entries test_pooling checks (in one program, each with its own oracle).
POOLING = ["max_pool", "soft_pool", "lse_pool", "st_max_pool", "max_unpool"]


def test_pooling_checks_every_entry_the_registry_gives_it():
    assert fuzzed_names("test_fuzz_pool.py::test_pooling") == POOLING


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    shape: tuple  # (*batch, *spatial, features)
    window: tuple
    strides: tuple | None
    padding: str | tuple
    dtype: str
    temperature: str  # "scalar" or "feature" (one per batch element and feature)
    dilation: tuple | None = None  # window_dilation


P = PoolConfig
# Beyond the shared temperatures: 1e38, where float32's 1 / t is subnormal, and scaled gaps
# (x - max) / t of ordinary scores too, which made soft_pool the window's maximum rather than
# its mean, and where +inf lost its window to finite scores near finfo.max.
HUGE_TEMPERATURES = [1e38]
POOL = [
    P((2, 7, 3), (2,), (2,), "VALID", "float32", "scalar", (3,)),  # dilation > window
    P((1, 4, 5, 2), (3, 3), (2, 2), ((1, 1), (1, 1)), "float32", "feature"),
    P((3, 1, 2), (2,), (1,), ((1, 0),), "float64", "scalar"),  # a size-1 spatial dim
    P((2, 3, 3, 1), (2, 2), None, "SAME", "bfloat16", "scalar", (2, 1)),  # SAME, dilated
    P((4, 4, 2), (2, 2), (2, 2), "VALID", "float16", "feature"),  # no batch dim
    P(
        (1, 3, 2, 3, 1),
        (2, 2, 2),
        (1, 1, 1),
        ((1, 0), (0, 1), (1, 1)),
        "float32",
        "scalar",
        (1, 1, 2),
    ),
    # windows of one real entry, a pad wider than the window (not its extent 5)
    P((2, 4, 2), (3,), (1,), ((4, 1),), "int32", "scalar", (2,)),
    P((2, 3, 2), (3,), (2,), ((1, 1),), "float32_x64", "feature"),
    P((0, 3, 3, 2), (2, 2), (1, 1), "VALID", "float32", "feature"),  # an empty batch axis
]


def config_id(c):
    shape = "x".join(map(str, c.shape))
    dilation = "" if c.dilation is None else f"-d{c.dilation}"
    return f"{shape}-w{c.window}-s{c.strides}-{c.padding}{dilation}-{c.dtype}-{c.temperature}"


def _geometry(config):
    """(strides, padding as (low, high) pairs, dilation), the defaults spelled out."""
    d = len(config.window)
    spatial = config.shape[-1 - d : -1]
    strides = (1,) * d if config.strides is None else config.strides
    dilation = (1,) * d if config.dilation is None else config.dilation
    padding = config.padding
    if isinstance(padding, str):
        extent = [(w - 1) * r + 1 for w, r in zip(config.window, dilation, strict=True)]
        padding = tuple(jax.lax.padtype_to_pads(spatial, extent, strides, padding))
    return strides, tuple(tuple(p) for p in padding), dilation


@st.composite
def _cases(draw, config):
    dtype = DTYPES[config.dtype][0]
    if np.issubdtype(dtype, np.integer):
        x = draw(arrays(np.int64, config.shape, elements=st.integers(-3, 3))).astype(dtype)
    else:
        with np.errstate(over="ignore"):
            x = draw(arrays(np.float64, config.shape, elements=float_elements(dtype)))
            x = x.astype(dtype)
    compute = DTYPES[config.dtype][1]
    if config.temperature == "scalar":
        t = np.asarray(draw(temperatures(HUGE_TEMPERATURES)), compute)
    else:
        t_shape = (*config.shape[: -1 - len(config.window)], *(1,) * len(config.window))
        t_shape = t_shape + config.shape[-1:]
        elements = temperatures(HUGE_TEMPERATURES)
        t = np.asarray(draw(arrays(np.float64, t_shape, elements=elements)), compute)
    return x, t, draw(st.integers(0, 2**16))


_PROGRAMS = {}


def _program(config):
    """All five functions and their VJPs for one configuration, compiled once."""
    if config not in _PROGRAMS:
        window, strides, padding = config.window, config.strides, config.padding
        spatial = config.shape[-1 - len(window) : -1]
        dilated = dict(window_dilation=config.dilation)

        def run(x, t, g, h):
            values, indices = jaxrelax.max_pool(
                x, window, strides, padding, return_indices=True, **dilated
            )
            out = {"values": values, "indices": indices}
            for name, fn in [("soft", jaxrelax.soft_pool), ("lse", jaxrelax.lse_pool)]:
                out[f"{name}_int"] = fn(x, window, strides, padding, temperature=t, **dilated)
            # max_unpool keeps integers as max_pool does
            out["unpooled"] = jaxrelax.max_unpool(values, indices, spatial_shape=spatial)
            if not jnp.issubdtype(x.dtype, jnp.floating):  # gradients of the promoted input
                x = x.astype(out["soft_int"].dtype)
                values = values.astype(x.dtype)
            out["plain"], vjp = jax.vjp(
                lambda x: jaxrelax.max_pool(x, window, strides, padding, **dilated), x
            )
            out["max_dx"] = vjp(g.astype(x.dtype))[0]
            for name, fn in [
                ("soft", jaxrelax.soft_pool),
                ("lse", jaxrelax.lse_pool),
                ("st", jaxrelax.st_max_pool),
            ]:
                value, vjp = jax.vjp(
                    lambda x, t, fn=fn: fn(x, window, strides, padding, temperature=t, **dilated),
                    x,
                    t,
                )
                out[name] = value
                out[f"{name}_dx"], out[f"{name}_dt"] = vjp(g.astype(value.dtype))
            _, vjp = jax.vjp(
                lambda v: jaxrelax.max_unpool(v, indices, spatial_shape=spatial), values
            )
            out["unpool_dv"] = vjp(h.astype(values.dtype))[0]
            return out

        _PROGRAMS[config] = run
    return _PROGRAMS[config]


def _compiled(config, args):
    key = (config, tuple((a.shape, a.dtype) for a in args))
    if key not in _PROGRAMS:
        lowered = jax.jit(_program(config)).lower(*args)
        _PROGRAMS[key] = lowered.compile()
    return _PROGRAMS[key]


def flushed(x):
    info = jnp.finfo(x.dtype)
    return np.where(np.abs(x) < 4 * float(info.tiny), 0.0, x)


@pytest.mark.parametrize("config", POOL, ids=config_id)
@given(data=st.data())
def test_pooling(config, data):
    x, t, seed = data.draw(_cases(config))
    out_dtype, compute, x64 = (
        DTYPES[config.dtype][1],
        DTYPES[config.dtype][1],
        DTYPES[config.dtype][2],
    )
    if x.dtype in (jnp.bfloat16, np.float16):  # computed in float32, returned as given
        out_dtype = x.dtype
    strides, padding, dilation = _geometry(config)
    window = config.window
    # max_pool and max_unpool keep integers; the relaxations promote them
    exact_dtype = x.dtype if np.issubdtype(x.dtype, np.integer) else out_dtype
    with jax.enable_x64(x64):
        values_shape = jax.eval_shape(
            lambda x: jaxrelax.max_pool(
                x, window, config.strides, config.padding, window_dilation=config.dilation
            ),
            x,
        ).shape
        rng = np.random.default_rng(seed)
        g = rng.normal(size=values_shape).astype(np.float32)
        h = rng.normal(size=x.shape).astype(np.float32)  # max_unpool's cotangent
        out = jax.device_get(_compiled(config, (x, t, g, h))(x, t, g, h))
    xc = np.asarray(x.astype(compute), np.float64)
    gd = np.asarray(g.astype(out_dtype), np.float64)
    d = len(window)

    # max_pool: exact, against the oracle of x or of x with tiny scores flushed
    assert out["values"].dtype == exact_dtype and out["indices"].dtype == np.int32
    oracles = [ref.np_max_pool(xc, window, strides, padding, dilation)]
    if np.issubdtype(compute, np.floating):
        flush = flushed(xc.astype(compute))
        oracles.append(ref.np_max_pool(flush, window, strides, padding, dilation))
    # per window, the index of either oracle (tiny scores may tie once flushed), and the
    # value found there (a subnormal may come back flushed)
    indices = out["indices"]
    assert np.logical_or.reduce([indices == o[1] for o in oracles]).all(), (indices, oracles, x)
    plane = int(np.prod(x.shape[-1 - d : -1]))
    rows = xc.reshape(-1, plane, x.shape[-1])
    pooled = int(np.prod(indices.shape[-1 - d : -1]))
    found = np.take_along_axis(rows, indices.reshape(len(rows), pooled, x.shape[-1]), 1)
    np.testing.assert_array_equal(
        _no_subnormals(out["values"]),
        _no_subnormals(_cast(found, exact_dtype)).reshape(indices.shape),
    )
    np.testing.assert_array_equal(np.isnan(out["values"]), np.isnan(oracles[0][0]))
    want_dx = ref.np_scatter_to_plane(x.shape, d, indices, gd)
    _close(out["max_dx"], want_dx, GRAD_TOL, np.abs(gd).max(initial=0), x.dtype, "max_pool dx")

    # soft_pool and lse_pool
    patches, _ = ref.np_windows(xc, window, strides, padding, dilation)
    with np.errstate(invalid="ignore"):
        magnitude = np.max(np.where(np.isfinite(patches), np.abs(patches), 0), -1)
    nan_window = np.isnan(patches).any(-1)
    # Either oracle is right: of x, or of x with tiny scores flushed to zero (the library
    # halves the scores, and XLA's CPU backend flushes subnormal halves).
    inputs = [xc] + ([flushed(xc.astype(compute))] if np.issubdtype(compute, np.floating) else [])
    reach = ref.np_scatter_to_plane(
        x.shape, d, *_every_position(x.shape, d, window, strides, padding, dilation, nan_window)
    )
    clean = reach == 0  # entries that no NaN window reaches
    scale = np.abs(gd).sum() + 1e-30
    for kind in ("soft", "lse"):
        value = out[kind]
        assert value.dtype == out_dtype
        np.testing.assert_array_equal(_f64(out[f"{kind}_int"]), _f64(value))
        magnitude_kind = magnitude
        if kind == "lse":  # + t log(window size), at most
            t_full = np.broadcast_to(ref.pool_temperature(t, xc.ndim), magnitude.shape)
            magnitude_kind = magnitude + np.abs(t_full) * np.log(patches.shape[-1])
        wants = [
            ref.np_smooth_pool(xi, window, strides, padding, t, kind, dilation) for xi in inputs
        ]
        _close(value, wants, TOL, magnitude_kind, out_dtype, f"{kind}_pool value")
        vjps = [
            ref.np_smooth_pool_vjp(xi, gd, window, strides, padding, t, kind, dilation)
            for xi in inputs
        ]
        dx = np.asarray(out[f"{kind}_dx"], np.float64)
        assert out[f"{kind}_dx"].dtype == out_dtype
        assert not np.isnan(dx[clean]).any(), (kind, dx, x)
        wants = [np.where(clean, want_dx, 0) for want_dx, _ in vjps]
        _close(np.where(clean, dx, 0), wants, GRAD_TOL, scale, x.dtype, f"{kind} dx")
        dt = np.asarray(out[f"{kind}_dt"], np.float64)
        if not nan_window.any():
            axes = tuple(range(xc.ndim - 1 - d, xc.ndim - 1))
            wants = [_sum_to(want_dt.sum(axes, keepdims=True), np.shape(t)) for _, want_dt in vjps]
            assert np.isfinite(dt).all(), (kind, dt, x, t)
            _close(dt, wants, GRAD_TOL, scale * patches.shape[-1], x.dtype, f"{kind} dt")

    # st_max_pool: max_pool forward, soft_pool backward, bit for bit
    np.testing.assert_array_equal(_no_subnormals(out["st"]), _no_subnormals(out["plain"]))
    np.testing.assert_array_equal(_no_subnormals(out["plain"]), _no_subnormals(out["values"]))
    np.testing.assert_array_equal(_f64(out["st_dx"]), _f64(out["soft_dx"]))
    np.testing.assert_array_equal(_f64(out["st_dt"]), _f64(out["soft_dt"]))

    # max_unpool of max_pool's indices: x at the winners, 0 elsewhere
    kept = ref.np_scatter_to_plane(x.shape, d, indices, np.ones(indices.shape)) > 0
    want = np.where(kept, _cast(xc, exact_dtype), 0)
    assert out["unpooled"].dtype == exact_dtype
    # (XLA's CPU backend may flush a subnormal winner to zero on the way)
    np.testing.assert_array_equal(_no_subnormals(out["unpooled"]), _no_subnormals(want))
    cotangent = _cast(h, out_dtype).reshape(-1, plane, x.shape[-1])
    gathered = np.take_along_axis(
        cotangent, indices.reshape(len(cotangent), pooled, x.shape[-1]), 1
    )
    np.testing.assert_array_equal(
        np.asarray(out["unpool_dv"], np.float64), gathered.reshape(indices.shape)
    )


def _f64(values):
    return np.asarray(values, np.float64)


def _no_subnormals(values):
    values = np.asarray(values, np.float64)
    return np.where(np.abs(values) < float(jnp.finfo(np.float16).tiny), 0.0, values)


def _sum_to(value, shape):
    """Sums a per-window array to the temperature's shape (the transpose of broadcasting)."""
    lead = value.ndim - len(shape)
    value = value.sum(tuple(range(lead)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and value.shape[i] != 1)
    return value.sum(axes, keepdims=True).reshape(shape)


def _cast(values, dtype):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(values, np.float64).astype(dtype).astype(np.float64)


def _every_position(shape, d, window, strides, padding, dilation, selected):
    """(indices, updates) naming every real position of the selected windows, for
    np_scatter_to_plane: 1 where a selected window covers a position."""
    _, positions = ref.np_windows(np.zeros(shape), window, strides, padding, dilation)
    k = positions.shape[-1]
    full = np.broadcast_to(positions[..., None, :], (*selected.shape, k))
    updates = np.where(full >= 0, selected[..., None], False).astype(np.float64)
    # features last, as np_scatter_to_plane reads them
    return np.swapaxes(np.maximum(full, 0), -1, -2), np.swapaxes(updates, -1, -2)


def _close(got, wants, tol, scale, dtype, what):
    """Elementwise, close to one of the oracles ``wants`` (or to ``wants`` itself):
    |got - want| <= tol[dtype] * scale, NaN where want is NaN, infinities equal."""
    wants = wants if isinstance(wants, list) else [wants]
    got = np.asarray(got, np.float64)
    ok = np.zeros(got.shape, bool)
    for want in wants:
        ok |= _close_to(got, np.asarray(want, np.float64), tol, scale, dtype)
    want = np.asarray(wants[0], np.float64)
    assert ok.all(), f"{what}: got {got[~ok]}, expected {want[~ok]} at {np.argwhere(~ok).tolist()}"


def _close_to(got, want, tol, scale, dtype):
    name = "float64" if np.dtype(dtype) == np.float64 else str(np.dtype(dtype))
    if np.dtype(dtype) == np.int32:
        name = "float32"
    # (the floor: the subnormal range of the output dtype, as in test_fuzz._floor)
    limit = tol[name] * np.asarray(scale) + float(jnp.finfo(name).tiny)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (got == want) | (np.isnan(got) & np.isnan(want))
        ok |= np.isfinite(want) & (np.abs(got - want) <= limit)
        # a value beyond the output dtype's range is compared as the overflow it rounds to
        ok |= np.isinf(got) & (
            np.abs(want) > float(jnp.finfo(dtype if name != "float32" else np.float32).max) * 0.99
        )
    return ok
