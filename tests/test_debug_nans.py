"""No NaN is made on ordinary input: with ``jax.debug_nans`` and ``jax.disable_jit``, which
check every operation's output, each public function and its gradient run as jax.nn's do
(a NaN constant selected away, such as ``where(t < 0, nan, ...)``, would raise)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from registry import ENTRIES, HARD, IMAGES, SLICES

INPUTS = {SLICES: (2, 5), IMAGES: (1, 4, 4, 2)}


@pytest.mark.parametrize("name", ENTRIES)
def test_no_nan_is_made_on_ordinary_input(name):
    entry = ENTRIES[name]
    shape = INPUTS.get(entry.input, (2, 4, 4))
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)

    def total(x):
        return sum(jnp.sum(leaf) for leaf in jax.tree.leaves(entry(x)))

    with jax.debug_nans(True), jax.disable_jit():
        value = total(x)
        if entry.gradient != HARD:
            jax.grad(total)(x)
    assert np.isfinite(value)
