"""Numerics of masks, infinities, NaN and the slice maximum, and slice arithmetic.

These helpers are the only places that know how masked entries, infinities and NaN are
handled; every relaxation builds on them.

The code is plain jnp except for two forms that ``benchmarks/tricks.py`` shows paying on
XLA's CPU backend (a select in a fused kernel costs a pass over memory there): the shift by
the maximum computed from halved scores (:func:`shift_by_max`, rows "halving shift") and
the test for the maximum by ``ceil`` arithmetic (:func:`below_max`, row "arithmetic
is-the-max").
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def sum_to_shape(value: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a broadcast result back to ``shape`` (the transpose of broadcasting)."""
    lead = value.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and value.shape[lead + i] != 1
    )
    return jnp.sum(value, axes).reshape(shape) if axes else value.reshape(shape)


def fill_masked(x: jax.Array, where: jax.Array | None) -> jax.Array:
    """Sets masked entries to -inf; a masked entry, even NaN, then takes no part."""
    return x if where is None else jnp.where(where, x, -jnp.inf)


def slice_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """The maximum over ``axes`` (kept as size-1 dims), at least the lowest finite value.

    An empty or all -inf slice gives the lowest finite value rather than -inf, so that
    ``x - max`` never computes ``-inf - (-inf)``; +inf stays +inf. NaN may or may not
    propagate (see :func:`nan_poison`). No gradient flows through. (The reduction is seeded
    with -inf, the identity of max: XLA takes the seed as neutral and drops it on a size-1
    axis, so the clamp to the lowest value must come after.)
    """
    largest = jnp.max(lax.stop_gradient(x), axes, keepdims=True, initial=-jnp.inf)
    return jnp.maximum(largest, jnp.finfo(x.dtype).min)


def safe_log(p: jax.Array) -> jax.Array:
    """log p with log 0 replaced by a finite value (always multiplied by p = 0)."""
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def shift_by_max(
    x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], scale=None, temperature=None
):
    """(m, shifted): the slice maximum of the masked scores, and ``(x - m) * scale /
    temperature`` in ``[-inf, 0]`` (``scale`` and ``temperature``, per slice and positive,
    default to 1; see :func:`halves_factor`): masked and ``-inf``
    entries are ``-inf``, NaN entries NaN, and in a slice holding ``+inf`` the ``+inf`` entries
    are 0 and all others ``-inf`` (the limit of equal, ever larger scores: ``+inf`` beats the
    largest finite value). ``m`` is ``+inf`` there, and ``-inf`` for an empty slice.
    Gradients flow to ``x`` with slope ``scale / temperature``.

    The scores are halved and capped at the largest finite value: exact and order-preserving
    for finite scores (subnormal halves flush to zero on XLA's CPU backend), while ``+inf``
    maps strictly above every finite half, so the shifted scores need no clamp. A ``scale``
    folds into the doubling, so that this costs four arithmetic operations per entry.
    """
    x = fill_masked(x, where)
    top = _scaled_top(x, axes, 0.5)  # the largest finite value when the slice holds +inf
    return max_of_top(top), shift_from_top(x, top, scale, temperature)


def halved_top(maximum: jax.Array) -> jax.Array:
    """The ``top`` of :func:`shift_from_top` for a given maximum (of a slice or a window):
    half of it, at least half the lowest finite value and at most the largest."""
    return _scaled_or_top(jnp.maximum(maximum, jnp.finfo(maximum.dtype).min), 0.5)


def max_of_top(top: jax.Array) -> jax.Array:
    """The maximum that ``top`` was halved from: ``+inf`` where it was capped."""
    return jnp.where(top == jnp.finfo(top.dtype).max, jnp.inf, 2 * top)


def shift_from_top(x: jax.Array, top: jax.Array, scale=None, temperature=None) -> jax.Array:
    """``(x - max) * scale / temperature`` computed from halves, as in :func:`shift_by_max`;
    ``top`` is :func:`halved_top` of the maximum, and no gradient flows to it."""
    if scale is None and temperature is None:
        return _shift_halves(x, top, jnp.asarray(2, x.dtype))
    scale = 1 if scale is None else scale
    return _shift_halves(x, top, inf_wins(top, halves_factor(scale, x.dtype, temperature)))


def inf_wins(top: jax.Array, factor: jax.Array) -> jax.Array:
    """``factor``, or the largest finite value where ``top`` is capped (the slice holds
    ``+inf``): there every finite half lies at least ``fmax / 2`` below ``top``, so that
    scaled by it they are ``-inf``, as the limit wants, where a factor below about
    ``2 / fmax`` (a temperature near the largest finite value) would leave them finite."""
    fmax = jnp.finfo(factor.dtype).max
    return jnp.where(top == fmax, fmax, factor)


def halves_factor(scale, dtype, temperature=None) -> jax.Array:
    """``2 * scale / temperature``, the factor that turns halved differences into scaled
    ones. Divided last: ``1 / t`` alone is subnormal in float32 beyond ``t = 8.5e37`` and
    flushed, where ``2 / t`` stays normal up to ``t = 1.7e38``. Clipped so that a huge
    temperature gives the uniform limit, never 0 * -inf at a masked entry, and a tiny one the
    hard limit, never inf * 0 at the maximum; a (traced) negative scale or temperature gives
    NaN (from ``sqrt``, so that no NaN constant is made for a valid one)."""
    finfo = jnp.finfo(dtype)
    factor = 2 * scale if temperature is None else 2 * scale / temperature
    negative_poison = 0 * jnp.sqrt(jnp.minimum(lax.stop_gradient(factor), 1))
    return (jnp.clip(factor, finfo.tiny, finfo.max) + negative_poison).astype(dtype)


