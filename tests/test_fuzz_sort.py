"""Property-based tests of the orders (rank, soft_rank, soft_sort, st_rank, st_sort,
soft_quantile): drawn shapes (length 0 and 1, tuples of axes, all axes), dtypes, masks
(random, all, none, one entry), values with exact ties, +-inf and NaN, and per-slice
temperatures, checked slice by slice against the float64 oracle of reference_sort.py
(values), with finite gradients that are zero at masked places and NaN only in NaN slices.

Values stay within |x| <= 1e3 and temperatures within [1e-3, 1e3]: the docstrings' note on
overflow (``x / temperature`` and ``n / temperature`` must be finite) bounds the rest.
"""

from __future__ import annotations

import functools

import fuzz_helpers as fh
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_sort as ref
import registry
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

C = fh.Config
POOL = [  # (tests/test_transformations.py covers the other dtypes and batch shapes)
    C((4, 5), -1, "float32", "full", "slice"),
    C((3, 1), -1, "float32", "full", "scalar"),
    C((2, 0), -1, "float32", None, "scalar"),
    C((2, 3, 4), (0, 2), "bfloat16", "slices", "slice"),
    C((3, 4), None, "float64", "full", "scalar"),
]
TOL = {"float32": 2e-5, "float64": 1e-9, "bfloat16": 1.6e-2}
VALUES = st.one_of(
    st.floats(-1e3, 1e3, width=32),
    st.sampled_from([0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan]),
)


@st.composite
def _cases(draw, config):
    shape, dtype = config.shape, fh.DTYPES[config.dtype]
    if np.issubdtype(dtype[0], np.integer):
        x = draw(arrays(np.int64, shape, elements=st.integers(-3, 3))).astype(dtype[0])
    else:
        x = draw(arrays(np.float64, shape, elements=VALUES))
    axes = tuple(range(len(shape))) if config.axis is None else config.axis
    axes = tuple(a % len(shape) for a in np.atleast_1d(axes))
    keep = tuple(1 if i in axes else n for i, n in enumerate(shape))
    temperatures = st.sampled_from([1e-3, 0.05, 0.7, 1.0, 3.0, 1e3])
    t = draw(temperatures)
    if config.temperature == "slice":
        t = draw(arrays(np.float64, keep, elements=temperatures))
    where = None
    if config.mask is not None:
        mask_shape = {"full": shape, "batch": keep}.get(config.mask)
        if mask_shape is None:
            mask_shape = tuple(n if i in axes else 1 for i, n in enumerate(shape))
        pattern = draw(st.sampled_from(["random", "random", "all", "none", "one"]))
        where = draw(arrays(np.bool_, mask_shape)) if pattern == "random" else None
        if pattern != "random":
            where = np.full(mask_shape, pattern == "all")
            if pattern == "one" and where.size:
                where.reshape(-1)[0] = True
    return x, np.asarray(t), where, axes, dtype


def _oracle(entry, x, t, where, axes):
    """Row by row in float64: the entry's value (rows: reduced axes last, flattened)."""
    descending = entry.options.get("descending", False)
    kind = entry.options.get("regularization", "l2")
    kept = [a for a in range(x.ndim) if a not in axes]
    order = kept + list(axes)
    n = int(np.prod([x.shape[a] for a in axes], dtype=int))
    if x.size == 0:
        kept_shape = [x.shape[a] for a in kept]
        return np.zeros(kept_shape if entry.reduces else x.shape)
    rows = np.transpose(x.astype(np.float64), order).reshape(-1, n)
    masks = np.transpose(np.broadcast_to(where, x.shape), order).reshape(-1, n)
    ts = np.transpose(np.broadcast_to(t, x.shape), order).reshape(-1, n)[:, :1] if n else None
    out = []
    for i, (row, mask) in enumerate(zip(rows, masks, strict=True)):
        out.append(_row(entry.name, row, mask, ts[i, 0] if n else 1.0, descending, kind))
    shape = [x.shape[a] for a in order]
    if entry.reduces:
        return np.array([o[0] for o in out]).reshape(shape[: len(kept)])
    back = np.argsort(order)
    return np.transpose(np.array(out).reshape(shape), back)


