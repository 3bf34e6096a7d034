"""max_pool and max_unpool against PyTorch.

The oracle, ``tests/data/pool_oracles.npz``, came from PyTorch 2.13 (CPU, float64) through
``tests/make_pool_oracles.py``, which describes its cases and arrays and how to rerun it;
PyTorch itself is not needed here. Every case is compared exactly: values, indices (ties
included), max_unpool's output; the gradients to 1e-12. Dilated cases (PyTorch's
``dilation``, jaxrelax's ``window_dilation``) are compared alike. Integer cases compare
max_pool's values (in the input's integer dtype) and indices with PyTorch's; PyTorch does not
unpool integers, so that max_unpool's output there is checked against its closed form (the
input at the indexed positions, 0 elsewhere).
"""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxrelax

ORACLE_PATH = Path(__file__).parent / "data" / "pool_oracles.npz"
with np.load(ORACLE_PATH) as _npz:
    ORACLE = {key: _npz[key] for key in _npz.files}
ALL_CASES = list(dict.fromkeys(key.split("/")[0] for key in ORACLE))
INTEGER_CASES = [c for c in ALL_CASES if np.issubdtype(ORACLE[f"{c}/x"].dtype, np.integer)]
CASES = [case for case in ALL_CASES if case not in INTEGER_CASES]  # float64
# lax.reduce_window drops NaN on XLA's CPU backend (see jaxrelax._pool._window_max).
FINITE_CASES = [case for case in CASES if not case.endswith("_nonfinite")]
TIED_CASES = [case for case in CASES if case.endswith("_ties")]


def _case(case: str) -> dict:
    """The case's arrays, with window, stride, padding and dilation as tuples of Python ints."""
    arrays = {
        key.split("/")[1]: value for key, value in ORACLE.items() if key.startswith(case + "/")
    }
    arrays["window"] = tuple(int(w) for w in arrays["window"])
    arrays["stride"] = tuple(int(s) for s in arrays["stride"])
    arrays["padding"] = tuple((int(lo), int(hi)) for lo, hi in arrays["padding"])
    arrays["dilation"] = tuple(int(d) for d in arrays["dilation"])
    return arrays


def _outputs(case: str) -> dict:
    """jaxrelax's side of every comparison for the case. Called with 64-bit floats enabled."""
    return _setting_outputs(case.rsplit("_", 1)[0])[case]


@functools.cache
def _setting_outputs(setting: str) -> dict:
    """jaxrelax's outputs for every float case of one setting (one window, stride, padding,
    dilation and shape), from one jitted call on their inputs stacked along the batch axis: one
    compilation per setting keeps the file fast (op by op, each window offset's slice would
    compile on its own)."""
    assert jax.config.jax_enable_x64
    cases = [case for case in CASES if case.rsplit("_", 1)[0] == setting]
    first = _case(cases[0])
    window, stride, padding = first["window"], first["stride"], first["padding"]
    dilation = first["dilation"]
    spatial = first["x"].shape[1:-1]

    def pool(x):
        return jaxrelax.max_pool(x, window, stride, padding, window_dilation=dilation)

    def pool_with_indices(x):
        return jaxrelax.max_pool(
            x, window, stride, padding, return_indices=True, window_dilation=dilation
        )

    @jax.jit
    def outputs(x, ct, values, indices, ct2):
        pooled, pool_vjp = jax.vjp(pool, x)
        (pooled_with, found), pool_with_vjp = jax.vjp(pool_with_indices, x)
        unpooled, unpool_vjp = jax.vjp(
            lambda v: jaxrelax.max_unpool(v, indices, spatial_shape=spatial), values
        )
        reduced = lax.reduce_window(
            x,
            -jnp.inf,
            lax.max,
            (1, *window, 1),
            (1, *stride, 1),
            ((0, 0), *padding, (0, 0)),
            window_dilation=(1, *dilation, 1),
        )
        return {
            "values": pooled_with,
            "indices": found,
            "values_plain": pooled,
            "grad_plain": pool_vjp(ct)[0],
            "grad": pool_with_vjp((ct, np.zeros(found.shape, jax.dtypes.float0)))[0],
            "unpooled": unpooled,
            "unpool_grad": unpool_vjp(ct2)[0],
            "reduce_window": reduced,
        }

    arrays = [_case(case) for case in cases]
    for c in arrays:
        assert (c["window"], c["stride"], c["padding"]) == (window, stride, padding)
        assert c["dilation"] == dilation
        assert c["x"].shape == first["x"].shape
    stacked = [
        jnp.concatenate([c[key] for c in arrays]) for key in ("x", "ct", "values", "indices", "ct2")
    ]
    batch = first["x"].shape[0]
    return {
        case: {key: np.asarray(value[i * batch : (i + 1) * batch]) for key, value in out.items()}
        for out in [outputs(*stacked)]
        for i, case in enumerate(cases)
    }


