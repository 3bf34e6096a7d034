"""Sparse relaxations: sparsemax, 1.5-entmax and alpha-entmax, and their Fenchel-Young losses.

alpha-entmax of scores ``z = x / t`` is ``p_i = [(alpha - 1) z_i - tau]_+ ** beta`` with
``beta = 1 / (alpha - 1)`` and the threshold ``tau`` set so that ``sum(p) = 1``, found without
sorting by the shared solver of :mod:`jaxrelax._threshold` on the max-shifted scores. For
sparsemax (beta = 1) its secant steps land exactly on the root (Michelot's idea, 1986); for
other alphas they run on the ``beta``-th root of the mass, exact where the support's scores
are equal; random inputs need 3 to 10 steps, whatever their size, each one fused reduction
over the scores (``benchmarks/threshold.py``). For alpha > 2 (beta < 1), where the function
is concave, the steps are safeguarded by bisection.

References: Martins & Astudillo, From Softmax to Sparsemax, 2016,
https://arxiv.org/abs/1602.02068; Peters, Niculae & Martins, Sparse Sequence-to-Sequence
Models, 2019, https://arxiv.org/abs/1905.05702; Blondel, Martins & Niculae, Learning with
Fenchel-Young Losses, 2020, https://arxiv.org/abs/1901.02324; Correia, Niculae & Martins,
Adaptively Sparse Transformers, 2019, https://arxiv.org/abs/1909.00015; Michelot, A finite
algorithm for finding the projection of a point onto the canonical simplex of R^n, 1986.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _checks, _numerics, _soft, _threshold


def sparsemax(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Sparsemax: the Euclidean projection of ``x / temperature`` onto the simplex.

    .. math::
        \mathrm{sparsemax}(z) = \arg\min_{p \in \Delta} \lVert p - z \rVert^2
        = [z - \tau]_+, \qquad \textstyle\sum_i [z_i - \tau]_+ = 1

    Unlike softmax it puts exact zeros on low scores. Computed without sorting (see the
    module's notes), exact to rounding. The gradient is exact: the Jacobian on the support
    ``S`` is ``diag(s) - s s^T / |S|``, and the backward pass reads only the output.

    Args:
      x: the scores, any real dtype; integers are promoted to the default float, bfloat16 and
        float16 are computed in float32.
      axis: the axis, or tuple of axes (``None``: all of them), to normalise over.
      temperature: a positive scalar, or one per slice (see :func:`jaxrelax.softmax`); it
        receives a gradient.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      An array of ``x``'s shape and float dtype, non-negative, summing to 1 along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> print(jaxrelax.sparsemax(jnp.array([1.0, 0.5, -1.0])))
      [0.75 0.25 0.  ]

    References:
      Martins & Astudillo, From Softmax to Sparsemax, 2016, https://arxiv.org/abs/1602.02068

    Note:
      Optax: ``optax.projections.projection_simplex(x / temperature)`` along ``axis``
      (Optax's ``scale`` is the sum of the simplex, not a temperature), with masks.
      Masked and ``-inf`` entries are 0 with zero gradient; a slice with no unmasked finite
      entry is all zeros; ``+inf`` entries share the mass equally; NaN poisons its slice,
      value and gradient (masked entries included, as in ``jax.nn.softmax``).
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    return _entmax_public(x, 2.0, axis, temperature, where)


def entmax15(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""1.5-entmax: between softmax and sparsemax, sparse and smooth.

    .. math::
        \mathrm{entmax}_{1.5}(z)_i = [z_i / 2 - \tau]_+^2, \qquad \textstyle\sum_i p_i = 1

    with ``z = x / temperature``. Computed without sorting, exact to rounding. The gradient is
    exact: the Jacobian is ``diag(s) - s s^T / sum(s)`` with ``s = sqrt(p)``; the backward pass
    reads only the output.

    Args:
      x: the scores, any real dtype (see :func:`sparsemax`).
      axis: the axis, or tuple of axes (``None``: all of them), to normalise over.
      temperature: as in :func:`sparsemax`; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and float dtype, non-negative, summing to 1 along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> print(jaxrelax.entmax15(jnp.array([2.0, 1.0, -2.0])))
      [0.8307189  0.16928107 0.        ]

    References:
      Peters, Niculae & Martins, Sparse Sequence-to-Sequence Models, 2019,
      https://arxiv.org/abs/1905.05702

    Note:
      Masks, infinities and NaN behave as in :func:`sparsemax`.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    return _entmax_public(x, 1.5, axis, temperature, where)


def entmax(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    alpha: ArrayLike = 1.5,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""alpha-entmax: softmax at ``alpha = 1``, sparsemax at ``alpha = 2``, sparser beyond.

    .. math::
        \mathrm{entmax}_\alpha(z)_i = [(\alpha - 1) z_i - \tau]_+^{1 / (\alpha - 1)},
        \qquad \textstyle\sum_i p_i = 1

    with ``z = x / temperature``: the maximiser of ``p . z`` plus the Tsallis alpha-entropy.
    ``alpha`` may be traced (learnable sparsity, Correia et al. 2019) and receives a gradient,
    as do ``x`` and ``temperature``; the backward pass reads only the output. A concrete
    ``alpha`` of 1, 1.5 or 2 uses the dedicated paths (softmax, :func:`entmax15`,
    :func:`sparsemax`); any other is solved by the same safeguarded secant steps with ``pow``,
    slower.

    Args:
      x: the scores, any real dtype (see :func:`sparsemax`).
      alpha: ``>= 1``, a scalar or one per slice (broadcastable to ``x`` with size 1 along
        ``axis``).
      axis: the axis, or tuple of axes (``None``: all of them), to normalise over.
      temperature: as in :func:`sparsemax`.
      where: optional boolean mask broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and float dtype, non-negative, summing to 1 along ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 0.8, -1.0])
      >>> bool(jnp.allclose(jaxrelax.entmax(x, alpha=2.0), jaxrelax.sparsemax(x)))
      True
      >>> print(jaxrelax.entmax(x, alpha=1.25))
      [0.5500086 0.4329745 0.0170169]

    References:
      Peters, Niculae & Martins, Sparse Sequence-to-Sequence Models, 2019,
      https://arxiv.org/abs/1905.05702; Correia, Niculae & Martins, Adaptively Sparse
      Transformers, 2019, https://arxiv.org/abs/1909.00015

    Note:
      A concrete ``alpha < 1`` raises ValueError; a traced one is not checked (below 1 the
      result is meaningless). Masks, infinities and NaN behave as in :func:`sparsemax`.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    return _entmax_public(x, alpha, axis, temperature, where)


def sparsemax_loss(
    x: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The sparsemax (Fenchel-Young) loss of scores ``x`` against ``labels``.

    .. math::
        L(z; y) = \Omega(y) - \Omega(p) + z \cdot (p - y), \qquad
        \Omega(q) = \tfrac12 (\lVert q \rVert^2 - 1), \quad p = \mathrm{sparsemax}(z)

    with ``z = x / temperature``. Non-negative, zero exactly when ``p`` is the label; its
    gradient with respect to ``x`` is ``(p - labels) / temperature``.

    Args:
      x: the scores, any real dtype (see :func:`sparsemax`).
      labels: one-hot labels or distributions, of ``x``'s shape.
      axis: the axis, or tuple of axes (``None``: all of them), of the classes.
      temperature: as in :func:`sparsemax`.
      where: optional boolean mask broadcastable to ``x``; masked classes take no part
        (label mass on them is ignored).

    Returns:
      One loss per slice: ``x``'s shape without ``axis``, in ``x``'s float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([[2.0, 0.0, 0.0], [0.5, 0.0, 0.0]])
      >>> print(jaxrelax.sparsemax_loss(x, jnp.eye(3)[:2]))
      [0.        0.5833334]

    References:
      Martins & Astudillo, 2016; Blondel, Martins & Niculae, Learning with Fenchel-Young
      Losses, 2020, https://arxiv.org/abs/1901.02324

    Note:
      Optax: ``optax.losses.multiclass_sparsemax_loss(x, labels)`` takes integer labels;
      here ``labels`` are distributions (its labels' one-hot gives its loss), with a
      temperature, an axis and masks.
      Masked classes and ``-inf`` scores take no part (label mass on them is ignored, and
      their gradient is 0); a slice with no class left gives 0. ``+inf`` scores are the
      limit of equal, ever larger scores: the loss is finite (``Omega(labels) - Omega(p)``)
      when the labels put all their mass on them, ``+inf`` otherwise; the gradient
      ``(p - labels) / t`` stays finite. NaN scores give NaN.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    return _entmax_loss_public(x, labels, 2.0, axis, temperature, where)


def entmax_loss(
    x: ArrayLike,
    labels: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    alpha: ArrayLike = 1.5,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The alpha-entmax (Fenchel-Young) loss of scores ``x`` against ``labels``.

    .. math::
        L(z; y) = \Omega_\alpha(y) - \Omega_\alpha(p) + z \cdot (p - y), \qquad
        \Omega_\alpha(q) = \frac{\sum_i q_i^\alpha - 1}{\alpha (\alpha - 1)}

    with ``z = x / temperature`` and ``p = entmax(z, alpha)`` (at ``alpha = 1``,
    :math:`\Omega_1(q) = \sum_i q_i \log q_i` and this is the cross-entropy, less the labels'
    entropy). Non-negative, zero exactly when ``p`` is the label; its gradient with respect to
    ``x`` is ``(p - labels) / temperature``; ``alpha`` receives a gradient too.

    Args:
      x: the scores, any real dtype (see :func:`sparsemax`).
      labels: one-hot labels or distributions, of ``x``'s shape.
      alpha: ``>= 1``, as in :func:`entmax`.
      axis: the axis, or tuple of axes (``None``: all of them), of the classes.
      temperature: as in :func:`sparsemax`.
      where: optional boolean mask broadcastable to ``x`` (label mass on masked classes is
        ignored).

    Returns:
      One loss per slice: ``x``'s shape without ``axis``, in ``x``'s float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([3.0, 0.0, 0.0])
      >>> print(jaxrelax.entmax_loss(x, jnp.array([1.0, 0.0, 0.0])))
      0.0

    References:
      Peters, Niculae & Martins, 2019; Blondel, Martins & Niculae, 2020.

    Note:
      Masked classes and ``-inf`` scores take no part (label mass on them is ignored, and
      their gradient is 0); a slice with no class left gives 0. ``+inf`` scores are the
      limit of equal, ever larger scores: the loss is finite (``Omega(labels) - Omega(p)``)
      when the labels put all their mass on them, ``+inf`` otherwise; the gradient
      ``(p - labels) / t`` stays finite. NaN scores give NaN.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    return _entmax_loss_public(x, labels, alpha, axis, temperature, where)


# --- argument handling ---


def _prepare(x, alpha, axis, temperature, where):
    a = _checks.prepare(x, axis, temperature, where)
    if isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if not 1 <= alpha < float("inf"):
            raise ValueError(f"alpha must be finite and >= 1, got {alpha}")
        return a, float(alpha), jnp.asarray(alpha, a.x.dtype)
    alpha = _checks.check_per_slice(
        alpha, "alpha", a.x, a.axes, lambda v: (v >= 1) & np.isfinite(v), "finite and >= 1"
    )
    return a, None, alpha


def _entmax_public(x, alpha, axis, temperature, where):
    a, static_alpha, alpha = _prepare(x, alpha, axis, temperature, where)
    if static_alpha == 1:
        return _soft.softmax_impl(a.x, a.temperature, a.where, axes=a.axes).astype(a.dtype)
    kind = _kind(static_alpha)
    return _entmax_rule(a.x, a.temperature, alpha, a.where, a.axes, kind).astype(a.dtype)


def _entmax_loss_public(x, labels, alpha, axis, temperature, where):
    a, static_alpha, alpha = _prepare(x, alpha, axis, temperature, where)
    labels = _checks.as_real_array(labels, "labels")
    if labels.shape != a.x.shape:
        raise ValueError(f"labels of shape {labels.shape} must have x's shape {a.x.shape}")
    labels = labels.astype(a.x.dtype)
    kind = "softmax" if static_alpha == 1 else _kind(static_alpha)
    loss = _fenchel_young_rule(a.x, labels, a.temperature, alpha, a.where, a.axes, kind)
    return jnp.squeeze(loss, a.axes).astype(a.dtype)


def _kind(static_alpha):
    return {2.0: "sparsemax", 1.5: "entmax15"}.get(static_alpha, "general")


# --- the threshold ---


def _powers(kind, alpha):
    """beta = 1 / (alpha - 1), the exponent of the mass."""
    if kind == "sparsemax":
        return 1.0
    if kind == "entmax15":
        return 2.0
    return 1 / (alpha - 1)


def _power(q, exponent):
    """q ** exponent on q > 0 and 0 elsewhere, with finite derivatives at 0 (double where)."""
    positive = q > 0
    return jnp.where(positive, jnp.power(jnp.where(positive, q, 1), exponent), 0)


# The mass of an entry ``d = v - tau`` below its score ``v`` (the solver's ``param`` is
# ``beta``). For sparsemax and 1.5-entmax it is ``[d]_+ ** beta`` and the root lies in
# ``[-1, 0]``; for other alphas the threshold is offset by 1, ``(1 + d) ** beta`` for
# ``d > -1``, root in ``[0, 1]``, and computed as ``exp(beta log1p(d))``: as alpha -> 1,
# ``beta`` grows and ``d`` shrinks together, and this form keeps every digit of ``d``
# (softmax is the limit).
_BRACKETS = {"sparsemax": (-1.0, 0.0), "entmax15": (-1.0, 0.0), "general": (0.0, 1.0)}


def _general_mass(d, beta):
    inside = ~(d <= -1)  # NaN stays; a finite derivative outside (double where)
    return jnp.where(inside, jnp.exp(beta * jnp.log1p(jnp.where(inside, d, 0))), 0)


def _general_mass_beta_slope(d, beta):
    """d mass / d beta: the mass times the log of its base."""
    return _general_mass(d, beta) * jnp.log1p(jnp.maximum(d, jnp.finfo(d.dtype).eps - 1))


def _squared_hinge(d, beta):
    del beta
    r = jnp.maximum(d, 0)
    return r * r


def _root_of_mass(mass, beta):
    """``beta (mass ** (1 / beta) - 1)``: the solver's secant runs on it. It is the
    ``beta``-norm of the bases less 1, times ``beta``: convex in tau, linear wherever the
    support is fixed and its scores equal (a near-uniform slice), and precise as beta grows
    (alpha -> 1)."""
    return beta * jnp.expm1(jnp.log(mass) / beta)


_MASSES = {
    "sparsemax": _threshold.Mass(
        lambda d, beta: jnp.maximum(d, 0),
        lambda d, beta: jnp.minimum(jnp.ceil(jnp.maximum(d, 0)), 1),
    ),
    "entmax15": _threshold.Mass(
        _squared_hinge, lambda d, beta: 2 * jnp.maximum(d, 0), secant_scale=_root_of_mass
    ),
    "general": _threshold.Mass(
        _general_mass,
        lambda d, beta: beta * _power(1 + d, beta - 1),
        _general_mass_beta_slope,
        _root_of_mass,
    ),
}


def _threshold_of(v, beta, kind, axes):
    """tau with ``sum mass(v - tau) = 1`` per slice, for scores ``v <= 0`` with a maximum of 0:
    the bracket's left end is where the entry at 0 alone gives mass 1. For beta >= 1 the
    slope of the secant's scale is at most ``beta n ** (1 / beta)`` (Hoelder), a first step
    that stays left of the root."""
    lo, hi = _BRACKETS[kind]
    size = _numerics.slice_size(v.shape, axes)
    max_slope = jnp.where(beta >= 1, beta * size ** (1 / beta), jnp.inf)
    one = jnp.ones_like(beta)
    return _threshold.solve(v, one, lo, hi, _MASSES[kind], axes, beta, max_slope)


@functools.partial(jax.jit, static_argnums=(4, 5))  # eager calls reuse the compiled loop
def _entmax_value(x, temperature, alpha, where, axes, kind):
    slices = _slice_shape(x.shape, axes)
    beta = jnp.broadcast_to(jnp.asarray(_powers(kind, alpha), x.dtype), slices)
    # v = (alpha - 1) (z - max z), with z = x / t; p = mass(v - tau). shift_by_max keeps the
    # scale at least the smallest normal number, so that a huge temperature gives the uniform
    # limit, never 0 * -inf at a masked entry.
    scale = jnp.broadcast_to(alpha - 1, slices).astype(x.dtype)
    _, v = _numerics.shift_by_max(x, where, axes, scale, temperature)
    tau = _threshold_of(v, beta, kind, axes)
    mass = _MASSES[kind].value(v - tau, beta)
    if kind != "general":
        return mass
    # For alpha > 2 (beta < 1) an entry at the support's edge magnifies the threshold's
    # rounding (float32: up to 5e-4 of mass); normalising keeps the sum at 1. The power of
    # the mass maps NaN to 0: the poison keeps a NaN slice NaN.
    total = jnp.sum(mass, axes, keepdims=True)
    return mass / jnp.where(total > 0, total, 1) + _numerics.nan_poison(v, axes)


def _general_value(x, temperature, alpha, where, axes):
    """alpha-entmax for a traced alpha, which may be 1 in some slices: softmax there (the
    general formula's alpha is then replaced by 2 and its result discarded)."""
    is_one = alpha == 1
    p = _entmax_value(x, temperature, jnp.where(is_one, 2, alpha), where, axes, "general")
    return jnp.where(is_one, _soft.softmax_value(x, temperature, where, axes), p)


def _slice_shape(shape, axes):
    return tuple(1 if i in axes else n for i, n in enumerate(shape))


# --- the entmax rule ---


def _value(x, temperature, alpha, where, axes, kind):
    if kind == "softmax":
        return _soft.softmax_value(x, temperature, where, axes)
    if kind == "general":
        return _general_value(x, temperature, alpha, where, axes)
    return _entmax_value(x, temperature, alpha, where, axes, kind)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _entmax_rule(x, temperature, alpha, where, axes, kind):
    return _value(x, temperature, alpha, where, axes, kind)


def _entmax_fwd(x, temperature, alpha, where, axes, kind):
    p = _value(x, temperature, alpha, where, axes, kind)
    return p, (p, temperature, alpha)


def _entmax_vjp(p, temperature, alpha, cotangent, axes, kind):
    """Cotangents of (x, temperature, alpha) from the output alone.

    With ``w = p ** (2 - alpha)`` on the support and ``g_hat = sum(w g) / sum(w)``:
    ``dx = w (g - g_hat) / t``, ``dt = -beta sum(p (g - g_hat)) / t`` and
    ``dalpha = beta**2 sum(p (1 - (alpha - 1) log p) (g - g_hat))`` (implicit differentiation
    of ``sum(p) = 1``; Correia et al. 2019, appendix). For other alphas below 2 the last two
    are rewritten without their cancellation as alpha -> 1 (see :func:`_near_softmax_vjp`).
    """
    support = jnp.minimum(jnp.ceil(p), 1)
    if kind == "sparsemax":
        w = support
    elif kind == "entmax15":
        # sqrt(p), in arithmetic only, with a finite derivative at p = 0.
        w = jnp.sqrt(jnp.maximum(p, jnp.finfo(p.dtype).tiny)) * support
    else:
        w = _power(p, 2 - alpha)
    total = jnp.sum(w, axes, keepdims=True)
    g_hat = jnp.sum(w * cotangent, axes, keepdims=True) / jnp.maximum(
        total, jnp.finfo(p.dtype).tiny
    )
    centred = cotangent - g_hat
    p_centred = p * centred
    log_p = _numerics.safe_log(p)
    beta = 1 / (jnp.where(alpha == 1, 2, alpha) - 1)  # alpha = 1: see below
    dt = -beta * jnp.sum(p_centred, axes, keepdims=True)
    dalpha = beta**2 * jnp.sum(p_centred * (1 - (alpha - 1) * log_p), axes, keepdims=True)
    if kind == "general":
        below_two = alpha < 2
        epsilon = jnp.where(below_two, alpha, 2) - 1
        dt_near, dalpha_near = _near_softmax_vjp(p, log_p, epsilon, cotangent, axes)
        dt = jnp.where(below_two, dt_near, dt)
        dalpha = jnp.where(below_two, dalpha_near, dalpha)
    return (
        w * centred / temperature + _numerics.nan_poison(p, axes),  # NaN over a NaN slice
        _numerics.sum_to_shape(dt / temperature, temperature.shape),
        _numerics.sum_to_shape(dalpha, alpha.shape),
    )


def _near_softmax_vjp(p, log_p, epsilon, cotangent, axes):
    """(t dt, dalpha) for ``alpha = 1 + epsilon`` in [1, 2), exact at alpha = 1 (softmax).

    With ``L = log p``, ``c = g - sum(p g)`` and ``phi(u) = (expm1(u) - u) / u**2``, the
    weights are ``w = p exp(-epsilon L)`` and the formulas above become ``t dt = (epsilon C -
    A) / (1 + M)`` and ``dalpha = -C - (A - epsilon C) epsilon D / (1 + M)``, where ``A =
    sum(p L c)``, ``C = sum(p L**2 phi c)``, ``D = sum(p L**2 phi)`` and ``M = sum(p expm1(
    -epsilon L))``: no division by ``alpha - 1``, so no cancellation as alpha -> 1, where they
    tend to softmax's ``-sum(p L c)`` and to the one-sided ``-sum(p L**2 c) / 2``.
    """
    c = cotangent - jnp.sum(p * cotangent, axes, keepdims=True)
    p_l2_phi = p * log_p * log_p * _phi(-epsilon * log_p)
    a = jnp.sum(p * log_p * c, axes, keepdims=True)
    big_c = jnp.sum(p_l2_phi * c, axes, keepdims=True)
    d = jnp.sum(p_l2_phi, axes, keepdims=True)
    m = jnp.sum(p * jnp.expm1(-epsilon * log_p), axes, keepdims=True)
    dt = (epsilon * big_c - a) / (1 + m)
    return dt, -big_c - (a - epsilon * big_c) * epsilon * d / (1 + m)


def _phi(u):
    """(expm1(u) - u) / u**2, to rounding: a Taylor series near 0, where the difference
    cancels, and the formula elsewhere."""
    small = jnp.abs(u) < 0.5
    s = jnp.where(small, u, 0)
    series = 1 / 2 + s * (1 / 6 + s * (1 / 24 + s * (1 / 120 + s * (1 / 720 + s / 5040))))
    b = jnp.where(small, 1, u)
    return jnp.where(small, series, (jnp.expm1(b) - b) / (b * b))


def _entmax_bwd(axes, kind, residuals, cotangent):
    p, temperature, alpha = residuals
    return (*_entmax_vjp(p, temperature, alpha, cotangent, axes, kind), None)


_entmax_rule.defvjp(_entmax_fwd, _entmax_bwd)


# --- Fenchel-Young losses ---


def _tsallis(q, alpha, axes, kind, on_simplex=False):
    """Omega_alpha(q) = (sum q**alpha - 1) / (alpha (alpha - 1)); sum q log q at alpha = 1.

    For other alphas, ``sum q**alpha - 1`` is taken as ``sum q expm1((alpha - 1) log q)``
    plus ``sum q - 1`` (rounded to 0, or to -1 for an empty slice, when ``q`` is a prediction
    ``on_simplex``: its rounding would be magnified by ``1 / (alpha - 1)``), which keeps its
    digits as alpha -> 1.
    """
    shannon = jnp.sum(q * _numerics.safe_log(q), axes, keepdims=True)
    if kind == "softmax":
        return shannon
    if kind == "sparsemax":
        return (jnp.sum(q * q, axes, keepdims=True) - 1) / 2
    if kind == "entmax15":
        return (jnp.sum(_power(q, 1.5), axes, keepdims=True) - 1) / 0.75
    is_one = alpha == 1
    alpha = jnp.where(is_one, 2, alpha)
    gain = jnp.where(q > 0, q * jnp.expm1((alpha - 1) * _numerics.safe_log(q)), 0)
    excess = jnp.sum(gain, axes, keepdims=True) + (_total(q, axes, on_simplex) - 1)
    return jnp.where(is_one, shannon, excess / (alpha * (alpha - 1)))


def _dtsallis_dalpha(q, alpha, axes, on_simplex=False):
    """d Omega_alpha(q) / d alpha, without cancellation as alpha -> 1.

    With ``e = alpha - 1``, ``L = log q``, ``H_k = sum q L**k`` and ``phi`` as in
    :func:`_phi`, it is ``(alpha H_2 - H_1 + sum q L**2 phi(e L) (alpha e L - (2 alpha - 1)))
    / alpha**2`` less ``(2 alpha - 1) (sum q - 1) / (alpha e)**2``; at alpha = 1 it tends to
    ``H_2 / 2 - H_1``.
    """
    log_q = _numerics.safe_log(q)
    epsilon = alpha - 1
    q_l = jnp.where(q > 0, q * log_q, 0)
    h1 = jnp.sum(q_l, axes, keepdims=True)
    h2 = jnp.sum(q_l * log_q, axes, keepdims=True)
    curvature = q_l * log_q * _phi(epsilon * log_q) * (alpha * epsilon * log_q - (2 * alpha - 1))
    derivative = (alpha * h2 - h1 + jnp.sum(curvature, axes, keepdims=True)) / alpha**2
    safe = jnp.where(epsilon == 0, 1, epsilon)
    off = (2 * alpha - 1) * (_total(q, axes, on_simplex) - 1) / (alpha * safe) ** 2
    return derivative - jnp.where(epsilon == 0, 0, off)


def _total(q, axes, on_simplex):
    total = jnp.sum(q, axes, keepdims=True)
    return jnp.round(total) if on_simplex else total  # 1, or 0 for an empty slice


def _fenchel_young_fwd(x, labels, temperature, alpha, where, axes, kind):
    p = _value(x, temperature, alpha, where, axes, kind)
    takes_part = ~jnp.isneginf(x)  # NaN takes part, to poison its slice
    keep = takes_part if where is None else where & takes_part
    labels = jnp.where(keep, labels, 0)
    loss = (
        _tsallis(labels, alpha, axes, kind)
        - _tsallis(p, alpha, axes, kind, on_simplex=True)
        + _linear_term(x, p, labels, temperature, keep, axes)
    )
    return loss, (x, p, labels, temperature, alpha, keep)


def _linear_term(x, p, labels, temperature, keep, axes):
    """``x . (p - labels) / t`` per slice, where ``x`` may hold infinities and huge values
    (see :func:`_scaled_dot`).

    Entries with no difference add nothing, even where ``x`` is infinite or NaN (masked and
    ``-inf`` entries are out of ``keep``, and their labels already 0). The ``+inf`` entries of
    a slice hold ``p``'s whole mass and are taken as equal, ever larger scores (their limit):
    together they add 0 when ``labels`` put all their mass on them, and ``+inf`` when some
    label mass lies elsewhere (then the loss is ``+inf``).
    """
    difference = p - labels
    top = keep & (x == jnp.inf)
    mass_elsewhere = jnp.sum(jnp.where(keep & ~top, labels, 0), axes, keepdims=True)
    has_top = jnp.any(top, axes, keepdims=True)
    finite_sum = _scaled_dot(x, difference, keep & ~top, temperature, axes)
    return jnp.where(has_top & (mass_elsewhere != 0), jnp.inf, finite_sum)


def _scaled_dot(x, difference, include, temperature, axes):
    """``sum_i x_i d_i / t`` over the ``include``d entries with ``d_i != 0``, as
    ``(sum_i (x_i / 2) d_i) (2 / t)``: the halved sum cannot overflow (the differences of two
    distributions add up to at most 2 in absolute value), and a sum that cancels to 0 stays
    0, where terms ``x_i d_i / t`` taken one by one overflow to ``+inf`` and ``-inf`` (two
    entries of ``finfo.max`` at ``t = 1e-6``) and add up to NaN."""
    halves = jnp.where(include & (difference != 0), (x / 2) * difference, 0)
    return jnp.sum(halves, axes, keepdims=True) * (2 / temperature)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _fenchel_young_rule(x, labels, temperature, alpha, where, axes, kind):
    return _fenchel_young_fwd(x, labels, temperature, alpha, where, axes, kind)[0]


def _fenchel_young_bwd(axes, kind, residuals, cotangent):
    x, p, labels, temperature, alpha, keep = residuals
    difference = p - labels
    dx = jnp.where(keep, cotangent * difference / temperature, 0)
    linear = _scaled_dot(x, difference, keep & jnp.isfinite(x), temperature, axes)
    dt = -(linear / temperature) * cotangent
    # With +inf scores the loss is +inf, or Omega(labels) - Omega(p): constant in t.
    dt = jnp.where(jnp.any(keep & (x == jnp.inf), axes, keepdims=True), 0, dt)
    shannon_slope = 1 + _numerics.safe_log(labels)
    if kind == "softmax":
        d_labels = shannon_slope
        dalpha = jnp.zeros_like(dt)
    else:
        is_one = alpha == 1
        safe_alpha = jnp.where(is_one, 2, alpha)
        d_labels = jnp.where(
            is_one, shannon_slope, _power(labels, safe_alpha - 1) / (safe_alpha - 1)
        )
        # Envelope theorem: only Omega's explicit dependence on alpha counts.
        dalpha = cotangent * (
            _dtsallis_dalpha(labels, alpha, axes)
            - _dtsallis_dalpha(p, alpha, axes, on_simplex=True)
        )
    d_labels = cotangent * d_labels - _times_slope(jnp.where(keep, x, 0), cotangent, temperature)
    d_labels = jnp.where(keep, d_labels, 0)
    return (
        dx,
        d_labels,
        _numerics.sum_to_shape(dt, temperature.shape),
        _numerics.sum_to_shape(dalpha, alpha.shape),
        None,
    )


_fenchel_young_rule.defvjp(_fenchel_young_fwd, _fenchel_young_bwd)


def _times_slope(x, cotangent, temperature):
    """``x g / t``: the per-slice factor ``g / t`` first, so that only a true overflow
    overflows, brought into range by a power of two where it alone would underflow (t near
    finfo.max: x times a flushed 0 made NaN at +inf scores and lost finite ones) or overflow
    (a tiny t: 0 times inf). A zero cotangent gives 0, infinite scores included. (XLA rewrites
    ``(x / t) g`` as ``x (g / t)``, so that the order alone cannot be chosen.)"""
    per_slice = cotangent / temperature
    shift = jnp.where(
        jnp.abs(per_slice) < jnp.finfo(x.dtype).tiny,
        2.0**64,
        jnp.where(jnp.isinf(per_slice), 2.0**-64, 1.0),
    ).astype(x.dtype)
    scaled = (x / shift) * ((cotangent * shift) / temperature)
    return jnp.where(cotangent == 0, 0, scaled)