def capped_half(x: jax.Array) -> jax.Array:
    """``min(x / 2, fmax)``: the halves :func:`shift_from_top` subtracts ``top`` from."""
    return _scaled_or_top(x, 0.5)


@jax.custom_jvp
def _shift_halves(x, top, factor):
    """``(min(x / 2, fmax) - top) * factor``, with the derivative ``factor / 2`` in ``x`` (as
    if uncapped: the backward pass keeps no mask of the capped entries) and none in ``top``."""
    return (_scaled_or_top(x, 0.5) - top) * factor


def _shift_halves_jvp(primals, tangents):
    x, top, factor = primals
    dx, _, dfactor = tangents
    value = _shift_halves(x, top, factor)
    tangent = jnp.zeros_like(value)
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
        tangent = dx * (factor / 2)
    if not isinstance(dfactor, jax.custom_derivatives.SymbolicZero):
        tangent = tangent + (_scaled_or_top(x, 0.5) - top) * dfactor
    return value, tangent


_shift_halves.defjvp(_shift_halves_jvp, symbolic_zeros=True)


def _scaled_top(x: jax.Array, axes: tuple[int, ...], factor: float) -> jax.Array:
    """The slice maximum of the scaled, capped scores. Scaling and capping are monotone, so it
    is taken of the plain maximum: the reduction reads ``x`` itself, and XLA does not write
    the scaled scores to memory for two consumers."""
    return _scaled_or_top(slice_max(x, axes), factor)


def _scaled_or_top(x: jax.Array, factor: float) -> jax.Array:
    return jnp.minimum(x * factor, jnp.finfo(x.dtype).max)


def below_max(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> jax.Array:
    """1 where ``x`` is below its slice's (masked) maximum, 0 at a maximum; masked and
    ``-inf`` entries are 1 (below), and ``+inf`` entries beat the largest finite value.

    As in :func:`shift_by_max`, the scores are scaled down and capped at the largest finite
    value, here by 1/4: then the scaled scores are exactly equal at a maximum and below it
    otherwise (scores below about ``4 * tiny`` flush to zero), and ``ceil`` maps any positive
    gap, however small, to at least 1. Quartering where :func:`shift_by_max` halves leaves XLA
    no full-size expression to share (and write to memory) when both run on the same scores,
    as in ``st_hardmax``. NaN may be dropped.
    """
    x = fill_masked(lax.stop_gradient(x), where)
    top = _scaled_top(x, axes, 0.25)
    quarters = jnp.minimum(x * 0.25, jnp.finfo(x.dtype).max)
    return jnp.minimum(jnp.ceil(top - quarters), 1)


def nan_poison(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """0 per slice of ``x``, or NaN where the slice holds NaN (infinities give 0).

    Adding it to the result of a min- or max-reduction makes NaN propagate: sums propagate NaN
    on every backend, while XLA's CPU min/max reductions drop it on long slices. (``sign``
    keeps infinities from summing to NaN; unlike ``where(isnan(x).any(), nan, 0)`` it makes no
    NaN constant, so ``jax.debug_nans`` stays quiet on valid input.)
    """
    return 0 * jnp.sum(jnp.sign(x), axes, keepdims=True)


def slice_positions(shape: tuple[int, ...], axes: tuple[int, ...], dtype) -> jax.Array:
    """Row-major position of each element within its slice over ``axes``, broadcastable to
    ``shape``."""
    position = jnp.zeros((1,) * len(shape), dtype)
    stride = 1
    for a in reversed(axes):
        view = [1] * len(shape)
        view[a] = shape[a]
        position = position + stride * jnp.arange(shape[a], dtype=dtype).reshape(view)
        stride *= shape[a]
    return position


def rows_last(x: jax.Array, axes: tuple[int, ...]):
    """``x`` with the reduced axes moved last and flattened into one, and the inverse."""
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, kept + list(axes))
    rows = moved.reshape(*moved.shape[: len(kept)], slice_size(x.shape, axes))  # -1: not at 0

    def back(y):
        return jnp.transpose(y.reshape(moved.shape), np.argsort(kept + list(axes)))

    return rows, back


def to_layout(x: jax.Array, channel_axis: int | None, position: int):
    """``x`` with its channel axis (from :func:`_checks.check_channel_axis`) moved to
    ``position`` (a negative index), or a channel axis of size 1 put there where it has none;
    and the inverse for an array of ``x``'s rank, its channels at ``position``."""
    if channel_axis is None:
        return jnp.expand_dims(x, position), lambda y: jnp.squeeze(y, position)
    return jnp.moveaxis(x, channel_axis, position), lambda y: jnp.moveaxis(
        y, position, channel_axis
    )


def per_slice_to_layout(value, ndim: int, channel_axis: int | None, position: int):
    """A per-slice parameter broadcastable to an array of ``ndim`` dimensions, laid out as
    :func:`to_layout` lays out that array (scalars stay scalars)."""
    rank = getattr(value, "ndim", 0)
    if rank == 0 or rank > ndim:
        return value  # a scalar, or an error for the checks to report
    value = jnp.reshape(value, (1,) * (ndim - rank) + tuple(value.shape))
    return to_layout(value, channel_axis, position)[0]


def slice_size(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return int(np.prod([shape[a] for a in axes], dtype=np.int64))