def _dilated(case: str) -> bool:
    return any(d > 1 for d in ORACLE[f"{case}/dilation"])


def test_oracle_covers_every_dimension_and_kind():
    assert len(CASES) == 50 and len(INTEGER_CASES) == 4
    for d in (1, 2, 3):
        for kind in ("random", "ties"):
            of_kind = [c for c in CASES if c.startswith(f"{d}d_") and c.endswith(f"_{kind}")]
            assert sum(not _dilated(c) for c in of_kind) >= 4
            assert sum(_dilated(c) for c in of_kind) >= 2
    nonfinite = [c for c in CASES if c.endswith("_nonfinite")]
    assert len(nonfinite) == 8 and sum(map(_dilated, nonfinite)) == 3
    # a dilation larger than the window, and dilation with padding
    assert any(
        max(np.asarray(ORACLE[f"{c}/dilation"]) - np.asarray(ORACLE[f"{c}/window"])) > 0
        for c in CASES
    )
    assert any(_dilated(c) and ORACLE[f"{c}/padding"].any() for c in CASES)
    dtypes = {str(ORACLE[f"{c}/x"].dtype) for c in INTEGER_CASES}
    assert dtypes == {"int8", "uint8", "int32", "int64"}


@pytest.mark.parametrize("case", CASES)
def test_max_pool_matches_torch(case, x64):
    c, out = _case(case), _outputs(case)
    assert out["values"].dtype == np.float64 and out["indices"].dtype == np.int32
    np.testing.assert_array_equal(out["values"], c["values"])
    np.testing.assert_array_equal(out["indices"], c["indices"])
    np.testing.assert_array_equal(out["values_plain"], c["values"])


