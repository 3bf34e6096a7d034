"""Top-k: the exact k-hot mask and its soft (LML) and sparse (capped-simplex) relaxations.

The relaxations put ``p_i = mass(v_i - tau)`` on the max-shifted scores ``v = (x - max) / t``
with ``sum p = k``: the sigmoid (the binary-entropy, LML relaxation) or a clip to [0, 1] (the
Euclidean projection onto the capped simplex). ``tau`` comes from the shared solver of
:mod:`jaxrelax._threshold`, with no sort.

The exact mask needs the k-th largest score of each slice. Rather than sorting, it is found
bit by bit on the scores' bit patterns, mapped to integers in the same order: from the most
significant bit down, a bit is kept when at least k scores lie at or above the threshold so
far (one counting pass per bit, a radix select). Small k goes to XLA's ``TopK`` instead,
which is faster there (``SMALL_K``).

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

from . import _checks, _hard, _numerics, _perturbation, _straight_through, _threshold

TIES = ("first", "uniform")
KINDS = ("soft", "sparse")
ST_BACKWARDS = ("soft", "sparse", "identity")


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
    ties = _checks.check_choice(ties, "ties", TIES)
    a = _checks.prepare(x, axis, where=where)
    k = check_count(k, _numerics.slice_size(a.x.shape, a.axes))
    return topk_mask_impl(a.x, None, a.where, axes=a.axes, k=k, ties=ties).astype(a.dtype)


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
    ``temperature`` receive gradients too. The backward pass reads only the output, and when
    ``k`` is differentiated, the weights of the entries next to the threshold (see Note).

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
      [0.9241418  0.62245935 0.37754074 0.0758582 ]
      >>> print(p.sum().round(6))  # k, to float32's rounding
      2.0

    References:
      Amos, Koltun & Kolter, The Limited Multi-Label Projection Layer, 2019,
      https://arxiv.org/abs/1906.08707

    Note:
      Masked and ``-inf`` entries are 0 with zero gradient, even when they hold NaN; with
      ``k`` at least the number of other entries, those are exactly 1 and the gradient is
      zero. ``+inf`` entries come first: with more than ``k`` of them they share the ``k``
      units equally (a constant: zero gradient, but for ``k``). A NaN in an unmasked entry
      makes its slice NaN, value and gradient (masked entries included, as in
      ``jax.nn.softmax``). Where a huge maximum would round away the differences of the
      scores near the threshold, or the temperature is too small to place it, the result is
      computed again near the threshold, or is the limit ``t -> 0``. The first holds for
      finite maxima up to ``finfo.max / 4``; above that the differences keep the maximum's
      rounding (``sparse_topk([-15.375, 3e38, -17.52], 2, temperature=1e4)`` is
      ``[0.5, 1, 0.5]``, where float64 gives ``[0.50011, 1, 0.49989]``). A traced ``k`` outside
      ``[0, n]`` or ``temperature <= 0`` cannot be checked: ``k`` is then clipped, and a
      negative temperature gives NaN.
      Where no entry lies strictly between 0 and 1 (every slope rounds to 0; for
      :func:`sparse_topk` any exact k-hot, such as ``sparse_topk([3., 0.], 1)``), the
      derivative in ``k`` has two one-sided values, from the smallest chosen scores and from
      the largest unchosen ones (tied entries share); the gradient in ``k`` is their mean, the
      limit of soft_topk's as ``t -> 0``, and 0 where ``k`` is at least the number of finite
      entries. The gradient is read from the output: at temperatures so small that the
      outputs on one side of the threshold round to exactly 0 or 1 and those on the other
      side do not, the gradient in ``k`` leans to the other side (``soft_topk([3., 0.], 1,
      temperature=0.05)`` in float32, cotangent ``[1, 2]``: 2.0 where the exact value is 1.5).
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
    gradients too; the backward pass keeps what :func:`soft_topk`'s keeps.

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
      Masks, infinities, NaN, ``k`` (its gradient at an exact k-hot included) and the
      temperature behave as in :func:`soft_topk`.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a
      ``custom_vjp``. Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives
      (``jax.hessian``, grad of grad) work.
    """
    return _relaxed_public(x, k, axis, temperature, where, "sparse")


