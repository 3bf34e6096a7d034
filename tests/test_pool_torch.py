"""max_pool and max_unpool against PyTorch.

The oracle, ``tests/data/pool_oracles.npz``, came from PyTorch 2.13 (CPU, float64) through
``tests/make_pool_oracles.py``, which describes its cases and arrays and how to rerun it;
PyTorch itself is not needed here. Every case is compared exactly: values, indices (ties
included), max_unpool's output; the gradients to 1e-12.
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
CASES = list(dict.fromkeys(key.split("/")[0] for key in ORACLE))
# lax.reduce_window drops NaN on XLA's CPU backend (see jaxrelax._pool._window_max).
FINITE_CASES = [case for case in CASES if not case.endswith("_nonfinite")]
TIED_CASES = [case for case in CASES if case.endswith("_ties")]


def _case(case: str) -> dict:
    """The case's arrays, with window, stride and padding as tuples of Python ints."""
    arrays = {
        key.split("/")[1]: value for key, value in ORACLE.items() if key.startswith(case + "/")
    }
    arrays["window"] = tuple(int(w) for w in arrays["window"])
    arrays["stride"] = tuple(int(s) for s in arrays["stride"])
    arrays["padding"] = tuple((int(lo), int(hi)) for lo, hi in arrays["padding"])
    return arrays


def _outputs(case: str) -> dict:
    """jaxrelax's side of every comparison for the case. Called with 64-bit floats enabled."""
    return _setting_outputs(case.rsplit("_", 1)[0])[case]


@functools.cache
def _setting_outputs(setting: str) -> dict:
    """jaxrelax's outputs for every case of one setting (one window, stride, padding and
    shape), from one jitted call on their inputs stacked along the batch axis: one
    compilation per setting keeps the file fast (op by op, each window offset's slice would
    compile on its own)."""
    assert jax.config.jax_enable_x64
    cases = [case for case in CASES if case.rsplit("_", 1)[0] == setting]
    first = _case(cases[0])
    window, stride, padding = first["window"], first["stride"], first["padding"]
    spatial = first["x"].shape[1:-1]

    def pool(x):
        return jaxrelax.max_pool(x, window, stride, padding)

    def pool_with_indices(x):
        return jaxrelax.max_pool(x, window, stride, padding, return_indices=True)

    @jax.jit
    def outputs(x, ct, values, indices, ct2):
        pooled, pool_vjp = jax.vjp(pool, x)
        (pooled_with, found), pool_with_vjp = jax.vjp(pool_with_indices, x)
        unpooled, unpool_vjp = jax.vjp(lambda v: jaxrelax.max_unpool(v, indices, spatial), values)
        reduced = lax.reduce_window(
            x, -jnp.inf, lax.max, (1, *window, 1), (1, *stride, 1), ((0, 0), *padding, (0, 0))
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


def test_oracle_covers_every_dimension_and_kind():
    assert len(CASES) == 33
    for d in (1, 2, 3):
        for kind in ("random", "ties"):
            assert sum(c.startswith(f"{d}d_") and c.endswith(f"_{kind}") for c in CASES) >= 4
    assert sum(c.endswith("_nonfinite") for c in CASES) == 5


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
    view = np.lib.stride_tricks.sliding_window_view(
        padded, window, axis=tuple(range(1, 1 + len(window)))
    )
    view = view[(slice(None), *(slice(None, None, s) for s in c["stride"]))]
    window_axes = tuple(range(-len(window), 0))
    count = (view == view.max(axis=window_axes, keepdims=True)).sum(axis=window_axes)
    assert count.shape == c["values"].shape
    assert (count > 1).sum() >= count.size // 10