@pytest.mark.parametrize("return_indices", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_max_pool_vjp_matches_torch(case, return_indices, x64):
    c, out = _case(case), _outputs(case)
    grad = out["grad"] if return_indices else out["grad_plain"]
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, c["grad"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_max_unpool_matches_torch(case, x64):
    c, out = _case(case), _outputs(case)
    assert out["unpooled"].dtype == np.float64
    np.testing.assert_array_equal(out["unpooled"], c["unpooled"])


@pytest.mark.parametrize("case", CASES)
def test_max_unpool_vjp_matches_torch(case, x64):
    c, out = _case(case), _outputs(case)
    np.testing.assert_allclose(out["unpool_grad"], c["unpool_grad"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", FINITE_CASES)
def test_values_match_reduce_window(case, x64):
    """flax.linen.max_pool's formulation gives the same values as PyTorch and jaxrelax."""
    c, out = _case(case), _outputs(case)
    np.testing.assert_array_equal(out["reduce_window"], c["values"])
    np.testing.assert_array_equal(out["values"], out["reduce_window"])


@pytest.mark.parametrize("case", TIED_CASES)
def test_tied_cases_tie(case):
    """The tied inputs do exercise the tie-breaking: many windows hold their maximum twice
    or more, so that the first maximum and the last differ."""
    c = _case(case)
    x, window = c["x"], c["window"]
    padded = np.pad(x, [(0, 0), *c["padding"], (0, 0)], constant_values=-np.inf)
    extent = [(w - 1) * r + 1 for w, r in zip(window, c["dilation"], strict=True)]
    view = np.lib.stride_tricks.sliding_window_view(
        padded, extent, axis=tuple(range(1, 1 + len(window)))
    )
    view = view[(slice(None), *(slice(None, None, s) for s in c["stride"]))]
    view = view[(Ellipsis, *(slice(None, None, r) for r in c["dilation"]))]
    window_axes = tuple(range(-len(window), 0))
    count = (view == view.max(axis=window_axes, keepdims=True)).sum(axis=window_axes)
    assert count.shape == c["values"].shape
    assert (count > 1).sum() >= count.size // 10


@pytest.mark.parametrize("case", INTEGER_CASES)
def test_integer_max_pool_matches_torch(case, x64):
    """Integers keep their dtype and are pooled exactly (the cases hold neighbours that a
    float would round together); max_unpool keeps the dtype too."""
    c = _case(case)
    window, stride, padding, dilation = c["window"], c["stride"], c["padding"], c["dilation"]
    spatial = c["x"].shape[1:-1]

    @jax.jit
    def outputs(x):
        values, indices = jaxrelax.max_pool(
            x, window, stride, padding, return_indices=True, window_dilation=dilation
        )
        plain = jaxrelax.max_pool(x, window, stride, padding, window_dilation=dilation)
        unpooled = jaxrelax.max_unpool(
            values, indices, window, stride, padding, window_dilation=dilation,
            spatial_shape=spatial,
        )  # fmt: skip
        return values, indices, plain, unpooled

    values, indices, plain, unpooled = jax.device_get(outputs(c["x"]))
    assert values.dtype == plain.dtype == unpooled.dtype == c["x"].dtype
    np.testing.assert_array_equal(values, c["values"])
    np.testing.assert_array_equal(indices, c["indices"])
    np.testing.assert_array_equal(plain, c["values"])
    batch, features = c["x"].shape[0], c["x"].shape[-1]
    rows = np.zeros((batch, int(np.prod(spatial)), features), bool)
    np.put_along_axis(rows, c["indices"].reshape(batch, -1, features), True, 1)
    np.testing.assert_array_equal(unpooled, np.where(rows.reshape(c["x"].shape), c["x"], 0))


NCHW_CASES = [next(c for c in CASES if c.startswith(f"{d}d_")) for d in (1, 2, 3)]


@pytest.mark.parametrize("case", NCHW_CASES)
def test_channels_first_input_matches_torch_as_it_is(case, x64):
    """PyTorch's own layout, (N, C, *spatial), with channel_axis=1: max_pool, its indices,
    max_unpool and their gradients equal PyTorch's, in that layout."""
    c = _case(case)
    window, stride, padding, dilation = c["window"], c["stride"], c["padding"], c["dilation"]

    def first(a):
        return np.moveaxis(a, -1, 1)

    @jax.jit
    def outputs(x, ct, values, indices, ct2):
        def pool(x):
            return jaxrelax.max_pool(
                x, window, stride, padding, return_indices=True, window_dilation=dilation,
                channel_axis=1,
            )  # fmt: skip

        (pooled, found), pool_vjp = jax.vjp(pool, x)

        def unpool(v):
            return jaxrelax.max_unpool(
                v, indices, window, stride, padding, window_dilation=dilation,
                spatial_shape=x.shape[2:], channel_axis=1,
            )  # fmt: skip

        unpooled, unpool_vjp = jax.vjp(unpool, values)
        grad = pool_vjp((ct, np.zeros(found.shape, jax.dtypes.float0)))[0]
        return pooled, found, grad, unpooled, unpool_vjp(ct2)[0]

    got = outputs(*(first(c[k]) for k in ("x", "ct", "values", "indices", "ct2")))
    for value, key in zip(
        got, ["values", "indices", "grad", "unpooled", "unpool_grad"], strict=True
    ):
        np.testing.assert_allclose(value, first(c[key]), rtol=0, atol=1e-12)
