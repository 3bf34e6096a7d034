"""Random bits and the noises built from them.

``uniform`` is ``jax.random.uniform`` bit for bit with the threefry rounds unrolled into
elementwise arithmetic; the perturbation noises (Gumbel, normal) come with the gradient of
their negative log-density, the score that the perturbation estimator needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NOISES = ("gumbel", "normal")
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def uniform(key: jax.Array, shape: tuple[int, ...], dtype, minval=0.0, maxval=1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit.

    XLA's CPU backend runs JAX's threefry hash as a loop over its five groups of rounds,
    writing the whole state to memory after each; here the rounds are unrolled into
    elementwise arithmetic that fuses with what consumes the numbers (``benchmarks/tricks.py``,
    rows "unrolled threefry"). Other dtypes, key implementations and the non-partitionable
    threefry mode go to ``jax.random``.
    """
    dtype = jnp.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    if (
        dtype != jnp.float32
        or str(jax.random.key_impl(key)) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
        or size >= 2**32
    ):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    bits = _threefry_bits(key, shape)
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)  # a float in [1, 2)
    floats = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)
    low, high = np.float32(minval), np.float32(maxval)
    return jnp.maximum(low, floats * (high - low) + low)


def _threefry_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bits(key, shape)`` for a threefry key in partitionable mode and fewer
    than 2**32 numbers: the 2x32 hash of each number's flat index (high word 0), its two
    words xored."""
    k0, k1 = jax.random.key_data(key)[0], jax.random.key_data(key)[1]
    schedule = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    low = lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    x0, x1 = schedule[0], low + schedule[1]
    for group in range(5):
        for rotation in _THREEFRY_ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation)))
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0 ^ x1


def noise_and_score(noise, key, shape, dtype):
    """(z, score): a noise sample and the gradient of its negative log-density.

    Normal noise is ``jax.random.normal``'s. Gumbel noise is ``-log(-log(u))`` with ``u`` on
    the midpoints of ``jax.random.uniform``'s grid, in the open interval (0, 1):
    ``jax.random.gumbel`` maps a draw of 0 (one in 2**23 in float32) to ``finfo.tiny``, a
    Gumbel value of -4.5 that should almost never occur (probability about exp(-87)) and
    whose score, 1 - exp(4.5) = -86, would dominate a gradient estimate.
    """
    if noise == "normal":
        low = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
        z = np.array(np.sqrt(2), dtype) * lax.erf_inv(uniform(key, shape, dtype, low, 1.0))
        return z, z
    half_step = np.array(2.0 ** -(jnp.finfo(dtype).nmant + 1), dtype)
    e = -jnp.log(uniform(key, shape, dtype) + half_step)  # = exp(-z)
    return -jnp.log(e), 1 - e