def st_topk(
    x: ArrayLike,
    k: int,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    ties: str = "first",
    backward: str = "soft",
) -> jax.Array:
    r"""Straight-through top-k: the exact k-hot forward, a relaxed top-k's gradient backward.

    The forward pass is ``topk_mask(x, k, axis, where=where, ties=ties)`` exactly; the
    backward pass is the vector-Jacobian product of ``soft_topk(x, k, axis,
    temperature=temperature, where=where)`` (``backward="soft"``), of ``sparse_topk`` with the
    same arguments (``"sparse"``), or passes the cotangent through unchanged (``"identity"``,
    zero at masked and ``-inf`` entries). Only the relaxation's output is saved for the
    backward pass (with ``"identity"``, a boolean array of the entries that take part).

    Args:
      x: the scores, any real dtype (see :func:`jaxrelax.soft_topk`).
      k: how many to choose, a Python int in ``[0, n]``.
      axis: the axis, or tuple of axes (``None``: all of them), of the choice.
      temperature: the relaxation's temperature in the backward pass; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``.
      ties: the forward tie policy, as in :func:`jaxrelax.topk_mask`.
      backward: ``"soft"``, ``"sparse"`` or ``"identity"``.

    Returns:
      The k-hot mask, of ``x``'s shape and float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([3.0, 1.0, 0.5, -2.0])
      >>> print(jaxrelax.st_topk(x, 2))
      [1. 1. 0. 0.]
      >>> print(jax.grad(lambda x: jaxrelax.st_topk(x, 2, backward="sparse")[1])(x) + 0.0)
      [ 0.   0.5 -0.5  0. ]

    References:
      Bengio et al., Estimating or Propagating Gradients Through Stochastic Neurons for
      Conditional Computation, 2013, https://arxiv.org/abs/1308.3432; Amos et al., 2019 and
      Sander et al., 2023 (see :func:`jaxrelax.soft_topk` and :func:`jaxrelax.sparse_topk`).

    Note:
      Masks, infinities, NaN and ties behave in the forward pass as in
      :func:`jaxrelax.topk_mask` and in the backward pass as in the relaxation; a slice
      holding NaN has a NaN gradient, with every backward pass.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a
      ``custom_vjp``. Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives
      (``jax.hessian``, grad of grad) work.
    """
    ties = _checks.check_choice(ties, "ties", TIES)
    backward = _checks.check_choice(backward, "backward", ST_BACKWARDS)
    a = _checks.prepare(x, axis, temperature, where)
    k = check_count(k, _numerics.slice_size(a.x.shape, a.axes))
    return st_topk_impl(a.x, a.temperature, a.where, a.axes, k, ties, backward).astype(a.dtype)


def gumbel_topk(
    key: ArrayLike,
    logits: ArrayLike,
    k: int,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    hard: bool = False,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""A k-subset sampled without replacement, relaxed, or straight-through with ``hard=True``.

    .. math::
        y = \mathrm{soft\_topk}(\ell + g, k, t), \qquad g_i \sim \mathrm{Gumbel}(0, 1)

    The top ``k`` of ``logits + g`` are a sample of the Plackett-Luce distribution: ``k``
    classes drawn one after another without replacement, each with probability proportional
    to ``exp(logits)`` among those left (the Gumbel-top-k trick). With ``hard=True`` the
    forward value is that exact k-hot sample and the backward pass is the vector-Jacobian
    product of the relaxed sample ``y`` with the same noise; only ``y`` is saved for it. The
    gradient reaches ``logits`` and ``temperature``; the noise is ``jax.random.gumbel(key,
    logits.shape)``. ``k = 1`` is distributed as ``gumbel_softmax(hard=True)``.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      logits: unnormalised log-probabilities, a float array (half precision computed in
        float32).
      k: the subset's size, a Python int in ``[0, n]``.
      axis: the axis, or tuple of axes (``None``: all of them), of the classes (one sample
        per slice).
      temperature: the relaxation's temperature; it receives a gradient.
      hard: whether to return the exact k-hot sample (straight-through).
      where: optional boolean mask broadcastable to ``logits``; masked classes are never
        sampled.

    Returns:
      The relaxed sample (in ``[0, 1]``, summing to ``k``) or the k-hot sample, of
      ``logits``' shape and dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> logits = jnp.log(jnp.array([0.1, 0.2, 0.3, 0.4]))
      >>> sample = jaxrelax.gumbel_topk(jax.random.key(0), logits, 2, hard=True)
      >>> float(sample.sum())
      2.0

    References:
      Kool, van Hoof & Welling, Stochastic Beams and Where to Find Them: The Gumbel-Top-k
      Trick for Sampling Sequences Without Replacement, 2019, https://arxiv.org/abs/1903.06059;
      Xie & Ermon, Reparameterizable Subset Sampling via Continuous Relaxations, 2019,
      https://arxiv.org/abs/1901.10517

    Note:
      Masked classes and ``-inf`` logits are never sampled and get zero gradient; with fewer
      than ``k`` classes left, all of them are taken; a slice with none gives zeros. ``+inf``
      logits are drawn first, and among more than ``k`` of them the noise decides. A NaN
      logit makes its slice NaN.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a
      ``custom_vjp``. Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives
      (``jax.hessian``, grad of grad) work.
    """
    key = _checks.check_key(key)
    hard = _checks.check_flag(hard, "hard")
    a = _checks.prepare(logits, axis, temperature, where, name="logits", integers=False)
    k = check_count(k, _numerics.slice_size(a.x.shape, a.axes))
    perturbed = limit_for_subsets(a, k) + jax.random.gumbel(key, a.x.shape, a.x.dtype)
    if hard:
        value = st_topk_impl(perturbed, a.temperature, a.where, a.axes, k, "first", "soft")
    else:
        k = jnp.asarray(k, a.x.dtype)
        value = relaxed_rule(perturbed, k, a.temperature, a.where, a.axes, "soft")
    return value.astype(a.dtype)


def perturbed_topk(
    key: ArrayLike,
    x: ArrayLike,
    k: int,
    axis: int | tuple[int, ...] = -1,
    *,
    num_samples: int = 100,
    sigma: ArrayLike = 1.0,
    noise: str = "gumbel",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The perturbed top-k: the k-hot mask of the largest entries averaged over noisy scores.

    .. math::
        y = \frac1M \sum_{m=1}^M \mathrm{topk\_mask}(x + \sigma Z_m, k)

    With Gumbel noise and ``sigma = 1`` each sample is a draw of ``k`` classes without
    replacement from ``softmax(x)`` (the Gumbel-top-k trick), so ``y`` estimates their
    inclusion probabilities. The backward pass is the perturbation estimate of
    :func:`perturbed`, per slice, with the noise drawn again.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      x: the scores, any real dtype; integers are promoted, half precision is computed in
        float32.
      k: how many to choose, a Python int in ``[0, n]``.
      axis: the axis, or tuple of axes (``None``: all of them), along which to choose.
      num_samples: the number of perturbations averaged, at least 1.
      sigma: the noise's scale, positive: a scalar or an array broadcastable to ``x``; it
        receives no gradient.
      noise: ``"gumbel"`` or ``"normal"``.
      where: optional boolean mask broadcastable to ``x``; only entries where it is True
        compete.

    Returns:
      The average of ``num_samples`` k-hot masks (in ``[0, 1]``, summing to
      ``min(k, number of competing entries)`` along ``axis``), of ``x``'s shape and float
      dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> y = jaxrelax.perturbed_topk(jax.random.key(0), jnp.array([0.0, 1.0, 5.0, 2.0]), 2)
      >>> print(float(y.sum()), float(y[2]))
      2.0 1.0

    References:
      Berthet, Blondel, Teboul, Cuturi, Vert & Bach, Learning with Differentiable Perturbed
      Optimizers, 2020, https://arxiv.org/abs/2002.08676; Kool, van Hoof & Welling,
      Stochastic Beams and Where to Find Them, 2019, https://arxiv.org/abs/1903.06059

    Note:
      Optax: ``optax.perturbations.make_perturbed_fun`` of a k-hot top-k mask, with
      :func:`perturbed`'s defaults (``num_samples=100``, ``sigma=1.0``, no baseline; Optax's
      are 1000, 0.1 and a baseline), an ``axis`` and masks.
      Masked entries and ``-inf`` scores are never chosen and get zero gradient; with fewer
      than ``k`` others, all of those are chosen. ``+inf`` scores are chosen first (the noise
      deciding among more than ``k`` of them) and get zero gradient. A NaN score makes its
      slice NaN. Forward mode (``jax.jvp``) is not supported: the gradient is a
      ``custom_vjp``.
    """
    a, key, sigma, plan = _perturbation.prepare_per_slice(
        key, x, axis, num_samples, sigma, noise, where
    )
    k = check_count(k, _numerics.slice_size(a.x.shape, a.axes))
    return _topk_mask(key, a.x, sigma, a.where, a.axes, plan, k).astype(a.dtype)


# --- arguments ---


def check_count(k, n: int) -> int:
    """``k`` as an int in ``[0, n]``, or an error naming it."""
    k = _checks.check_integer(k, "k", low=-_checks.MAX_INT32)
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, {n}] (the size of the reduced axes), got {k}")
    return k


