"""Tests of the random numbers (_noise.py): ``uniform`` is ``jax.random.uniform`` bit for bit,
and the perturbation noises have their laws and scores (Z = 5 standard errors, fixed keys)."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrelax import _noise

Z = 5.0
EULER_GAMMA = 0.5772156649015329


def _gumbel(key, shape, dtype=jnp.float32):
    """The documented Gumbel noise: -log(-log(u)), u on the midpoints of the uniform grid."""
    u = jax.random.uniform(key, shape, dtype) + 2.0 ** -(jnp.finfo(dtype).nmant + 1)
    return -jnp.log(-jnp.log(u))


def _score(z, kind):
    return 1 - np.exp(-z) if kind == "gumbel" else z


@pytest.mark.parametrize("shape", [(), (1,), (3, 5, 7), (0, 4), (1000,)], ids=str)
def test_uniform_is_jax_random_uniform_bit_for_bit(shape):
    tiny = float(np.finfo(np.float32).tiny)
    keys = [jax.random.key(3), jax.random.fold_in(jax.random.key(9), 5), jax.random.key(2**31)]
    for key, (low, high) in itertools.product(keys, [(0.0, 1.0), (tiny, 1.0), (-1.0, 1.0)]):
        ours = _noise.uniform(key, shape, jnp.float32, low, high)
        np.testing.assert_array_equal(ours, jax.random.uniform(key, shape, jnp.float32, low, high))


def test_uniform_falls_back_to_jax_random(x64):
    for key, dtype in [
        (jax.random.key(1), jnp.float64),
        (jax.random.key(1), jnp.bfloat16),
        (jax.random.key(1, impl="rbg"), jnp.float32),
    ]:
        ours = _noise.uniform(key, (4, 3), dtype, 0.5, 2.0)
        np.testing.assert_array_equal(ours, jax.random.uniform(key, (4, 3), dtype, 0.5, 2.0))


@pytest.mark.parametrize("kind", ["gumbel", "normal"])
def test_the_noise_and_its_score(kind):
    key = jax.random.key(7)
    z, score = _noise.noise_and_score(kind, key, (6, 50), jnp.float32)
    want = (_gumbel if kind == "gumbel" else jax.random.normal)(key, (6, 50))
    np.testing.assert_allclose(z, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(score, _score(np.float64(z), kind), rtol=2e-6, atol=2e-6)


def test_gumbel_noise_has_no_outlier_at_zero():
    # A uniform draw of 0 becomes the midpoint 2**-24, not finfo.tiny: the smallest Gumbel
    # value is -log(-log(2**-24)) = -2.81 (jax.random.gumbel's is -4.47), its score -15.6.
    z, score = _noise.noise_and_score("gumbel", jax.random.key(0), (2**23,), jnp.float32)
    assert float(z.min()) >= -2.82 and float(score.min()) >= -15.7
    with jax.enable_x64(True):
        z64, _ = _noise.noise_and_score("gumbel", jax.random.key(0), (1000,), jnp.float64)
        assert z64.dtype == jnp.float64 and np.all(np.isfinite(z64))
    # The Gumbel law: mean Euler's constant, variance pi^2 / 6.
    assert abs(float(z.mean()) - EULER_GAMMA) < Z * np.pi / np.sqrt(6 * z.size)
