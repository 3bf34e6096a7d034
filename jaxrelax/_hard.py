"""Hard (exact, zero-gradient) choices: the one-hot of the maximum, its index, its value."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from . import _checks, _numerics

TIES = ("first", "uniform")


def hardmax(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    where: ArrayLike | None = None,
    ties: str = "first",
) -> jax.Array:
    r"""The exact one-hot of the maximum along ``axis``.

    .. math::
        \mathrm{hardmax}(x)_i = [\, i = \arg\max_j x_j \,]

    ``hardmax`` is piecewise constant, so its gradient is zero everywhere; for a useful
    gradient use :func:`jaxrelax.st_hardmax` (same forward value) or :func:`jaxrelax.softmax`
    (its smooth relaxation: ``softmax(x, temperature=t)`` tends to ``hardmax(x, ties="uniform")``
    as ``t -> 0``).

    It reads ``x`` three times (a max, a NaN check, and a min over the positions of the
    maxima) and writes the result once: faster than ``jax.nn.one_hot(jnp.argmax(x), n)`` on
    CPU, where ``argmax`` does not vectorise (``benchmarks/tricks.py``, rows "keys +
    is-the-max + poison").

    Args:
      x: the scores, any real dtype; integers and booleans are promoted to the default float.
      axis: the axis, or tuple of axes (``None``: all of them), along which to choose (one
        choice per slice).
      where: optional boolean mask broadcastable to ``x``; only entries where it is True compete.
      ties: ``"first"`` picks the first maximum (the lowest index, like ``jnp.argmax``; with a
        tuple ``axis``, the first in row-major order of those axes); ``"uniform"`` gives
        ``1/m`` to each of the ``m`` tied maxima.

    Returns:
      An array of ``x``'s shape and float dtype (float32 for integer input) whose slices along
      ``axis`` are one-hot, or uniform over the tied maxima.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> jaxrelax.hardmax(jnp.array([1.0, 3.0, 3.0]))
      Array([0., 1., 0.], dtype=float32)
      >>> jaxrelax.hardmax(jnp.array([1.0, 3.0, 3.0]), ties="uniform")
      Array([0. , 0.5, 0.5], dtype=float32)

    Note:
      Masked entries are never chosen and are 0; a slice with no unmasked entry, or whose
      entries are all ``-inf``, is all zeros. ``+inf`` is a maximum like any other (two
      ``+inf`` entries tie). A NaN in an unmasked entry makes its whole slice NaN. XLA's CPU
      backend flushes subnormal numbers to zero; the comparison runs on scores scaled by 1/4
      (exact otherwise), so there scores below about ``4.7e-38`` in float32 (``4 * tiny``)
      tie with zero.
    """
    ties = _checks.check_choice(ties, "ties", TIES)
    a = _checks.prepare(x, axis, where=where)
    return hardmax_impl(a.x, None, a.where, axes=a.axes, ties=ties).astype(a.dtype)


def hardmax_impl(x, temperature, where, *, axes, ties):
    """hardmax on prepared arguments; ``temperature`` is accepted and ignored, so that the
    hard and soft computations share one signature for :func:`jaxrelax.straight_through`."""
    del temperature
    x = lax.stop_gradient(x)
    below = _numerics.below_max(x, where, axes)
    if ties == "uniform":
        at_max = 1 - below  # NaN at NaN entries, so the sum poisons the slice
        return at_max / jnp.maximum(jnp.sum(at_max, axes, keepdims=True), 1)
    positions, first = first_max_position(below, axes)
    poison = _numerics.nan_poison(_numerics.fill_masked(x, where), axes)
    if jnp.issubdtype(positions.dtype, jnp.integer):
        return (positions == first).astype(x.dtype) + poison
    # positions and first are whole numbers, so this is exactly 1 at first and 0 elsewhere.
    return 1 - jnp.minimum(jnp.abs(positions - first), 1) + poison


def argmax_impl(x, temperature, where, *, axes):
    """The index of the first maximum along the single axis in ``axes``, as a float of ``x``'s
    dtype: 0 for a fully masked slice, NaN for a slice holding NaN."""
    del temperature
    _, first = first_max_position(_numerics.below_max(x, where, axes), axes)
    index = jnp.where(first < x.shape[axes[0]], first, 0).astype(x.dtype)
    index = index + _numerics.nan_poison(_numerics.fill_masked(x, where), axes)
    return jnp.squeeze(index, axes)


def max_impl(x, temperature, where, *, axes):
    """The exact maximum over ``axes`` (kept as size-1 dims): -inf for a fully masked slice."""
    del temperature
    x = _numerics.fill_masked(lax.stop_gradient(x), where)
    return jnp.max(x, axes, keepdims=True, initial=-jnp.inf) + _numerics.nan_poison(x, axes)


def first_max_position(below, axes):
    """(positions, first): each element's row-major position in its slice, and the position
    of the slice's first maximum (the slice size if it has none), from ``below``, 1 below the
    maximum and 0 at it. NaN may be dropped: add a ``nan_poison`` to what is built from them.

    Positions are floats while ``2 * size`` is exactly representable, so that the search is
    one fused arithmetic min-reduce (``benchmarks/tricks.py``, row "float position keys");
    past that (more than 2**23 elements in float32) int32 positions and a select.
    """
    size = _numerics.slice_size(below.shape, axes)
    if 2 * size <= 2 ** (jnp.finfo(below.dtype).nmant + 1):
        positions = _numerics.slice_positions(below.shape, axes, below.dtype)
        keys = positions + size * below
        identity = jnp.inf
    else:
        positions = _numerics.slice_positions(below.shape, axes, jnp.int32)
        keys = jnp.where(below == 0, positions, size)
        identity = jnp.iinfo(jnp.int32).max
    # Seeded with min's identity (see slice_max); keys >= size mean "no maximum".
    first = jnp.min(keys, axes, keepdims=True, initial=identity)
    return positions, jnp.minimum(first, size).astype(keys.dtype)