def _check_mass(k, x, axes):
    n = _numerics.slice_size(x.shape, axes)
    return _checks.check_per_slice(
        k, "k", x, axes, lambda v: np.isfinite(v) & (v >= 0) & (v <= n), f"in [0, {n}]"
    )


def _relaxed_public(x, k, axis, temperature, where, kind):
    a = _checks.prepare(x, axis, temperature, where)
    k = _check_mass(k, a.x, a.axes)
    return relaxed_rule(a.x, k, a.temperature, a.where, a.axes, kind).astype(a.dtype)


# --- the exact mask ---


def topk_mask_impl(x, temperature, where, *, axes, k, ties):
    """topk_mask on prepared arguments; ``temperature`` is accepted and ignored, so that the
    hard and soft rules share one signature for :func:`jaxrelax.straight_through`."""
    del temperature
    x = lax.stop_gradient(x)
    if k == 1:
        return _hard.hardmax_impl(x, None, where, axes=axes, ties=ties)
    x = _numerics.fill_masked(x, where)
    if k == 0:
        return jnp.zeros_like(x) + _numerics.nan_poison(x, axes)
    needed = jnp.minimum(_count_taking_part(x, axes), k)
    if k <= SMALL_K and ties == "first":
        return _scatter_top_k(x, needed, axes, k) + _numerics.nan_poison(x, axes)
    competing = x > -jnp.inf  # not masked (now -inf), not -inf; NaN poisons below
    if k <= SMALL_K:
        above, band, chosen, in_band = _bracket_by_top_k(x, needed, axes, k)
    else:
        above, band, chosen, in_band = _bracket_by_counting(x, competing, needed, axes)
    # Every entry of the band ties when it holds more than the still needed ones.
    still_needed = needed - chosen
    if ties == "uniform":
        share = still_needed.astype(x.dtype) / jnp.maximum(in_band, 1).astype(x.dtype)
        mask = above.astype(x.dtype) + jnp.where(band, share, 0)
    else:
        mask = (above | _first_of(band, still_needed, in_band, axes)).astype(x.dtype)
    return jnp.where(needed > 0, mask, 0) + _numerics.nan_poison(x, axes)


def _count_taking_part(x, axes, lowest=None):
    """The entries above -inf per slice (not masked, now -inf, and not -inf or NaN): counted
    only where some slice holds -inf or NaN, which its minimum ``lowest`` tells (a count is a
    reduction with a select, which XLA's CPU backend writes out in full first)."""
    lowest = jnp.min(x, axes, keepdims=True, initial=jnp.inf) if lowest is None else lowest
    size = _numerics.slice_size(x.shape, axes)
    return lax.cond(
        jnp.all(lowest > -jnp.inf),
        lambda x: jnp.full(lowest.shape, size, jnp.int32),
        lambda x: _count(x > -jnp.inf, axes),
        x,
    )


