import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrelax
from jaxrelax import diagnostics

Z = 5.0  # standard errors allowed (a false failure per check: about 6e-7)


def _cost(d):
    return jnp.sum(d * jnp.array([1.0, -0.5, 2.0, 0.3])) ** 2


def test_exact_expectation_and_gradient_one_variable(rng):
    logits = jnp.asarray(rng.normal(size=4))
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    values = np.array([float(_cost(jnp.eye(4)[i])) for i in range(4)])
    np.testing.assert_allclose(diagnostics.exact_expectation(_cost, logits), p @ values, rtol=1e-6)
    # d/dl_j sum_i p_i f_i = p_j (f_j - E f)
    expected = p * (values - p @ values)
    np.testing.assert_allclose(
        diagnostics.exact_gradient(_cost, logits), expected, rtol=1e-5, atol=1e-7
    )


def test_exact_gradient_factorised_matches_a_loop(rng, x64):
    logits = jnp.asarray(rng.normal(size=(3, 4)))

    def f(d):  # couples the variables
        return jnp.sum(d[0] * d[1]) + 2 * d[2, 1] * d[0, 3] + d[1, 2]

    p = np.asarray(jax.nn.softmax(logits, -1))
    expectation = 0.0
    for config in itertools.product(range(4), repeat=3):
        d = np.eye(4)[list(config)]
        expectation += np.prod([p[j, config[j]] for j in range(3)]) * float(f(jnp.asarray(d)))
    np.testing.assert_allclose(diagnostics.exact_expectation(f, logits), expectation, rtol=1e-12)
    numeric = np.zeros((3, 4))
    for j, k in itertools.product(range(3), range(4)):
        step = np.zeros((3, 4))
        step[j, k] = 1e-6
        numeric[j, k] = (
            diagnostics.exact_expectation(f, logits + step)
            - diagnostics.exact_expectation(f, logits - step)
        ) / 2e-6
    np.testing.assert_allclose(diagnostics.exact_gradient(f, logits), numeric, rtol=1e-6, atol=1e-9)


def test_stats_of_a_known_estimator():
    # A deterministic estimator plus Gaussian noise of known scale: bias and variance known.
    exact = jnp.array([0.5, -1.0, 2.0])
    offset = jnp.array([0.1, 0.0, -0.2])

    def estimator(key, logits):
        return exact + offset + 0.3 * jax.random.normal(key, logits.shape)

    count = 20_000
    stats = diagnostics.estimator_stats(estimator, jax.random.key(0), jnp.zeros(3), exact, count)
    stderr = 0.3 / np.sqrt(count)
    assert (np.abs(stats.bias - offset) <= Z * stderr).all()
    # the sample variance of a normal: stderr sigma^2 sqrt(2 / (n - 1))
    assert (np.abs(stats.variance - 0.09) <= Z * 0.09 * np.sqrt(2 / count)).all()
    expected_mse = float(jnp.sum(offset**2)) + 3 * 0.09
    assert abs(float(stats.mse) - expected_mse) <= Z * float(stats.mse_stderr)
    np.testing.assert_allclose(
        stats.mse, jnp.sum(stats.bias**2) + jnp.sum(stats.variance) * (count - 1) / count, rtol=1e-4
    )


def test_straight_through_gumbel_is_biased_and_reinforce_is_not():
    logits = jnp.array([0.2, -0.4, 0.9, 0.0])
    exact = diagnostics.exact_gradient(_cost, logits)

    def reinforce(key, logits):
        d = jaxrelax.gumbel_softmax(key, logits, hard=True)
        return jax.lax.stop_gradient(_cost(d)) * jax.grad(
            lambda lg: jnp.vdot(d, jax.nn.log_softmax(lg))
        )(logits)

    def straight_through(key, logits):
        return jax.grad(
            lambda lg: _cost(jaxrelax.gumbel_softmax(key, lg, temperature=0.5, hard=True))
        )(logits)

    count = 40_000
    unbiased = diagnostics.estimator_stats(reinforce, jax.random.key(1), logits, exact, count)
    assert (np.abs(unbiased.bias) <= Z * np.sqrt(unbiased.variance / count)).all()
    biased = diagnostics.estimator_stats(straight_through, jax.random.key(2), logits, exact, count)
    assert (np.abs(biased.bias) > Z * np.sqrt(biased.variance / count)).any()


def test_jit_and_vmap_friendly():
    logits = jnp.array([[0.1, 0.2, -0.3], [0.0, 1.0, 0.5]])
    batched = jax.jit(jax.vmap(lambda lg: diagnostics.exact_gradient(lambda d: d[0] @ d[1], lg)))(
        jnp.stack([logits, -logits])
    )
    np.testing.assert_allclose(
        batched[0], diagnostics.exact_gradient(lambda d: d[0] @ d[1], logits), rtol=1e-6
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="configurations"):
        diagnostics.exact_gradient(lambda d: d.sum(), jnp.zeros((30, 10)))
    with pytest.raises(ValueError, match="shape"):
        diagnostics.exact_gradient(lambda d: d.sum(), jnp.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="floating-point"):
        diagnostics.exact_gradient(lambda d: d.sum(), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="at least 2"):
        diagnostics.gradient_stats(jnp.zeros((1, 3)), jnp.zeros(3))
