"""Property tests: arbitrary scores, with infinities, NaN, huge values, ties and masks, against
the NumPy reference semantics. Each example runs the compiled functions on one fixed shape."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import np_argmax, np_hardmax, np_smooth_max, np_softmax

import jaxrelax

SHAPE = (4, 6)
SPECIAL = [np.inf, -np.inf, np.nan, 0.0, 1.0, 1e30, -1e30, 3.4e38]
scores = arrays(
    np.float32,
    SHAPE,
    elements=st.one_of(
        # no subnormals: XLA's CPU backend flushes them to zero (as hardmax's docstring says)
        st.floats(-50, 50, width=32, allow_subnormal=False),
        st.sampled_from([np.float32(v) for v in SPECIAL]),
    ),
)
masks = st.one_of(st.none(), arrays(np.bool_, SHAPE))
temperatures = st.sampled_from([0.05, 0.7, 3.0])


def _finite_rows(x, where):
    """Rows whose unmasked entries hold no NaN: their results must be NaN-free."""
    unmasked = np.ones(SHAPE, bool) if where is None else where
    return ~np.any(np.isnan(x) & unmasked, axis=-1)


@settings(max_examples=150, deadline=None)
@given(x=scores, where=masks, ties=st.sampled_from(["first", "uniform"]))
def test_hardmax_and_argmax_follow_the_reference(x, where, ties):
    expected = np_hardmax(x, where=where, ties=ties).astype(np.float32)
    np.testing.assert_array_equal(jaxrelax.hardmax(x, where=where, ties=ties), expected)
    np.testing.assert_array_equal(jaxrelax.st_hardmax(x, where=where, ties=ties), expected)
    np.testing.assert_array_equal(jaxrelax.st_argmax(x, where=where), np_argmax(x, where=where))


@settings(max_examples=150, deadline=None)
@given(x=scores, where=masks, t=temperatures)
def test_soft_values_follow_the_reference(x, where, t):
    np.testing.assert_allclose(
        jaxrelax.softmax(x, temperature=t, where=where),
        np_softmax(x, -1, t, where),
        rtol=1e-5,
        atol=1e-6,
    )
    for method in ["logsumexp", "softmax"]:
        np.testing.assert_allclose(
            jaxrelax.smooth_max(x, temperature=t, where=where, method=method),
            np_smooth_max(x, -1, t, where, method),
            rtol=1e-5,
            atol=1e-5,
        )


@settings(max_examples=100, deadline=None)
@given(x=scores, where=masks, t=temperatures)
def test_gradients_are_nan_free_outside_nan_slices(x, where, t):
    finite_rows = _finite_rows(x, where)
    weights = jnp.arange(1.0, 7.0)
    losses = {
        "softmax": lambda x: jaxrelax.softmax(x, temperature=t, where=where) @ weights,
        "st_hardmax": lambda x: jaxrelax.st_hardmax(x, temperature=t, where=where) @ weights,
        "smooth_max": lambda x: jaxrelax.smooth_max(x, temperature=t, where=where),
        "soft_argmax": lambda x: jaxrelax.soft_argmax(x, temperature=t, where=where),
        "st_max": lambda x: jaxrelax.st_max(x, temperature=t, where=where),
    }
    for name, loss in losses.items():
        # Infinite values (an empty slice's -inf) have no cotangent: weigh only finite ones.
        value = loss(x)
        cotangent = jnp.where(jnp.isfinite(value), 1.0, 0.0)
        grad = np.asarray(jax.vjp(loss, x)[1](cotangent)[0])
        assert not np.isnan(grad[finite_rows]).any(), name
        if where is not None:
            assert (grad[~where & finite_rows[:, None]] == 0).all(), name