# Up to this k, XLA's TopK finds the k-th largest score faster than counting does
# (benchmarks/tricks.py, rows "counting above SMALL_K").
SMALL_K = 64


def _count(mask, axes):
    """The number of True entries per slice, as int32."""
    return jnp.sum(mask, axes, keepdims=True, dtype=jnp.int32)


def _scatter_top_k(x, needed, axes, k):
    """The k-hot of the first ``needed`` of ``lax.top_k``'s indices (lowest index first on
    ties)."""
    rows, back = _numerics.rows_last(jnp.where(x == 0, 0, x), axes)  # -0.0 ties with 0.0
    _, indices = lax.top_k(rows, k)
    chosen = jnp.arange(k) < needed.reshape(*rows.shape[:-1], 1)
    return back(jnp.put_along_axis(jnp.zeros_like(rows), indices, chosen, -1, inplace=False))


def _bracket_by_top_k(x, needed, axes, k):
    """(above, band, count above, count in band): the entries above the ``needed``-th
    largest score and those equal to it, from ``lax.top_k`` along the reduced axes moved
    last."""
    rows, _ = _numerics.rows_last(x, axes)
    largest = lax.top_k(rows, k)[0]
    kth = jnp.take_along_axis(
        largest, jnp.maximum(needed.reshape(rows.shape[:-1] + (1,)), 1) - 1, -1
    )
    kth = kth.reshape(needed.shape)
    above = x > kth
    band = x == kth
    return above, band, _count(above, axes), _count(band, axes)


def _bracket_by_counting(x, competing, needed, axes, exact=False):
    """The same by a counting search on the scores' order-preserving integer keys (exact):
    interpolation on the scores' values, safeguarded by bisection on the keys. With
    ``exact``, the band holds exactly the entries equal to the ``needed``-th largest."""
    keys = _ordered_keys(x)
    lowest = jnp.min(jnp.where(competing, x, jnp.inf), axes, keepdims=True, initial=jnp.inf)
    highest = _numerics.slice_max(x, axes)
    lo = _ordered_keys(jnp.minimum(lowest, highest))
    hi = _ordered_keys(highest) + 1  # at or above: nothing
    count_lo = _count(competing, axes)
    lo, hi, count_lo, count_hi = _search(
        keys, needed, lo, hi, count_lo, jnp.zeros_like(count_lo), axes, _key_value(x.dtype), exact
    )
    above = keys >= hi
    band = (keys >= lo) & ~above
    return above, band, count_hi, count_lo - count_hi


def _search(keys, needed, lo, hi, count_lo, count_hi, axes, value_of=None, exact=False):
    """Narrows ``[lo, hi)`` (unsigned keys, per slice) around the ``needed``-th largest key,
    where ``count_lo = #(keys >= lo) >= needed > count_hi = #(keys >= hi)``, until ``lo`` is
    that key and ``hi = lo + 1``, or (unless ``exact``) ``count_lo = needed``: then the keys in
    ``[lo, hi)`` are those still needed, or the ties at the boundary.

    Each step counts the keys at or above one candidate (one pass). With ``value_of`` (the
    score of a key, per slice) the candidate interpolates the bracket's counts linearly in
    the scores, aimed between the needed-th and the next largest score (a count of
    ``needed + 1/2``), with the Illinois rule (an end kept twice has its weight halved), which
    converges superlinearly; where that makes no progress, or without ``value_of``, it is the
    midpoint of the keys (bisection).
    """
    bits = jnp.iinfo(keys.dtype).bits

    def done(lo, hi, count_lo, count_hi):
        found = (hi - lo <= 1) | (count_hi >= needed)
        return found if exact else found | (count_lo <= needed)

    def step(state):
        i, lo, hi, count_lo, count_hi, excess_lo, excess_hi, side = state
        candidate = lo + (hi - lo) // 2
        if value_of is not None:
            v_lo, v_hi = value_of(lo), value_of(hi - 1)
            guess = v_lo + (v_hi - v_lo) * (excess_lo / (excess_lo - excess_hi))
            key = _ordered_keys(jnp.where(jnp.isfinite(guess), guess, 0))
            inside = jnp.isfinite(guess) & (key > lo) & (key < hi)
            candidate = jnp.where(inside, key, candidate)
        at_or_above = _count(keys >= candidate, axes)
        excess = (at_or_above - needed).astype(jnp.float32) - 0.5
        up = (at_or_above >= needed) & ~done(lo, hi, count_lo, count_hi)
        down = (at_or_above < needed) & ~done(lo, hi, count_lo, count_hi)
        # Illinois: an end kept for a second step in a row counts half.
        excess_hi = jnp.where(up & (side == 1), excess_hi / 2, excess_hi)
        excess_lo = jnp.where(down & (side == -1), excess_lo / 2, excess_lo)
        return (
            i + 1,
            jnp.where(up, candidate, lo),
            jnp.where(down, candidate, hi),
            jnp.where(up, at_or_above, count_lo),
            jnp.where(down, at_or_above, count_hi),
            jnp.where(up, excess, excess_lo),
            jnp.where(down, excess, excess_hi),
            jnp.where(up, 1, jnp.where(down, -1, side)),
        )

    def keep_going(state):
        i, lo, hi, count_lo, count_hi = state[:5]
        return (i < 2 * bits + 2) & ~jnp.all(done(lo, hi, count_lo, count_hi))

    def excess_of(count):
        return (count - needed).astype(jnp.float32) - 0.5

    side = jnp.zeros(lo.shape, jnp.int32)
    init = (0, lo, hi, count_lo, count_hi, excess_of(count_lo), excess_of(count_hi), side)
    return lax.while_loop(keep_going, step, init)[1:5]


