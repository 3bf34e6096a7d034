"""Perturbed optimizers of one choice per slice: the perturbed argmax, maximum and
Fenchel-Young loss (Berthet et al. 2020), on the perturbation estimator of
``_perturbation.py``. Each sample contributes only its winners: their count is scattered,
and the backward pass gathers the cotangent at them.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _checks, _hard, _noise, _numerics, _perturbation


def perturbed_argmax(
    key: ArrayLike,
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    num_samples: int = 100,
    sigma: ArrayLike = 1.0,
    noise: str = "gumbel",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The perturbed argmax: the one-hot of the maximum averaged over noisy scores.

    .. math::
        y = \frac1M \sum_{m=1}^M \mathrm{hardmax}(x + \sigma Z_m)

    one draw of noise per slice and sample, batched over the other axes. With Gumbel noise
    its expectation is exactly ``softmax(x / sigma)`` (the Gumbel-max trick); with normal
    noise it has no closed form. The backward pass is the perturbation estimate of
    :func:`perturbed` (here per slice: a slice's gradient comes from its own noise), with
    the same noise; it draws the noise again rather than keeping it.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      x: the scores, any real dtype; integers are promoted, half precision is computed in
        float32.
      axis: the axis, or tuple of axes (``None``: all of them), along which to choose.
      num_samples: the number of perturbations averaged, at least 1.
      sigma: the noise's scale, positive: a scalar or an array broadcastable to ``x``; it
        receives no gradient.
      noise: ``"gumbel"`` or ``"normal"``.
      where: optional boolean mask broadcastable to ``x``; only entries where it is True
        compete.

    Returns:
      The average of ``num_samples`` one-hots (multiples of ``1 / num_samples`` summing to
      1 along ``axis``), of ``x``'s shape and float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.log(jnp.array([0.2, 0.3, 0.5]))
      >>> y = jaxrelax.perturbed_argmax(jax.random.key(0), x, num_samples=10_000)
      >>> with jnp.printoptions(precision=2):  # softmax(x), within Monte-Carlo error
      ...     print(y)
      [0.2 0.3 0.5]

    References:
      Berthet, Blondel, Teboul, Cuturi, Vert & Bach, Learning with Differentiable Perturbed
      Optimizers, 2020, https://arxiv.org/abs/2002.08676

    Note:
      Optax: ``optax.perturbations.make_perturbed_fun`` of a one-hot argmax, with
      :func:`perturbed`'s defaults (``num_samples=100``, ``sigma=1.0``, no baseline; Optax's
      are 1000, 0.1 and a baseline), an ``axis`` and masks.
      Masked entries and ``-inf`` scores never win and get zero gradient; a slice with no
      entry left is all zeros. ``+inf`` scores win, the noise deciding among several (the
      limit of equal, ever larger scores), and get zero gradient, as do the others in their
      slice. A NaN score makes its slice NaN, value and gradient. Forward mode (``jax.jvp``)
      is not supported: the gradient is a ``custom_vjp``.
    """
    a, key, sigma, plan = _perturbation.prepare_per_slice(
        key, x, axis, num_samples, sigma, noise, where
    )
    return _argmax(key, a.x, sigma, a.where, a.axes, plan).astype(a.dtype)