def _row(name, row, mask, t, descending, kind):
    n = len(row)
    if np.isnan(row[mask]).any():
        return np.full(1 if name == "soft_quantile" else n, np.nan)
    part = row[mask]
    finite = part[np.isfinite(part)]
    sign = -1.0 if descending else 1.0
    low, high = np.sum(sign * part == -np.inf), np.sum(sign * part == np.inf)
    out = np.zeros(n)
    if name in ("rank", "st_rank"):
        out[mask] = stats.rankdata(sign * part)
        return out
    if name == "soft_rank":
        ranks = np.where(sign * part == -np.inf, (low + 1) / 2, len(part) - (high - 1) / 2)
        if len(finite):
            ranks[np.isfinite(part)] = ref.soft_rank(finite, t, kind, descending) + low
        out[mask] = ranks
        return out
    if name == "st_sort":
        ordered = np.sort(part)
        out[: len(part)] = ordered[::-1] if descending else ordered
        return out
    smooth = ref.soft_sort(finite, t, kind, descending) if len(finite) else finite
    ends = [np.full(np.sum(part == -np.inf), -np.inf), np.full(np.sum(part == np.inf), np.inf)]
    ordered = np.concatenate(
        [ends[1], smooth, ends[0]] if descending else [ends[0], smooth, ends[1]]
    )
    if name == "soft_sort":
        out[: len(part)] = ordered
        return out
    if not len(part):
        return np.zeros(1)
    h = registry.QUANTILE * (len(ordered) - 1)
    below, above = ordered[int(h)], ordered[min(int(h) + 1, len(ordered) - 1)]
    if below == above or np.isinf(below) or h == int(h):
        return np.array([below])  # an infinity wins over the finite neighbour (the Note)
    if np.isinf(above):
        return np.array([above])
    return np.array([below + (h - int(h)) * (above - below)])


NAMES = fh.fuzzed_names("test_fuzz_sort.py::test_orders")


@functools.cache
def _programs(name, config):
    """The entry's value and the gradient of a weighted sum of its finite outputs, compiled
    once per configuration (the draws share their shapes)."""
    entry = registry.ENTRIES[name]

    def value(x, where, kw):
        return entry(x, *_axis(config), where=where, **kw)

    def loss(x, where, kw, g):
        out = value(x, where, kw)
        return jnp.sum(jnp.where(jnp.isfinite(out), out, 0) * g)

    return jax.jit(value), jax.jit(jax.grad(loss))


@pytest.mark.slow
@pytest.mark.parametrize("name, config", fh.params(NAMES, POOL))
@settings(max_examples=5, deadline=None)
@given(data=st.data())
def test_orders(name, config, data):
    entry = registry.ENTRIES[name]
    x, t, where, axes, (dtype, compute, x64) = data.draw(_cases(config))
    with jax.enable_x64(x64):
        kw = {} if entry.temperature is None else {"temperature": t.astype(compute)}
        value, gradient = _programs(name, config)
        got = np.asarray(value(jnp.asarray(x), where, kw).astype(jnp.float32 if not x64 else None))
        mask = np.ones(x.shape, bool) if where is None else np.broadcast_to(where, x.shape)
        want = _oracle(entry, np.asarray(x, np.float64), t, mask, axes)
        tol = TOL.get(config.dtype, TOL["float32"])
        scale = np.max(np.abs(np.where(np.isfinite(x), x, 0)), initial=0) + np.prod(
            [x.shape[a] for a in axes]
        )
        if (
            entry.name in ("soft_sort", "soft_quantile")
            and entry.options.get("regularization") == "kl"
        ):
            scale = scale + np.log(max(np.prod([x.shape[a] for a in axes]), 1)) * np.max(t)
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)
        if entry.gradient == registry.HARD or not x.size:
            return
        g = np.random.default_rng(0).normal(size=got.shape)
        grad = np.asarray(gradient(jnp.asarray(x, compute), where, kw, g.astype(compute)))
        if np.isnan(want).any():
            return  # a NaN slice's gradient is NaN (test_audit.py checks it, row by row)
        assert np.isfinite(grad).all(), grad
        np.testing.assert_array_equal(grad[~mask], 0)


def _axis(config):
    return () if config.axis == -1 else (config.axis,)