def _ordered_keys(x):
    """Unsigned integers in the order of the scores (``-0.0`` as ``0.0``): the bit pattern,
    with the sign bit flipped for positive numbers and every bit flipped for negative ones."""
    unsigned = _unsigned(x.dtype)
    bits = jnp.iinfo(unsigned).bits
    pattern = lax.bitcast_convert_type(jnp.where(x == 0, 0, x).astype(x.dtype), unsigned)
    sign = pattern >> (bits - 1)
    high = jnp.asarray(1, unsigned) << (bits - 1)
    return pattern ^ ((jnp.asarray(0, unsigned) - sign) | high)  # 0 - 1 wraps to all ones


def _key_value(dtype):
    """The inverse of :func:`_ordered_keys`, for the per-slice keys of the search."""
    unsigned = _unsigned(dtype)
    bits = jnp.iinfo(unsigned).bits
    high = jnp.asarray(1, unsigned) << (bits - 1)

    def value_of(key):
        negative = key < high
        pattern = jnp.where(negative, ~key, key ^ high)
        return lax.bitcast_convert_type(pattern, dtype)

    return value_of


def _unsigned(dtype):
    return {4: jnp.uint32, 8: jnp.uint64}[jnp.dtype(dtype).itemsize]


def _first_of(band, needed, in_band, axes):
    """The first ``needed`` entries of the ``band`` of each slice in row-major order: a search
    on positions, run only when some slice's band holds more than it needs."""
    positions = _numerics.slice_positions(band.shape, axes, jnp.int32)
    size = _numerics.slice_size(band.shape, axes)

    def break_ties(band):
        # Earlier positions get larger keys; entries out of the band get 0, below all others.
        keys = jnp.where(band, size - positions, 0).astype(jnp.uint32)
        one = jnp.ones(needed.shape, jnp.uint32)
        lo, _, _, _ = _search(keys, needed, one, one + size, in_band, 0 * in_band, axes)
        return band & (keys >= lo) & (needed > 0)

    return lax.cond(jnp.any(in_band > needed), break_ties, lambda band: band, band)


# --- the relaxations ---


# The masses of the relaxations, of ``d`` (the scores' halves less the threshold) times the
# per-slice ``scale`` (two over the temperature): a product that overflows gives the right
# limit (0 or 1), so no temperature needs a special case.


def _sigmoid(d, scale):
    return jax.nn.sigmoid(d * scale)


def _sigmoid_slope(d, scale):
    p = jax.nn.sigmoid(d * scale)
    return p * (1 - p) * scale


def _sigmoid_scale_slope(d, scale):
    p = jax.nn.sigmoid(d * scale)
    return jnp.where(jnp.isfinite(d), p * (1 - p) * d, 0)


def _clip(d, scale):
    return jnp.clip(d * scale, 0, 1)


def _clip_slope(d, scale):
    u = d * scale
    return jnp.where((u > 0) & (u < 1), scale, 0)


def _clip_scale_slope(d, scale):
    u = d * scale
    return jnp.where((u > 0) & (u < 1), d, 0)


_MASSES = {
    "soft": _threshold.Mass(
        _sigmoid, _sigmoid_slope, _sigmoid_scale_slope, lambda mass, scale: jnp.log(mass)
    ),
    "sparse": _threshold.Mass(_clip, _clip_slope, _clip_scale_slope),
}


def limit_scores(x, where, axes, scale=None):
    """(v, top, top_count): the scores less the maximum of their finite entries, times
    ``scale`` (see :func:`jaxrelax._numerics.shift_by_max`), with ``+inf`` entries (``top``)
    kept at ``+inf`` and masked ones at ``-inf``; ``top_count`` per slice. ``+inf`` is the
    limit of ever larger scores: each such entry takes a whole unit of k, before any other."""
    v, top, top_count, _ = _limit_scores(x, where, axes, scale)
    return v, top, top_count


def _limit_scores(x, where, axes, scale):
    x = _numerics.fill_masked(x, where)

    def with_top(x):
        top = x == jnp.inf
        m, v = _numerics.shift_by_max(x, ~top, axes, scale)
        top_count = jnp.sum(top, axes, keepdims=True, dtype=x.dtype)
        return jnp.where(top, jnp.inf, v), top_count, m

    def without_top(x):
        m, v = _numerics.shift_by_max(x, None, axes, scale)
        return v, jnp.zeros_like(m), m

    # Only a slice holding +inf (or NaN, which hides it from the maximum) needs the masked
    # maximum and the count; without one both branches agree. (A reduction with a select in
    # it costs several plain ones on XLA's CPU backend.)
    plain = jnp.max(x, axes, initial=-jnp.inf) < jnp.inf
    v, top_count, m = lax.cond(jnp.all(plain), without_top, with_top, x)
    return v, v == jnp.inf, top_count, m