def perturbed_max(
    key: ArrayLike,
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    num_samples: int = 100,
    sigma: ArrayLike = 1.0,
    noise: str = "gumbel",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The perturbed maximum: the maximum of noisy scores, averaged.

    .. math::
        F(x) = \frac1M \sum_{m=1}^M \max_i\, (x + \sigma Z_m)_i, \qquad
        \nabla F(x) = \frac1M \sum_{m=1}^M \mathrm{hardmax}(x + \sigma Z_m)

    The gradient is exact sample by sample (no score-function term): it is
    :func:`perturbed_argmax` with the same key, which the forward pass computes alongside and
    keeps. With Gumbel noise the expectation of ``F`` is
    ``sigma * logsumexp(x / sigma) + sigma * euler_gamma``.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      x: the scores, any real dtype; integers are promoted, half precision is computed in
        float32.
      axis: the axis, or tuple of axes (``None``: all of them), to reduce.
      num_samples: the number of perturbations averaged, at least 1.
      sigma: the noise's scale, positive: a scalar or an array broadcastable to ``x``; it
        receives no gradient.
      noise: ``"gumbel"`` or ``"normal"``.
      where: optional boolean mask broadcastable to ``x``; only entries where it is True
        compete.

    Returns:
      One value per slice: ``x``'s shape without ``axis``, in ``x``'s float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> value = jaxrelax.perturbed_max(jax.random.key(0), x, num_samples=10_000)
      >>> print(round(float(value - jax.nn.logsumexp(x)), 1))  # Euler's constant, 0.577...
      0.6

    References:
      Berthet, Blondel, Teboul, Cuturi, Vert & Bach, Learning with Differentiable Perturbed
      Optimizers, 2020, https://arxiv.org/abs/2002.08676

    Note:
      Optax: ``optax.perturbations.make_perturbed_fun`` of a max, with :func:`perturbed`'s
      defaults (``num_samples=100``, ``sigma=1.0``, no baseline; Optax's are 1000, 0.1 and a
      baseline), an ``axis`` and masks.
      Masked entries and ``-inf`` scores take no part and get zero gradient; a slice with no
      entry left gives ``-inf``, with zero gradient. A slice holding ``+inf`` gives ``+inf``;
      its ``+inf`` entries share the gradient as the noise shares the wins. A NaN score makes
      its slice NaN. Second derivatives differentiate :func:`perturbed_argmax`'s estimate.
      Forward mode (``jax.jvp``) is not supported: the gradient is a ``custom_vjp``.
    """
    a, key, sigma, plan = _perturbation.prepare_per_slice(
        key, x, axis, num_samples, sigma, noise, where
    )
    return _max(key, a.x, sigma, a.where, a.axes, plan).astype(a.dtype)


def perturbed_fy_loss(
    key: ArrayLike,
    x: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    num_samples: int = 100,
    sigma: ArrayLike = 1.0,
    noise: str = "gumbel",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The Fenchel-Young loss of the perturbed argmax, up to a constant in ``x``.

    .. math::
        L(x; y) = F(x) - \langle x, y \rangle, \qquad \nabla_x L = \hat y(x) - y

    with ``F`` :func:`perturbed_max` and ``\hat y`` :func:`perturbed_argmax` (same key, same
    noise). The full Fenchel-Young loss adds ``sigma * Omega(y)``, a function of the labels
    alone; without it ``L`` is still minimised, in expectation, where the prediction's
    expectation matches the labels, and it is non-negative in expectation for labels in the
    simplex. With Gumbel noise and one-hot labels its expectation is the softmax
    cross-entropy of ``x / sigma``, times ``sigma``, plus ``sigma * euler_gamma``.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      x: the scores, any real dtype; integers are promoted, half precision is computed in
        float32.
      labels: one-hot labels or distributions, of ``x``'s shape; they receive the gradient
        ``-x`` (0 on masked classes and ``-inf`` scores, and in a slice holding ``+inf``).
      axis: the axis, or tuple of axes (``None``: all of them), of the classes.
      num_samples: the number of perturbations averaged, at least 1.
      sigma: the noise's scale, positive: a scalar or an array broadcastable to ``x``; it
        receives no gradient.
      noise: ``"gumbel"`` or ``"normal"``.
      where: optional boolean mask broadcastable to ``x``; masked classes take no part
        (label mass on them is ignored).

    Returns:
      One loss per slice: ``x``'s shape without ``axis``, in ``x``'s float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x, labels = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.0, 0.0, 1.0])
      >>> loss, grad = jax.value_and_grad(jaxrelax.perturbed_fy_loss, 1)(
      ...     jax.random.key(0), x, labels, num_samples=10_000)
      >>> with jnp.printoptions(precision=1):  # softmax(x) - labels, within Monte-Carlo error
      ...     print(grad)
      [ 0.1  0.2 -0.3]

    References:
      Berthet, Blondel, Teboul, Cuturi, Vert & Bach, Learning with Differentiable Perturbed
      Optimizers, 2020, https://arxiv.org/abs/2002.08676; Blondel, Martins & Niculae,
      Learning with Fenchel-Young Losses, 2020, https://arxiv.org/abs/1901.02324

    Note:
      Masked classes and ``-inf`` scores take no part (label mass on them is ignored, their
      gradient is 0); a slice with no class left gives 0. ``+inf`` scores are the limit of
      equal, ever larger scores: the loss is finite when the labels put all their mass on
      them, ``+inf`` otherwise, and the gradient ``y_hat - labels`` stays finite. NaN scores
      give NaN. Forward mode (``jax.jvp``) is not supported: the gradient is a
      ``custom_vjp``.
    """
    a, key, sigma, plan = _perturbation.prepare_per_slice(
        key, x, axis, num_samples, sigma, noise, where
    )
    labels = _checks.as_real_array(labels, "labels")
    if labels.shape != a.x.shape:
        raise ValueError(f"labels of shape {labels.shape} must have x's shape {a.x.shape}")
    loss = _fy_loss(key, a.x, labels.astype(a.x.dtype), sigma, a.where, a.axes, plan)
    return loss.astype(a.dtype)


# --- the computations, once the arguments are checked ---


@functools.partial(jax.jit, static_argnums=(4, 5))
def _argmax(key, x, sigma, where, axes, plan):
    _, shifted, moving = _shift(x, where, axes)
    return _max_and_argmax_rows(key, shifted, sigma, moving, axes, plan)[1]


@functools.partial(jax.jit, static_argnums=(4, 5))
def _max(key, x, sigma, where, axes, plan):
    m, shifted, moving = _shift(x, where, axes)
    return jnp.squeeze(_exact_max_rule(key, shifted, sigma, moving, axes, plan) + m, axes)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _fy_loss(key, x, labels, sigma, where, axes, plan):
    keep = ~jnp.isneginf(x) if where is None else where & ~jnp.isneginf(x)
    labels = jnp.where(keep, labels, 0)
    m, shifted, moving = _shift(x, where, axes)
    value = _exact_max_rule(key, shifted, sigma, moving, axes, plan)
    # F(x) - <x, y> = F(x - m) + m (1 - sum y) - <x - m, y>, m the slice maximum: no
    # difference of two large numbers where the labels sum to 1, and a slice holding +inf
    # (shifted: 0 there, -inf elsewhere) gives +inf only when label mass lies off its +inf
    # entries.
    # The labels' gradient is -(m + shifted) = -x, at zero labels too; the product skips only
    # the infinitely distant entries without label mass (no 0 * -inf).
    total = jnp.sum(labels, axes, keepdims=True)
    offset = jnp.where(jnp.isinf(m), 0, m) * (1 - total)  # no inf * 0 in the labels' gradient
    counted = (labels != 0) | jnp.isfinite(shifted)
    linear = jnp.sum(jnp.where(counted, shifted, 0) * labels, axes, keepdims=True)
    loss = jnp.where(value == -jnp.inf, 0, value + offset - linear)  # -inf: no class left
    return jnp.squeeze(loss, axes)


def _shift(x, where, axes):
    """(m, shifted, moving) for one choice per slice: the slice maximum, the scores less it
    (in a slice holding +inf, 0 at those and -inf or -finfo.max elsewhere), and the entries
    that move: in a slice holding +inf, none."""
    m, shifted = _numerics.shift_by_max(x, where, axes)
    holds_posinf = jnp.any(_numerics.fill_masked(x, where) == jnp.inf, axes, keepdims=True)
    return m, shifted, _perturbation.moving_entries(x, where, fixed=holds_posinf)


# --- the perturbed argmax and maximum ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _exact_max_rule(key, shifted, sigma, moving, axes, plan):
    """The perturbed maximum of scores less their slice maximum (size-1 dims kept); its
    gradient, exact sample by sample, is the perturbed argmax, computed alongside."""
    return _exact_max_fwd(key, shifted, sigma, moving, axes, plan)[0]


def _exact_max_fwd(key, shifted, sigma, moving, axes, plan):
    # The argmax is the winners rule's output, so that second derivatives see its estimate.
    return _max_and_argmax_rows(key, shifted, sigma, moving, axes, plan)


def _exact_max_bwd(axes, plan, argmax, cotangent):
    del axes, plan
    return None, cotangent * argmax, None, None


_exact_max_rule.defvjp(_exact_max_fwd, _exact_max_bwd)


def _max_and_argmax_rows(key, shifted, sigma, moving, axes, plan):
    """(max, argmax): the perturbed maximum (size-1 dims kept) and argmax of ``shifted`` over
    ``axes``, computed on its slices laid out as the rows of a matrix (the noise is drawn in
    that layout)."""
    rows, back = _numerics.rows_last(shifted, axes)
    matrix = rows.reshape(math.prod(rows.shape[:-1]), rows.shape[-1])

    def as_matrix(v):  # a per-entry array broadcastable to the scores
        if np.ndim(v) == 0:
            return v
        return _numerics.rows_last(jnp.broadcast_to(v, shifted.shape), axes)[0].reshape(
            matrix.shape
        )

    maximum, argmax = _winners_rule(key, matrix, as_matrix(sigma), as_matrix(moving), plan)
    kept = tuple(1 if i in axes else n for i, n in enumerate(shifted.shape))
    return maximum.reshape(kept), back(argmax.reshape(rows.shape))


def _winners(plan, key, x, sigma, m):
    """Sample ``m``'s row maxima and first-maximum positions (int32, the row length for a
    row with no maximum) of ``x + sigma Z``, both of shape ``(rows, 1)``, and the noise's
    score."""
    z, score = _noise.noise_and_score(plan.noise, jax.random.fold_in(key, m), x.shape, x.dtype)
    y = x + sigma * z
    maximum = jnp.max(y, 1, keepdims=True, initial=-jnp.inf)  # NaN: see the callers' poison
    _, first = _hard.first_max_position(_numerics.below_max(y, None, (1,)), (1,))
    return maximum, first.astype(jnp.int32), score


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _winners_rule(key, x, sigma, moving, plan):
    """The perturbed maximum and argmax of the rows of the matrix ``x``, with the
    perturbation estimate as their VJP. Each sample contributes only its winners: their
    count is scattered, and the backward pass gathers the cotangent at them."""
    return _winners_fwd(key, x, sigma, moving, plan)[0]


def _winners_fwd(key, x, sigma, moving, plan):
    num_rows, n = x.shape
    row = jnp.arange(num_rows)[:, None]

    def batch_total(start, size):
        maxima, firsts, _ = jax.vmap(lambda m: _winners(plan, key, x, sigma, m))(
            start + jnp.arange(size)
        )
        counts = jnp.zeros((num_rows, n + 1), x.dtype).at[row, firsts].add(1)
        return _perturbation.sum_leading(maxima), counts[:, :n]

    total_max, counts = _perturbation.sample_sum(batch_total, plan)
    poison = _numerics.nan_poison(x, (1,))
    maximum = total_max / plan.num_samples + poison
    return (maximum, counts / plan.num_samples + poison), (key, x, sigma, moving)


def _winners_bwd(plan, residuals, cotangents):
    key, x, sigma, moving = residuals
    d_max, d_argmax = cotangents
    d_argmax = jnp.pad(d_argmax, ((0, 0), (0, 1)))  # at the row length: no winner, 0

    def batch_total(start, size):
        def one(m):
            maximum, first, score = _winners(plan, key, x, sigma, m)
            maximum = jnp.where(first < x.shape[1], maximum, 0)  # -inf in an empty row
            pair = d_max * maximum + jnp.take_along_axis(d_argmax, first, 1)
            return pair * score

        return _perturbation.sum_leading(jax.vmap(one)(start + jnp.arange(size)))

    total = _perturbation.sample_sum(batch_total, plan)
    dx = total * (moving / (plan.num_samples * sigma)) + _numerics.nan_poison(x, (1,))
    return None, dx, None, None


_winners_rule.defvjp(_winners_fwd, _winners_bwd)
