"""Top-k: the exact k-hot mask and its soft (LML) and sparse (capped-simplex) relaxations.

The relaxations put ``p_i = mass(v_i - tau)`` on the max-shifted scores ``v = (x - max) / t``
with ``sum p = k``: the sigmoid (the binary-entropy, LML relaxation) or a clip to [0, 1] (the
Euclidean projection onto the capped simplex). ``tau`` comes from the shared solver of
:mod:`jaxrelax._threshold`, with no sort.

The exact mask needs the k-th largest score of each slice. Rather than sorting, it is found
bit by bit on the scores' bit patterns, mapped to integers in the same order: from the most
significant bit down, a bit is kept when at least k scores lie at or above the threshold so
far (one counting pass per bit, a radix select). Short rows and small k go to XLA's ``TopK``
instead, which is faster there.

References: Amos, Koltun & Kolter, The Limited Multi-Label Projection Layer, 2019,
https://arxiv.org/abs/1906.08707; Sander, Puigcerver, Djolonga, Peyre & Blondel, Fast,
Differentiable and Sparse Top-k: a Convex Analysis Perspective, 2023,
https://arxiv.org/abs/2302.01425
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from . import _hard, _threshold, _utils

TIES = ("first", "uniform")
KINDS = ("soft", "sparse")


def topk_mask(
    x: ArrayLike,
    k: int,
    axis: int | tuple[int, ...] = -1,
    *,
    where: ArrayLike | None = None,
    ties: str = "first",
) -> jax.Array:
    r"""The exact k-hot mask of the ``k`` largest entries along ``axis``.

    .. math::
        \mathrm{topk}(x)_i = [\, x_i \text{ is among the } k \text{ largest} \,]

    Piecewise constant, so its gradient is zero; for a useful gradient use
    :func:`jaxrelax.st_topk` (same forward value), :func:`jaxrelax.soft_topk` or
    :func:`jaxrelax.sparse_topk`. No sort: the k-th largest score is found by counting (see the
    module notes). ``k = 1`` is :func:`jaxrelax.hardmax`.

    Args:
      x: the scores, any real dtype; integers and booleans are promoted to the default float.
      k: how many to choose, a Python int in ``[0, n]`` (``n`` the size of the reduced axes).
      axis: the axis, or tuple of axes (``None``: all of them), along which to choose.
      where: optional boolean mask broadcastable to ``x``; only entries where it is True
        compete.
      ties: ``"first"`` breaks ties at the k-th value by lowest index (row-major over a tuple
        ``axis``), like ``lax.top_k``; ``"uniform"`` gives the ``m`` entries tied at the
        boundary, of which ``r`` are still needed, ``r / m`` each (the ``t -> 0`` limit of
        :func:`jaxrelax.soft_topk`).

    Returns:
      An array of ``x``'s shape and float dtype, 1 on the chosen entries and 0 elsewhere,
      summing to ``min(k, number of competing entries)`` along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> jaxrelax.topk_mask(jnp.array([1.0, 3.0, 2.0, 3.0]), 2)
      Array([0., 1., 0., 1.], dtype=float32)
      >>> jaxrelax.topk_mask(jnp.array([1.0, 3.0, 2.0, 2.0]), 2, ties="uniform")
      Array([0. , 1. , 0.5, 0.5], dtype=float32)

    Note:
      Masked and ``-inf`` entries are never chosen; with fewer than ``k`` others, all of
      those are chosen, and a slice with none is all zeros. ``+inf`` entries are chosen first.
      ``-0.0`` ties with ``0.0``. A NaN in an unmasked entry makes its slice NaN.
    """
    ties = _utils.check_choice(ties, "ties", TIES)
    a = _utils.prepare(x, axis, where=where)
    k = check_count(k, _utils.slice_size(a.x.shape, a.axes))
    return topk_mask_rule(a.x, None, a.where, axes=a.axes, k=k, ties=ties).astype(a.dtype)


def soft_topk(
    x: ArrayLike,
    k: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The soft top-k mask: the binary-entropy (LML) relaxation of :func:`topk_mask`.

    .. math::
        p_i = \sigma\big((x_i - \tau) / t\big), \qquad \textstyle\sum_i p_i = k

    the maximiser of ``p . x / t`` plus the binary entropy of each ``p_i`` over
    ``{0 <= p <= 1, sum p = k}``. Smooth, every entry in ``(0, 1)``; ``t -> 0`` gives
    ``topk_mask(x, k, ties="uniform")`` and ``t -> inf`` gives ``k / n`` everywhere. The
    threshold is found without sorting. The gradient is exact (implicit differentiation): the
    Jacobian in ``x`` is ``diag(s) - s s^T / sum(s)`` with ``s = p (1 - p) / t``; ``k`` and
    ``temperature`` receive gradients too, and the backward pass reads only the output.

    Args:
      x: the scores, any real dtype; integers are promoted to the default float, bfloat16 and
        float16 are computed in float32.
      k: the total mass, a real number in ``[0, n]`` (``n`` the size of the reduced axes), or
        one per slice (an array broadcastable to ``x`` with size 1 along ``axis``); it may be
        traced, and receives a gradient.
      axis: the axis, or tuple of axes (``None``: all of them), to choose along.
      temperature: a positive scalar, or one per slice; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      An array of ``x``'s shape and float dtype, in ``[0, 1]``, summing to
      ``min(k, number of competing entries)`` along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> p = jaxrelax.soft_topk(jnp.array([3.0, 1.0, 0.0, -2.0]), 2)
      >>> print(p)
      [0.9449... 0.6992... 0.4606... 0.0951...]
      >>> print(p.sum())
      2.0

    References:
      Amos, Koltun & Kolter, The Limited Multi-Label Projection Layer, 2019,
      https://arxiv.org/abs/1906.08707

    Note:
      Masked and ``-inf`` entries are 0 with zero gradient, even when they hold NaN; with
      ``k`` at least the number of other entries, those are exactly 1 and the gradient is
      zero. ``+inf`` entries come first: with more than ``k`` of them they share the ``k``
      units equally. A NaN in an unmasked entry makes its slice NaN. A traced ``k`` outside
      ``[0, n]`` or ``temperature <= 0`` cannot be checked: ``k`` is then clipped, and a
      negative temperature gives NaN.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a
      ``custom_vjp``. Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives
      (``jax.hessian``, grad of grad) work.
    """
    return _relaxed_public(x, k, axis, temperature, where, "soft")