def _finite_count_and_minimum(v, top_count, axes):
    """The number of finite scores per slice, and their minimum (at most 0): masked only
    where some slice holds -inf or NaN (see :func:`_count_taking_part`)."""
    lowest = jnp.min(v, axes, keepdims=True, initial=jnp.inf)  # +inf only where all are
    n = _count_taking_part(v, axes, lowest).astype(v.dtype) - top_count
    smallest = lax.cond(
        jnp.all(lowest > -jnp.inf),
        lambda v: jnp.minimum(lowest, 0),
        lambda v: jnp.min(jnp.where(_finite(v), v, 0), axes, keepdims=True, initial=0),
        v,
    )
    return n, smallest


def _finite(v):
    """The finite limited scores (not masked, not -inf, not +inf, not NaN)."""
    return (v > -jnp.inf) & (v < jnp.inf)


def _relaxed_value(x, k, temperature, where, axes, kind):
    # Halves of the scores less their maximum (no overflow); the scale comes in the mass.
    # (Full-size masks are recomputed where needed rather than kept: XLA writes an array
    # that a lax.cond takes to memory.)
    v, _, top_count, top_finite = _limit_scores(x, where, axes, 0.5)
    finfo = jnp.finfo(x.dtype)
    scale = jnp.clip(2 / temperature, finfo.tiny, finfo.max)
    n, smallest = _finite_count_and_minimum(v, top_count, axes)
    capacity = jnp.clip(k, 0, n + top_count)
    left = capacity - top_count  # for the finite entries
    # Ends where no threshold is needed: the +inf entries share all of k, or every finite
    # entry is taken.
    shared = left <= 0
    everything = left >= n
    top_share = capacity / jnp.maximum(top_count, 1)
    # The solver sees a well-posed problem in every slice; those two ends are set afterwards.
    n_safe = jnp.maximum(n, 2)
    left = jnp.where(shared | everything, n_safe / 2, left)
    if kind == "soft":
        # n sigmoid((vmin - lo) scale) >= left and n sigmoid((0 - hi) scale) <= left. The
        # log of the mass falls at most as fast as its tail, exp(-tau scale).
        offset = (jnp.log(left) - jnp.log(n_safe - left)) / scale
        max_slope = scale
    else:
        # Every clip((v - lo) scale) >= left / n and every clip((v - hi) scale) <= left / n.
        offset = left / n_safe / scale
        max_slope = n_safe * scale
    # Each +inf entry adds exactly 1 to the mass; a slice holding NaN gets a NaN threshold.
    total = left + top_count
    mass = _MASSES[kind]
    tau = _threshold.solve(v, total, smallest - offset, -offset, mass, axes, scale, max_slope)
    coarse = coarse_shift(top_finite, scale)

    def refine(v, tau):
        # A score nearest the threshold (the largest of those): m + 2 tau would carry the
        # maximum's rounding.
        finite = _finite(v)
        gap = jnp.where(finite, jnp.abs(v - tau), jnp.inf)
        nearest = finite & (gap == jnp.min(gap, axes, keepdims=True, initial=jnp.inf))
        anchor = jnp.max(jnp.where(nearest, x, -jnp.inf), axes, keepdims=True, initial=-jnp.inf)
        anchor = jnp.where(coarse & jnp.isfinite(anchor), anchor, 0)
        near = jnp.where(coarse & _finite(v), x / 2 - anchor / 2, v)  # masked, +-inf: as is
        # The first threshold, moved to these scores, is off by the rounding of v (at most
        # an ulp of the larger of the maximum and the anchor per score, and so for tau): a
        # bracket of 64 such ulps either side holds the root. Other slices are done at once.
        start = tau + (top_finite / 2 - anchor / 2)
        eps = jnp.finfo(x.dtype).eps
        width = jnp.where(coarse, 64 * eps * (jnp.abs(top_finite) + jnp.abs(anchor)), 0)
        again = _threshold.solve(
            near, total, start - width, start + width, mass, axes, scale, max_slope, start
        )
        return near, jnp.where(coarse, again, tau)

    v, tau = lax.cond(jnp.any(coarse), refine, lambda v, tau: (v, tau), v, tau)

    def masses(tau):
        # Double where: infinite distances (masked, -inf and +inf entries) get their limits,
        # and derivatives in the temperature (second order) stay finite there.
        d = v - tau
        finite = jnp.isfinite(d)
        p = mass.value(jnp.where(finite, d, 0), scale)
        return jnp.where(finite, p, (d > 0).astype(p.dtype))

    p = masses(tau)
    if kind == "soft":
        p = _balance(p, v, tau, total, scale, axes, masses)
    p = _settle(p, v, total, axes, kind)
    competing = v > -jnp.inf
    p = jnp.where(everything, competing.astype(x.dtype), p)
    p = jnp.where(shared, jnp.where(v == jnp.inf, top_share, 0), p) + 0 * tau  # NaN poisons
    return p, shared, (v, _finite(v))


