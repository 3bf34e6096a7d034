import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import EDGE_EMPTY_ROWS, EDGE_NAN_ROW, EDGE_WHERE, EDGE_X, np_hardmax

import jaxrelax

INF, NAN = np.inf, np.nan


@pytest.mark.parametrize("ties", ["first", "uniform"])
@pytest.mark.parametrize(
    "shape, axis",
    [
        ((7,), -1),
        ((5, 9), -1),
        ((5, 9), 0),
        ((3, 4, 6), (0, 2)),
        ((3, 4, 6), (1, 2)),
        ((2, 3, 4), (0, 1, 2)),
    ],
)
def test_matches_reference_with_many_ties(shape, axis, ties, rng):
    x = rng.integers(0, 3, size=shape).astype(np.float32)  # small integers: ties everywhere
    expected = np_hardmax(x, axis, ties=ties).astype(np.float32)  # 1/m rounded once
    np.testing.assert_array_equal(jaxrelax.hardmax(x, axis, ties=ties), expected)


def test_matches_one_hot_of_argmax(rng):
    x = rng.normal(size=(64, 33)).astype(np.float32)
    expected = jax.nn.one_hot(jnp.argmax(x, -1), 33)
    np.testing.assert_array_equal(jaxrelax.hardmax(x), expected)


def test_tuple_axis_first_is_row_major():
    x = jnp.zeros((2, 3, 2)).at[0, 2, 1].set(5.0).at[1, 0, 0].set(5.0)
    out = jaxrelax.hardmax(x, axis=(0, 1))
    # over the (0, 1) slice for column 0: positions (1, 0) holds the max; column 1: (0, 2).
    assert out[1, 0, 0] == 1 and out[0, 2, 1] == 1 and out.sum() == 2
    # all-zero slices elsewhere? no: each column is one slice, so exactly one 1 per column.
    # Ties in both: row-major first is (0, 0) for a slice of equal values.
    np.testing.assert_array_equal(
        jaxrelax.hardmax(jnp.ones((2, 3)), axis=(0, 1)), [[1, 0, 0], [0, 0, 0]]
    )
    # The order of the tuple does not matter: row-major order of the axes as they are in x.
    np.testing.assert_array_equal(
        jaxrelax.hardmax(jnp.ones((2, 3)), axis=(1, 0)),
        jaxrelax.hardmax(jnp.ones((2, 3)), axis=(0, 1)),
    )


def test_uniform_ties_spread_evenly():
    out = jaxrelax.hardmax(jnp.array([2.0, 5.0, 5.0, 1.0, 5.0]), ties="uniform")
    np.testing.assert_allclose(out, [0, 1 / 3, 1 / 3, 0, 1 / 3], rtol=1e-7)


@pytest.mark.parametrize("ties", ["first", "uniform"])
def test_masks_infinities_and_nan(ties):
    out = np.asarray(jaxrelax.hardmax(EDGE_X, where=EDGE_WHERE, ties=ties))
    expected = np_hardmax(EDGE_X, where=EDGE_WHERE, ties=ties).astype(np.float32)
    np.testing.assert_array_equal(out, expected)
    assert np.isnan(out[EDGE_NAN_ROW]).all()
    assert not np.isnan(np.delete(out, EDGE_NAN_ROW, 0)).any()
    np.testing.assert_array_equal(out[EDGE_EMPTY_ROWS], 0)


def test_large_finite_values_tie_only_when_equal():
    big = np.float32(3.4e38)
    x = np.array(
        [[big, np.nextafter(big, 0, dtype=np.float32)], [-big, -INF], [1e-30, 0.0]], np.float32
    )
    np.testing.assert_array_equal(jaxrelax.hardmax(x), [[1, 0], [1, 0], [1, 0]])


@pytest.mark.parametrize("ties", ["first", "uniform"])
def test_gradient_is_zero(ties, rng):
    x = rng.normal(size=(4, 6)).astype(np.float32)
    g = jax.grad(lambda x: jnp.sum(jaxrelax.hardmax(x, ties=ties) * jnp.arange(6.0)))(x)
    np.testing.assert_array_equal(g, 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32, jnp.int32, jnp.bool_])
def test_dtypes(dtype):
    x = jnp.array([[0, 3, 1], [2, 2, 1]]).astype(dtype)
    out = jaxrelax.hardmax(x)
    expected_dtype = jnp.float32 if dtype in (jnp.int32, jnp.bool_) else dtype
    assert out.dtype == expected_dtype
    expected = [[0, 1, 0], [1, 0, 0]] if dtype != jnp.bool_ else [[0, 1, 0], [1, 0, 0]]
    np.testing.assert_array_equal(out.astype(np.float32), expected)


def test_float64(x64, rng):
    x = rng.normal(size=(3, 50))
    x[0, 7] = x[0].max()  # a float64 tie
    x[1, 3] = x[1, 4] = x[1].max() + 1e-12  # near-tie, distinct only in float64
    x[1, 4] += 1e-9
    out = jaxrelax.hardmax(jnp.asarray(x), ties="uniform")
    assert out.dtype == jnp.float64
    np.testing.assert_array_equal(out, np_hardmax(x, ties="uniform"))


@pytest.mark.slow
def test_slice_past_float32_exactness():
    # More than 2**23 elements per slice: positions no longer fit float32 exactly.
    n = 2**23 + 5
    x = jnp.zeros((1, n), jnp.float32).at[0, n - 2].set(1.0).at[0, n - 1].set(1.0)
    out = jaxrelax.hardmax(x)
    assert out[0, n - 2] == 1 and out.sum() == 1
    assert float(jaxrelax.st_argmax(x)[0]) == float(n - 2)
    with_nan = x.at[0, 3].set(jnp.nan)
    assert jnp.isnan(jaxrelax.hardmax(with_nan)).all()
    assert jaxrelax.hardmax(x, where=jnp.zeros((1, n), bool)).sum() == 0