def sparse_topk(
    x: ArrayLike,
    k: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The sparse top-k mask: the Euclidean projection of ``x / t`` onto the capped simplex.

    .. math::
        p = \arg\min_{0 \le p \le 1,\ \sum p = k} \lVert p - x / t \rVert^2
        = \mathrm{clip}(x / t - \tau, 0, 1)

    It has exact zeros *and* exact ones; ``k = 1`` is :func:`jaxrelax.sparsemax`. The threshold
    is found without sorting, exact to rounding, and no entry exceeds 1. The gradient is
    exact: on the free set ``F = {0 < p < 1}`` the Jacobian in ``x`` is
    ``(diag(1_F) - 1_F 1_F^T / |F|) / t``, zero elsewhere; ``k`` and ``temperature`` receive
    gradients too, and the backward pass reads only the output.

    Args:
      x: the scores, any real dtype (see :func:`soft_topk`).
      k: the total mass, as in :func:`soft_topk`.
      axis: the axis, or tuple of axes (``None``: all of them), to choose along.
      temperature: a positive scalar, or one per slice; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      An array of ``x``'s shape and float dtype, in ``[0, 1]``, summing to
      ``min(k, number of competing entries)`` along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> print(jaxrelax.sparse_topk(jnp.array([3.0, 1.0, 0.5, -2.0]), 2))
      [1.   0.75 0.25 0.  ]

    References:
      Sander, Puigcerver, Djolonga, Peyre & Blondel, Fast, Differentiable and Sparse Top-k: a
      Convex Analysis Perspective, 2023, https://arxiv.org/abs/2302.01425

    Note:
      Masks, infinities, NaN, ``k`` and the temperature behave as in :func:`soft_topk`.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a
      ``custom_vjp``. Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives
      (``jax.hessian``, grad of grad) work.
    """
    return _relaxed_public(x, k, axis, temperature, where, "sparse")


# --- arguments ---


def check_count(k, n: int) -> int:
    """``k`` as an int in ``[0, n]``, or an error naming it."""
    k = _utils.check_integer(k, "k", low=0)
    if k > n:
        raise ValueError(f"k must be in [0, {n}] (the size of the reduced axes), got {k}")
    return k


def _check_mass(k, x, axes):
    n = _utils.slice_size(x.shape, axes)
    return _utils.check_per_slice(
        k, "k", x, axes, lambda v: np.isfinite(v) & (v >= 0) & (v <= n), f"in [0, {n}]"
    )


def _relaxed_public(x, k, axis, temperature, where, kind):
    a = _utils.prepare(x, axis, temperature, where)
    k = _check_mass(k, a.x, a.axes)
    return relaxed_rule(a.x, k, a.temperature, a.where, a.axes, kind).astype(a.dtype)


# --- the exact mask ---


def topk_mask_rule(x, temperature, where, *, axes, k, ties):
    """topk_mask on prepared arguments; ``temperature`` is accepted and ignored, so that the
    hard and soft rules share one signature for :func:`jaxrelax.straight_through`."""
    del temperature
    x = lax.stop_gradient(x)
    if k == 1:
        return _hard.hardmax_rule(x, None, where, axes=axes, ties=ties)
    x = _utils.fill_masked(x, where)
    keys = _ordered_keys(x)
    # Entries that compete: not masked (filled with -inf), not -inf; NaN poisons below.
    competing = x > -jnp.inf
    count = jnp.minimum(jnp.sum(competing, axes, keepdims=True, dtype=jnp.int32), k)
    threshold = _kth_largest(keys, count, axes)
    above = keys > threshold
    tied = (keys == threshold) & competing
    still_needed = count - jnp.sum(above, axes, keepdims=True, dtype=jnp.int32)
    if ties == "uniform":
        m = jnp.sum(tied, axes, keepdims=True, dtype=jnp.int32)
        share = still_needed.astype(x.dtype) / jnp.maximum(m, 1).astype(x.dtype)
        mask = above.astype(x.dtype) + jnp.where(tied, share, 0)
    else:
        mask = (above | _first_of(tied, still_needed, axes)).astype(x.dtype)
    mask = jnp.where(count > 0, mask, 0)
    return mask + _utils.nan_poison(x, axes)


def _ordered_keys(x):
    """Unsigned integers in the order of the scores (``-0.0`` as ``0.0``): the bit pattern,
    with the sign bit flipped for positive numbers and every bit flipped for negative ones."""
    unsigned = _unsigned(x.dtype)
    bits = jnp.iinfo(unsigned).bits
    pattern = lax.bitcast_convert_type(jnp.where(x == 0, 0, x).astype(x.dtype), unsigned)
    sign = pattern >> (bits - 1)
    high = jnp.asarray(1, unsigned) << (bits - 1)
    return pattern ^ ((jnp.asarray(0, unsigned) - sign) | high)  # 0 - 1 wraps to all ones


def _unsigned(dtype):
    return {4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(dtype).itemsize]


def _kth_largest(keys, count, axes):
    """The ``count``-th largest key per slice (``count >= 1``; 0 gives the largest possible
    key), bit by bit: the largest ``t`` with at least ``count`` keys at or above it."""
    dtype = keys.dtype
    bits = jnp.iinfo(dtype).bits

    def keep_bit(i, threshold):
        candidate = threshold | (jnp.asarray(1, dtype) << (bits - 1 - i).astype(dtype))
        at_or_above = jnp.sum(keys >= candidate, axes, keepdims=True, dtype=jnp.int32)
        return jnp.where(at_or_above >= count, candidate, threshold)

    return lax.fori_loop(0, bits, keep_bit, jnp.zeros(count.shape, dtype))


def _first_of(tied, needed, axes):
    """The first ``needed`` of the ``tied`` entries of each slice in row-major order: a second
    count-based selection, on positions, run only when some slice has more ties than it
    needs."""
    positions = _utils.slice_positions(tied.shape, axes, jnp.int32)
    size = _utils.slice_size(tied.shape, axes)
    surplus = jnp.any(jnp.sum(tied, axes, keepdims=True, dtype=jnp.int32) > needed)

    def break_ties(tied):
        # Earlier positions get larger keys; untied entries get 0, below every tied one.
        keys = jnp.where(tied, size - positions, 0).astype(jnp.uint32)
        last = _kth_largest(keys, jnp.maximum(needed, 1), axes)
        return tied & (keys >= last) & (needed > 0)

    return lax.cond(surplus, break_ties, lambda tied: tied, tied)


# --- the relaxations ---


def _sigmoid(d, param, zero):
    del param, zero
    return jax.nn.sigmoid(d)


def _sigmoid_slope(d, param):
    del param
    p = jax.nn.sigmoid(d)
    return p * (1 - p)


def _clip(d, param, zero):
    del param
    return jnp.minimum(jnp.maximum(d, zero), zero + 1)


def _clip_slope(d, param):
    del param
    return ((d > 0) & (d < 1)).astype(d.dtype)


_MASSES = {
    "soft": _threshold.Mass(_sigmoid, _sigmoid_slope),
    "sparse": _threshold.Mass(_clip, _clip_slope),
}


def _relaxed_value(x, k, temperature, where, axes, kind):
    _, v = _utils.shift_by_max(x, where, axes, 1 / temperature)
    competing = v > -jnp.inf
    n = jnp.sum(competing, axes, keepdims=True).astype(x.dtype)
    capacity = jnp.clip(k, 0, n)
    everything = capacity >= n  # also a slice with nothing in it
    nothing = capacity <= 0
    # The solver sees a well-posed problem in every slice; the two ends are set afterwards.
    n_safe = jnp.maximum(n, 2)
    capacity_safe = jnp.where(everything | nothing, n_safe / 2, capacity)
    smallest = jnp.min(jnp.where(competing, v, 0), axes, keepdims=True)
    if kind == "soft":
        # n sigmoid(vmin - lo) >= capacity and n sigmoid(0 - hi) <= capacity.
        offset = jnp.log(capacity_safe) - jnp.log(n_safe - capacity_safe)
        max_slope = n_safe / 4
    else:
        # Every clip(v - lo) >= capacity / n and every clip(v - hi) <= capacity / n.
        offset = capacity_safe / n_safe
        max_slope = n_safe
    lo, hi = smallest - offset, -offset
    tau = _threshold.solve(v, capacity_safe, lo, hi, _MASSES[kind], axes, max_slope=max_slope)
    p = _MASSES[kind].value(v - tau, None, _utils.slice_zero(tau))
    p = jnp.where(nothing, 0, p)
    return jnp.where(everything & ~nothing, competing.astype(x.dtype), p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def relaxed_rule(x, k, temperature, where, axes, kind):
    """soft_topk (``kind="soft"``) or sparse_topk (``"sparse"``) on prepared arguments."""
    return _relaxed_value(x, k, temperature, where, axes, kind)


def _relaxed_fwd(x, k, temperature, where, axes, kind):
    p = _relaxed_value(x, k, temperature, where, axes, kind)
    return p, (p, k, temperature)


def _relaxed_bwd(axes, kind, residuals, cotangent):
    """From the output alone. With ``s = p (1 - p)`` (soft) or the free set's indicator
    (sparse), ``g_hat = sum(s g) / sum(s)`` and ``c = s (g - g_hat)``: ``dx = c / t``,
    ``dk = g_hat`` and ``dt = -sum(c z) / t``, where the scores ``z = x / t`` may be replaced
    by ``logit(p)`` (soft) or ``p`` (sparse), which differ from them by ``tau`` on the
    support of ``c``, and ``sum(c) = 0``."""
    p, k, temperature = residuals
    if kind == "soft":
        s = p * (1 - p)
        z = _utils.safe_log(p) - _utils.safe_log(1 - p)
    else:
        s = jnp.ceil(p) - jnp.floor(p)  # 1 on the free set, where 0 < p < 1
        z = p
    total = jnp.sum(s, axes, keepdims=True)
    g_hat = jnp.sum(s * cotangent, axes, keepdims=True) / jnp.maximum(
        total, jnp.finfo(p.dtype).tiny
    )
    c = s * (cotangent - g_hat)
    dt = -jnp.sum(c * z, axes, keepdims=True) / temperature
    return (
        c / temperature,
        _utils.sum_to_shape(g_hat, k.shape).astype(k.dtype),
        _utils.sum_to_shape(dt, temperature.shape),
        None,
    )


relaxed_rule.defvjp(_relaxed_fwd, _relaxed_bwd)
