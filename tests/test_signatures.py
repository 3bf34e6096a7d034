"""The calling convention: only the inputs, a key, ``k``, ``q`` and the axis (and pooling's
window geometry, in flax's order) are positional; every other option is keyword-only, so that
a jax.nn habit (``entmax(x, 1)`` for axis 1) can never silently change a result."""

import inspect

import jax.numpy as jnp
import numpy as np
import pytest

import jaxrelax
from jaxrelax import diagnostics

POSITIONAL = {
    "x", "key", "logits", "labels", "k", "q", "axis", "heatmaps",
    "window_shape", "strides", "padding", "values", "indices", "spatial_shape",
    "fn", "hard_fn", "soft_fn", "f", "estimator", "exact", "samples", "shape",
}  # fmt: skip


def _public_functions():
    for name in jaxrelax.__all__:
        obj = getattr(jaxrelax, name)
        if inspect.isfunction(obj):
            yield name, obj
    for name, obj in vars(diagnostics).items():
        if inspect.isfunction(obj) and obj.__module__ == diagnostics.__name__:
            if not name.startswith("_"):
                yield f"diagnostics.{name}", obj


@pytest.mark.parametrize(
    "name, fn", [pytest.param(name, fn, id=name) for name, fn in _public_functions()]
)
def test_only_inputs_key_k_and_axis_are_positional(name, fn):
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]
    assert set(positional) <= POSITIONAL, f"{name}: {positional}"
    if "axis" in positional:  # the axis comes right after the inputs, k and q
        assert positional[-1] == "axis", f"{name}: {positional}"


def test_a_second_positional_argument_is_the_axis():
    x = jnp.array([[3.0, 1.0, 0.0], [0.5, 2.0, 1.0]])
    np.testing.assert_array_equal(jaxrelax.entmax(x, 0), jaxrelax.entmax(x, axis=0))
    assert not np.allclose(jaxrelax.entmax(x, 0), jaxrelax.entmax(x, alpha=1.0))
    with pytest.raises(TypeError):
        jaxrelax.entmax(x, -1, 1.5)
    with pytest.raises(TypeError):
        jaxrelax.entmax_loss(x, jnp.eye(3)[:2], -1, 1.5)
