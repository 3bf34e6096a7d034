"""Straight-through estimators: the forward value of a hard choice, the gradient of a soft one.

Unlike the common ``soft + stop_gradient(hard - soft)`` trick, whose forward value can differ
from ``hard`` by rounding (for a max, say), these return the hard value exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _checks, _hard, _numerics, _soft

BACKWARDS = ("softmax", "identity")


def straight_through(hard_fn: Callable, soft_fn: Callable) -> Callable:
    r"""Builds a straight-through estimator from a hard function and its soft surrogate.

    The returned function ``f`` has the forward value ``f(*args) == hard_fn(*args)`` exactly,
    and its backward pass is the vector-Jacobian product of ``soft_fn(*args)``:

    .. math::
        f(a) = h(a), \qquad \bar a = \bar f \, \partial s(a).

    Both functions take the same positional arguments (pytrees of arrays; bind static options
    with ``functools.partial``) and must return the same structure of arrays with the same
    shapes and dtypes. Only what the VJP of ``soft_fn`` needs is saved for the backward pass.
    Higher-order derivatives differentiate that VJP.

    Args:
      hard_fn: the forward function (typically piecewise constant).
      soft_fn: the surrogate whose gradient is used.

    Returns:
      The straight-through function of ``*args``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> st_round = jaxrelax.straight_through(jnp.round, lambda x: x)
      >>> print(st_round(jnp.array(1.7)), jax.grad(st_round)(1.7))
      2.0 1.0

    References:
      Bengio et al., Estimating or Propagating Gradients Through Stochastic Neurons for
      Conditional Computation, 2013, https://arxiv.org/abs/1308.3432

    Note:
      ``hard_fn`` and ``soft_fn`` are traced once more, abstractly, to check their outputs;
      a mismatch raises ValueError naming both. Only the positional arguments receive
      gradients: a value that ``soft_fn`` closes over (a parameter being trained, say)
      silently gets none, so pass it as an argument.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """

    @functools.wraps(hard_fn)
    def estimator(*args):
        hard = jax.eval_shape(hard_fn, *args)
        soft = jax.eval_shape(soft_fn, *args)
        if jax.tree.structure(hard) != jax.tree.structure(soft) or any(
            (h.shape, h.dtype) != (s.shape, s.dtype)
            for h, s in zip(jax.tree.leaves(hard), jax.tree.leaves(soft), strict=True)
        ):
            raise ValueError(
                "hard_fn and soft_fn must return the same structure of arrays with the same "
                f"shapes and dtypes; hard_fn gives {hard}, soft_fn gives {soft}"
            )
        return straight_through_rule(hard_fn, soft_fn, *args)

    return estimator


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def straight_through_rule(hard_fn, soft_fn, *args):
    return hard_fn(*args)


def _straight_through_fwd(hard_fn, soft_fn, *args):
    _, soft_vjp = jax.vjp(soft_fn, *args)
    return hard_fn(*args), soft_vjp


def _straight_through_bwd(hard_fn, soft_fn, soft_vjp, cotangent):
    del hard_fn, soft_fn
    return soft_vjp(cotangent)


straight_through_rule.defvjp(_straight_through_fwd, _straight_through_bwd)


def st_hardmax(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    ties: str = "first",
    backward: str = "softmax",
) -> jax.Array:
    r"""Straight-through hardmax: the exact one-hot forward, a softmax gradient backward.

    The forward pass is ``hardmax(x, axis, where=where, ties=ties)`` exactly; the backward pass
    is the vector-Jacobian product of ``softmax(x, axis, temperature=temperature,
    where=where)`` (``backward="softmax"``), or passes the cotangent through unchanged
    (``backward="identity"``, zero at masked and ``-inf`` entries). The backward pass keeps
    what softmax's own keeps; with ``backward="identity"``, a boolean array of the entries
    that take part and a NaN flag per slice.

    Args:
      x: the scores, any real dtype (see :func:`jaxrelax.softmax`).
      axis: the axis, or tuple of axes (``None``: all of them), of the choice.
      temperature: the softmax temperature of the backward pass; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``.
      ties: the forward tie policy, as in :func:`jaxrelax.hardmax`.
      backward: ``"softmax"`` or ``"identity"``.

    Returns:
      The one-hot of ``x``'s shape and float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jaxrelax.st_hardmax(x))
      [0. 0. 1.]
      >>> print(jax.grad(lambda x: jaxrelax.st_hardmax(x)[2])(x))
      [-0.0599 -0.1628  0.2227]

    References:
      Bengio et al., Estimating or Propagating Gradients Through Stochastic Neurons for
      Conditional Computation, 2013, https://arxiv.org/abs/1308.3432

    Note:
      Masks, infinities, NaN and ties behave in the forward pass as in
      :func:`jaxrelax.hardmax` and in the backward pass as in :func:`jaxrelax.softmax`: tied
      maxima get equal gradients whatever ``ties`` says. A slice holding NaN has a NaN
      gradient, with either backward pass.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    ties = _checks.check_choice(ties, "ties", _hard.TIES)
    backward = _checks.check_choice(backward, "backward", BACKWARDS)
    a = _checks.prepare(x, axis, temperature, where)
    if backward == "softmax":
        value = st_hardmax_impl(a.x, a.temperature, a.where, axes=a.axes, ties=ties)
    else:
        hard = functools.partial(_hard.hardmax_impl, axes=a.axes, ties=ties)
        identity = functools.partial(masked_identity_rule, axes=a.axes)
        value = straight_through_rule(hard, identity, a.x, a.temperature, a.where)
    return value.astype(a.dtype)