def _balance(p, v, tau, total, scale, axes, masses):
    """soft_topk's output where its mass is flat to rounding: the chosen entries' ``1 - p``
    and the unchosen ones' ``p`` add up to a few eps of the total, the solver's resolution,
    so that the sum no longer pins the threshold (in float32, ``1 - p`` rounds to 0 below
    6e-8 while ``p`` does not). The exact root is where the two tails balance, ``sum over the
    chosen of exp(-(v - tau) s) = sum over the unchosen of exp((v - tau) s)`` (the sigmoid's
    tails are exponential there), which moves tau by half the difference of their
    log-sum-exps over ``s``, as long as no score crosses it. Its derivative is the implicit
    one (the solver's); other slices keep theirs."""
    eps = jnp.finfo(p.dtype).eps
    flat = ~(jnp.sum(p - p * p, axes, keepdims=True) > 4 * eps * jnp.maximum(total, 1))

    def balanced(p):
        finite = _finite(v)
        chosen, unchosen = finite & (v > tau), finite & (v <= tau)
        d = (v - tau) * scale

        def log_tail(side, exponent):
            return jax.nn.logsumexp(jnp.where(side, exponent, -jnp.inf), axes, keepdims=True)

        middle = tau + (log_tail(unchosen, d) - log_tail(chosen, -d)) / (2 * scale)
        low = jnp.min(jnp.where(chosen, v, jnp.inf), axes, keepdims=True, initial=jnp.inf)
        high = jnp.max(jnp.where(unchosen, v, -jnp.inf), axes, keepdims=True, initial=-jnp.inf)
        moves = flat & (middle > high) & (middle < low)  # NaN where a side is empty
        return masses(tau + lax.stop_gradient(jnp.where(moves, middle - tau, 0)))

    return lax.cond(jnp.any(flat), balanced, lambda p: p, p)


def coarse_shift(top, scale):
    """Where the finite maximum ``top`` is so large that subtracting it rounds the scaled
    differences of the scores by more than a thousand ulps (1e3 against scores near 1 in
    float32 at temperature 1, or 10 at temperature 0.01), but not near overflow: there the
    relaxations solve again on the scores less a score near the threshold, so that the
    differences that matter are exact."""
    finfo = jnp.finfo(top.dtype)
    size = jnp.abs(top)
    return (size <= finfo.max / 4) & (size * scale > 1e3)


def _settle(p, v, total, axes, kind):
    """Makes each slice's mass meet its total where the threshold could not (run only when
    some slice misses by more than rounding).

    The threshold's own rounding (one ulp, times a large scale at a small temperature) can
    leave the sum off by more than rounding: then one Newton step on the threshold, taken in
    the output, ``p - e s / sum(s)`` with ``e`` the excess and ``s`` the mass's slope
    (``p (1 - p)``, or the free set's indicator), moves it by less than an ulp. At extreme
    temperatures even that is unresolved (every ``p`` is 0 or 1): there the result is the
    limit t -> 0 instead, 1 above the ``ceil(total)``-th largest score and what is left
    shared by the entries equal to it, found by counting.
    """
    eps = jnp.finfo(p.dtype).eps
    excess = jnp.sum(p, axes, keepdims=True) - total
    off = jnp.abs(excess) > 8 * eps * jnp.maximum(total, 1)

    def settle(p):
        slope = p - p * p if kind == "soft" else jnp.ceil(p) - jnp.floor(p)
        room = jnp.sum(slope, axes, keepdims=True)
        stepped = jnp.clip(p - excess * slope / jnp.maximum(room, jnp.finfo(p.dtype).tiny), 0, 1)
        unresolved = off & ~(room > jnp.sqrt(eps) * jnp.abs(excess))

        def limit(stepped):  # counting is many passes: only where some slice needs it
            needed = jnp.ceil(total).astype(jnp.int32)
            competing = v > -jnp.inf
            above, tied, chosen, in_band = _bracket_by_counting(v, competing, needed, axes, True)
            rest = (total - chosen) / jnp.maximum(in_band, 1)
            return jnp.where(unresolved, above + jnp.where(tied, rest, 0), stepped)

        stepped = lax.cond(jnp.any(unresolved), limit, lambda stepped: stepped, stepped)
        return jnp.where(off, stepped, p)

    return lax.cond(jnp.any(off), settle, lambda p: p, p)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def relaxed_rule(x, k, temperature, where, axes, kind):
    """soft_topk (``kind="soft"``) or sparse_topk (``"sparse"``) on prepared arguments."""
    return _relaxed_value(x, k, temperature, where, axes, kind)[0]


def _relaxed_fwd(x, k, temperature, where, axes, kind):
    # Symbolic zeros tell whether k is differentiated: only then is the edge kept.
    k_perturbed = k.perturbed
    x, k, temperature = x.value, k.value, temperature.value
    where = None if where is None else where.value
    p, shared, (v, finite) = _relaxed_value(x, k, temperature, where, axes, kind)
    edge = _edge_weights(p, v, finite, axes) if k_perturbed else None
    return p, (p, shared, k, temperature, edge)