def st_argmax(
    x: ArrayLike,
    axis: int = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Straight-through argmax: the exact index forward, the expected index's gradient backward.

    The forward pass is the index of the first maximum along ``axis``, as a float (like
    ``jnp.argmax``, but masked and NaN-aware); the backward pass is the vector-Jacobian product
    of :func:`jaxrelax.soft_argmax` with the same temperature and mask.

    Args:
      x: the scores, any real dtype (see :func:`jaxrelax.softmax`).
      axis: the single axis of the index, or ``None`` for the flat (row-major) index over all
        axes, as ``jnp.argmax(axis=None)``.
      temperature: the temperature of the backward pass; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``.

    Returns:
      The index, ``x`` reduced over ``axis``, in ``x``'s float dtype. (bfloat16 represents
      whole numbers exactly only up to 256: pass float32 scores for longer axes.)

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 3.0, 2.0])
      >>> print(jaxrelax.st_argmax(x))
      1.0
      >>> print(jax.grad(jaxrelax.st_argmax)(x))
      [-0.1040 -0.1029  0.2069...]

    Note:
      A fully masked slice gives 0; a NaN in an unmasked entry gives NaN; ties give the first
      maximum forward and equal gradients backward.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    a = _checks.prepare(x, axis, temperature, where, single_axis=True)
    hard = functools.partial(_hard.argmax_impl, axes=a.axes)
    soft = functools.partial(_soft.soft_argmax_impl, axes=a.axes)
    return straight_through_rule(hard, soft, a.x, a.temperature, a.where).astype(a.dtype)


def st_max(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    method: str = "logsumexp",
    keepdims: bool = False,
) -> jax.Array:
    r"""Straight-through max: the exact maximum forward, a smooth maximum's gradient backward.

    The forward pass is ``max(x)`` over ``axis`` (over unmasked entries); the backward pass is
    the vector-Jacobian product of :func:`jaxrelax.smooth_max` with the same temperature,
    mask and ``method``. With ``method="logsumexp"`` that gradient is ``softmax(x / t)``,
    which spreads the gradient of a max-pool over near-maxima.

    Args:
      x: the scores, any real dtype (see :func:`jaxrelax.softmax`).
      axis: the axis, or tuple of axes (``None``: all of them), to reduce.
      temperature: the temperature of the backward pass; it receives a gradient.
      where: optional boolean mask broadcastable to ``x``.
      method: ``"logsumexp"`` or ``"softmax"``, as in :func:`jaxrelax.smooth_max`.
      keepdims: keep the reduced axes with size 1.

    Returns:
      ``x`` reduced over ``axis``, in ``x``'s float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 3.0, 2.0])
      >>> print(jaxrelax.st_max(x))
      3.0
      >>> print(jax.grad(jaxrelax.st_max)(x))
      [0.09   0.6652 0.2447]

    Note:
      A fully masked slice gives ``-inf`` with zero gradient; NaN propagates.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    method = _checks.check_choice(method, "method", _soft.METHODS)
    keepdims = _checks.check_flag(keepdims, "keepdims")
    a = _checks.prepare(x, axis, temperature, where)
    hard = functools.partial(_hard.max_impl, axes=a.axes)
    soft = functools.partial(_soft.smooth_max_impl, axes=a.axes, method=method)
    value = straight_through_rule(hard, soft, a.x, a.temperature, a.where)
    return (value if keepdims else jnp.squeeze(value, a.axes)).astype(a.dtype)


def st_hardmax_impl(x, temperature, where, *, axes, ties):
    """st_hardmax with the softmax backward pass, on checked arguments."""
    hard = functools.partial(_hard.hardmax_impl, axes=axes, ties=ties)
    soft = functools.partial(_soft.softmax_impl, axes=axes)
    return straight_through_rule(hard, soft, x, temperature, where)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def masked_identity_rule(x, temperature, where, axes):
    """The identity surrogate: passes the cotangent through, zero at masked and ``-inf``
    entries (which take no part in the choice), NaN over a slice (over ``axes``) that holds
    NaN, as the other surrogates' gradients are.

    Its backward pass keeps one boolean array, the entries that take part, and the NaN
    poison per slice.
    """
    del temperature, where
    return x


def _masked_identity_fwd(x, temperature, where, axes):
    del temperature
    takes_part = ~jnp.isneginf(x) if where is None else where & ~jnp.isneginf(x)
    poison = _numerics.nan_poison(_numerics.fill_masked(x, where), axes)
    return x, (takes_part, poison)


def _masked_identity_bwd(axes, residuals, cotangent):
    del axes
    takes_part, poison = residuals
    return jnp.where(takes_part, cotangent, 0) + poison, None, None  # none for temperature


masked_identity_rule.defvjp(_masked_identity_fwd, _masked_identity_bwd)