def _edge_weights(p, v, finite, axes):
    """Where no entry is strictly between 0 and 1 (an exact k-hot; or a soft one rounded),
    the one-sided derivatives in k differ: decreasing k lowers the smallest chosen scores,
    increasing it raises the largest unchosen ones (ties share). ``dk`` is their mean, which
    is also soft_topk's as ``t -> 0`` (the threshold settles midway, where both sides' slopes
    balance): weights ``1 / (2 a)`` on the ``a`` smallest chosen entries and ``1 / (2 b)`` on
    the ``b`` largest unchosen ones; 0 where either side is empty."""
    chosen, unchosen = finite & (p == 1), finite & (p == 0)
    lowest = jnp.min(jnp.where(chosen, v, jnp.inf), axes, keepdims=True, initial=jnp.inf)
    highest = jnp.max(jnp.where(unchosen, v, -jnp.inf), axes, keepdims=True, initial=-jnp.inf)
    low_edge, high_edge = chosen & (v == lowest), unchosen & (v == highest)
    a, b = (_count(edge, axes).astype(p.dtype) for edge in (low_edge, high_edge))
    weights = jnp.where(low_edge, 0.5 / a, 0) + jnp.where(high_edge, 0.5 / b, 0)
    return jnp.where((a > 0) & (b > 0), weights, 0)


def _relaxed_bwd(axes, kind, residuals, cotangent):
    """From the output alone. With ``s = p (1 - p)`` (soft) or the free set's indicator
    (sparse), ``g_hat = sum(s g) / sum(s)`` and ``c = s (g - g_hat)``: ``dx = c / t``,
    ``dk = g_hat`` and ``dt = -sum(c z) / t``, where the scores ``z = x / t`` may be replaced
    by ``logit(p)`` (soft) or ``p`` (sparse), which differ from them by ``tau`` on the
    support of ``c``, and ``sum(c) = 0``. Where ``s`` is 0 throughout a slice, ``dk`` is
    the mean of the one-sided derivatives (``_edge_weights``, kept when k is differentiated).
    In a slice whose ``+inf`` entries share k (a per-slice flag, ``shared``) the output is
    ``k / m`` there and 0 elsewhere, constant in ``x`` and ``t``: only ``dk``, the mean
    cotangent of those entries, is not 0."""
    p, shared, k, temperature, edge = residuals
    if kind == "soft":
        s = p * (1 - p)
        z = _numerics.safe_log(p) - _numerics.safe_log(1 - p)
    else:
        s = jnp.ceil(p) - jnp.floor(p)  # 1 on the free set, where 0 < p < 1
        z = p
    s = jnp.where(shared, 0, s)
    tiny = jnp.finfo(p.dtype).tiny
    total = jnp.sum(s, axes, keepdims=True)
    g_hat = jnp.sum(s * cotangent, axes, keepdims=True) / jnp.maximum(total, tiny)
    mass = jnp.sum(p, axes, keepdims=True)
    top_mean = jnp.sum(p * cotangent, axes, keepdims=True) / jnp.maximum(mass, tiny)
    if edge is not None:
        g_hat = jnp.where(total == 0, jnp.sum(edge * cotangent, axes, keepdims=True), g_hat)
    dk = jnp.where(shared, top_mean, g_hat)
    c = s * (cotangent - g_hat)
    dt = -jnp.sum(c * z, axes, keepdims=True) / temperature
    return (
        c / temperature + _numerics.nan_poison(p, axes),  # NaN over a NaN slice
        _numerics.sum_to_shape(dk, k.shape).astype(k.dtype),
        _numerics.sum_to_shape(dt, temperature.shape),
        None,
    )


relaxed_rule.defvjp(_relaxed_fwd, _relaxed_bwd, symbolic_zeros=True)


# --- straight-through, sampled and perturbed top-k ---


def st_topk_impl(x, temperature, where, axes, k, ties, backward):
    """st_topk on prepared arguments, ``k`` a Python int."""
    hard = functools.partial(topk_mask_impl, axes=axes, k=k, ties=ties)
    if backward == "identity":
        identity = functools.partial(_straight_through.masked_identity_rule, axes=axes)
        return _straight_through.straight_through_rule(hard, identity, x, temperature, where)
    soft = functools.partial(_relaxed_topk, k=k, axes=axes, kind=backward)
    return _straight_through.straight_through_rule(hard, soft, x, temperature, where)


def _relaxed_topk(x, temperature, where, *, k, axes, kind):
    return relaxed_rule(x, jnp.asarray(k, x.dtype), temperature, where, axes, kind)


def limit_for_subsets(a: _checks.Prepared, k: int) -> jax.Array:
    """The logits less the maximum of their finite entries, +inf logits kept (they are drawn
    first); in a slice with more than ``k`` +inf logits, 0 at those and -inf elsewhere, so
    that the noise decides among them. The gradient passes through unchanged: the
    relaxation's own backward pass gives 0 wherever the sample cannot move."""
    v, top, top_count = limit_scores(a.x, a.where, a.axes)
    limit = jnp.where(top_count > k, jnp.where(top, 0, -jnp.inf), v)
    return _unit_slope(a.x, limit)


@jax.custom_jvp
def _unit_slope(x, value):
    """``value``, a function of ``x`` whose first derivative is taken to be the identity (its
    own, through the masks, is needed only at second order)."""
    del x
    return value


@_unit_slope.defjvp
def _unit_slope_jvp(primals, tangents):
    return primals[1], tangents[0]


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _topk_mask(key, x, sigma, where, axes, plan, k):
    limited = limit_for_subsets(_checks.Prepared(x, axes, None, where, x.dtype), k)

    def top_k(y):
        return topk_mask_impl(y, None, None, axes=axes, k=k, ties="first")

    moving = _perturbation.moving_entries(x, where, fixed=limited == -jnp.inf)
    return _perturbation.perturbed_rule(top_k, plan, key, limited, sigma, moving)
