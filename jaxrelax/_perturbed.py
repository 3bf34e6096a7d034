"""Perturbed optimizers: the Monte-Carlo smoothing of any argmax-like function.

A hard solver ``f`` (a one-hot argmax, a k-hot mask, a user's shortest path) is replaced by
its average under random perturbations of its input,

.. math::
    f_\\sigma(x) = \\mathbb{E}_Z\\, f(x + \\sigma Z), \\qquad
    \\partial f_\\sigma(x) = \\mathbb{E}_Z\\, f(x + \\sigma Z)\\, \\nabla\\nu(Z)^\\top / \\sigma,

with ``nu`` the noise's negative log-density (Berthet et al. 2020, Prop. 3.1): the gradient
needs only values of ``f``, never its derivative. Both expectations are estimated with the
same ``num_samples`` draws. Sample ``m`` is drawn from ``jax.random.fold_in(key, m)``, so the
backward pass draws the noise again instead of keeping it, and the result does not depend on
how many samples are evaluated at once.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from . import _gumbel, _hard, _topk, _utils

NOISES = ("gumbel", "normal")
# The functions of one choice per slice evaluate about this many perturbed scores at once:
# memory stays flat in num_samples, and batches are large enough to run at full speed.
BATCH_NUMBERS = 2**19


class Plan(NamedTuple):
    """The static part of a perturbed estimate."""

    num_samples: int
    batch_size: int  # samples evaluated at once (vmapped); the last batch holds the rest
    noise: str
    control_variate: bool
    axes: tuple[int, ...] | None  # None: fn is a function of the whole input; else the
    # output has the input's shape and its slices over ``axes`` depend on theirs alone


def perturbed(
    fn: Callable,
    *,
    num_samples: int = 100,
    sigma: ArrayLike = 1.0,
    noise: str = "gumbel",
    batch_size: int | None = None,
    control_variate: bool = False,
) -> Callable:
    r"""Makes any function of an array differentiable by averaging it over perturbations.

    .. math::
        g(x) = \frac1M \sum_{m=1}^M f(x + \sigma Z_m), \qquad
        \bar x = \frac{1}{M \sigma} \sum_{m=1}^M
        \big\langle \bar g,\, f(x + \sigma Z_m) - b \big\rangle\, \nabla\nu(Z_m)

    with ``Z_m`` i.i.d. Gumbel or standard normal noise of ``x``'s shape and ``nu`` its
    negative log-density: :math:`\nabla\nu(z) = 1 - e^{-z}` for Gumbel noise, :math:`z` for
    normal noise. The forward value is the Monte-Carlo estimate of the smoothed function
    :math:`f_\sigma(x) = \mathbb{E} f(x + \sigma Z)`; the backward pass is Berthet et al.'s
    unbiased estimate of its vector-Jacobian product, with the same noise. ``f`` need not be
    differentiable, or even continuous: it may be ``jaxrelax.hardmax``, ``topk_mask`` or a
    combinatorial solver. ``b = 0``, or ``b = f(x)`` with ``control_variate=True`` (unbiased
    too, since :math:`\mathbb{E}\nabla\nu(Z) = 0`, and of lower variance when ``f`` changes
    little under the noise).

    Sample ``m``'s noise is drawn from ``jax.random.fold_in(key, m)``, in the forward pass and
    again in the backward pass: nothing of size ``num_samples * size(x)`` is kept, and with
    ``batch_size`` set, nothing of that size is ever built (the samples are evaluated
    ``batch_size`` at a time in a loop). The result does not depend on ``batch_size``. The
    price is time: ``fn`` runs ``num_samples`` times forward and as many again backward (once
    more with ``control_variate``).

    Args:
      fn: the function ``fn(y, *args)`` of an array ``y`` of ``x``'s shape and dtype,
        returning an array or a pytree of arrays (booleans and integers are averaged as
        floats).
      num_samples: ``M``, the number of perturbations averaged, at least 1.
      sigma: the noise's scale, positive: a scalar or an array broadcastable to ``x`` (one
        scale per entry). A fixed hyperparameter: it receives no gradient.
      noise: ``"gumbel"`` or ``"normal"``.
      batch_size: how many samples are evaluated at once (vmapped); ``None`` evaluates all
        ``num_samples`` at once (fastest while their intermediates fit in memory). The last
        batch holds the remainder when it does not divide ``num_samples``; a larger one is
        taken as ``num_samples``.
      control_variate: subtract ``f(x)`` (one more evaluation of ``fn``, in the backward pass)
        in the gradient estimate.

    Returns:
      The function ``g(key, x, *args)``: ``key`` a PRNG key, ``x`` a real array (integers are
      promoted to float), ``args`` (arrays, or pytrees of arrays: bind other options with
      ``functools.partial``) passed to ``fn`` unperturbed. It returns ``fn``'s output
      structure and shapes, averaged, in ``fn``'s float dtype (float32 for booleans and
      integers; half precision is averaged in float32).

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> one_hot_argmax = lambda y: jax.nn.one_hot(jnp.argmax(y), y.shape[-1])
      >>> g = jaxrelax.perturbed(one_hot_argmax, num_samples=1000)
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> with jnp.printoptions(precision=1):  # close to softmax(x)
      ...     print(g(jax.random.key(0), x))
      [0.1 0.2 0.7]
      >>> jax.grad(lambda x: g(jax.random.key(0), x)[2])(x).shape
      (3,)

    References:
      Berthet, Blondel, Teboul, Cuturi, Vert & Bach, Learning with Differentiable Perturbed
      Optimizers, 2020, https://arxiv.org/abs/2002.08676; Abernethy, Lee & Tewari,
      Perturbation Techniques in Online Learning and Optimization, 2016

    Note:
      Only ``x`` receives a gradient; ``args`` and any value ``fn`` closes over get zero.
      The gradient at infinite entries of ``x`` is 0 (moving them changes nothing); NaN
      propagates to the value and the gradient as ``fn`` propagates it. Second derivatives
      differentiate the estimate with the noise held fixed (they are the estimator's own
      derivatives, zero for a piecewise-constant ``fn``). Forward mode (``jax.jvp``) is not
      supported: the gradient is a ``custom_vjp``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    num_samples = _utils.check_integer(num_samples, "num_samples")
    plan = _plan(num_samples, noise, batch_size, control_variate, None)
    _check_sigma(sigma, None)

    @functools.partial(jax.jit, static_argnums=3)
    def estimate(key, x, scale, dtype, *args):
        outputs = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, dtype), *args)
        evaluate = functools.partial(_evaluate_as, fn, dtype, outputs)
        evaluate, consts = _hoist_closure(evaluate, x, *args)
        moving = _moving(x, None)
        means = perturbed_rule(evaluate, plan, key, x, scale, moving, *args, *consts)
        return jax.tree.map(lambda v, o: v.astype(_result_dtype(o.dtype)), means, outputs)

    @functools.wraps(fn)
    def smoothed(key, x, *args):
        key = _utils.check_key(key)
        a = _utils.prepare(x, None, elementwise=True)
        scale = _check_sigma(sigma, a.x)
        _check_outputs(fn, jax.ShapeDtypeStruct(a.x.shape, a.dtype), args)
        return estimate(key, a.x, scale, a.dtype, *args)

    return smoothed


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
      Masked entries and ``-inf`` scores never win and get zero gradient; a slice with no
      entry left is all zeros. ``+inf`` scores win, the noise deciding among several (the
      limit of equal, ever larger scores), and get zero gradient, as do the others in their
      slice. A NaN score makes its slice NaN, value and gradient. Forward mode (``jax.jvp``)
      is not supported: the gradient is a ``custom_vjp``.
    """
    a, key, sigma, plan = _prepare(key, x, axis, num_samples, sigma, noise, where)
    return _argmax(key, a.x, sigma, a.where, a.axes, plan).astype(a.dtype)


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
      Masked entries and ``-inf`` scores are never chosen and get zero gradient; with fewer
      than ``k`` others, all of those are chosen. ``+inf`` scores are chosen first (the noise
      deciding among more than ``k`` of them) and get zero gradient. A NaN score makes its
      slice NaN. Forward mode (``jax.jvp``) is not supported: the gradient is a
      ``custom_vjp``.
    """
    a, key, sigma, plan = _prepare(key, x, axis, num_samples, sigma, noise, where)
    k = _topk.check_count(k, _utils.slice_size(a.x.shape, a.axes))
    return _topk_mask(key, a.x, sigma, a.where, a.axes, plan, k).astype(a.dtype)


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
      Masked entries and ``-inf`` scores take no part and get zero gradient; a slice with no
      entry left gives ``-inf``, with zero gradient. A slice holding ``+inf`` gives ``+inf``;
      its ``+inf`` entries share the gradient as the noise shares the wins. A NaN score makes
      its slice NaN. Second derivatives differentiate :func:`perturbed_argmax`'s estimate.
      Forward mode (``jax.jvp``) is not supported: the gradient is a ``custom_vjp``.
    """
    a, key, sigma, plan = _prepare(key, x, axis, num_samples, sigma, noise, where)
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
        ``-x``.
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
    a, key, sigma, plan = _prepare(key, x, axis, num_samples, sigma, noise, where)
    labels = _utils.as_real_array(labels, "labels")
    if labels.shape != a.x.shape:
        raise ValueError(f"labels of shape {labels.shape} must have x's shape {a.x.shape}")
    loss = _fy_loss(key, a.x, labels.astype(a.x.dtype), sigma, a.where, a.axes, plan)
    return loss.astype(a.dtype)


# --- the computations, once the arguments are checked ---


@functools.partial(jax.jit, static_argnums=(4, 5))
def _argmax(key, x, sigma, where, axes, plan):
    _, shifted, moving = _shift(x, where, axes)
    return _max_and_argmax_rows(key, shifted, sigma, moving, axes, plan)[1]


@functools.partial(jax.jit, static_argnums=(4, 5, 6))
def _topk_mask(key, x, sigma, where, axes, plan, k):
    limited = _gumbel.limit_for_subsets(_utils.Prepared(x, axes, None, where, x.dtype), k)

    def top_k(y):
        return _topk.topk_mask_rule(y, None, None, axes=axes, k=k, ties="first")

    moving = _moving(x, where, fixed=limited == -jnp.inf)
    return perturbed_rule(top_k, plan, key, limited, sigma, moving)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _max(key, x, sigma, where, axes, plan):
    m, shifted, moving = _shift(x, where, axes)
    return jnp.squeeze(_exact_max(key, shifted, sigma, moving, axes, plan) + m, axes)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _fy_loss(key, x, labels, sigma, where, axes, plan):
    keep = ~jnp.isneginf(x) if where is None else where & ~jnp.isneginf(x)
    labels = jnp.where(keep, labels, 0)
    m, shifted, moving = _shift(x, where, axes)
    value = _exact_max(key, shifted, sigma, moving, axes, plan)
    # F(x) - <x, y> = F(x - m) + m (1 - sum y) - <x - m, y>, m the slice maximum: no
    # difference of two large numbers where the labels sum to 1, and a slice holding +inf
    # (shifted: 0 there, -inf elsewhere) gives +inf only when label mass lies off its +inf
    # entries.
    total = jnp.sum(labels, axes, keepdims=True)
    offset = jnp.where(jnp.isinf(m), 0, m * (1 - total))
    linear = jnp.sum(jnp.where(labels != 0, shifted * labels, 0), axes, keepdims=True)
    loss = jnp.where(value == -jnp.inf, 0, value + offset - linear)  # -inf: no class left
    return jnp.squeeze(loss, axes)


# --- arguments ---


def _prepare(key, x, axis, num_samples, sigma, noise, where):
    key = _utils.check_key(key)
    num_samples = _utils.check_integer(num_samples, "num_samples")
    a = _utils.prepare(x, axis, where=where)
    batch_size = max(1, BATCH_NUMBERS // max(a.x.size, 1))
    plan = _plan(num_samples, noise, batch_size, False, a.axes)
    return a, key, _check_sigma(sigma, a.x), plan


def _plan(num_samples, noise, batch_size, control_variate, axes):
    noise = _utils.check_choice(noise, "noise", NOISES)
    control_variate = _utils.check_flag(control_variate, "control_variate")
    if batch_size is None:
        batch_size = num_samples
    batch_size = min(_utils.check_integer(batch_size, "batch_size"), num_samples)
    return Plan(num_samples, batch_size, noise, control_variate, axes)


def _check_sigma(sigma, x):
    """``sigma`` in ``x``'s dtype, broadcastable to it; a concrete one positive and finite.
    With ``x=None``, checks a concrete ``sigma``'s values alone."""
    tiny = float(jnp.finfo(jnp.float32 if x is None else x.dtype).tiny)
    template = jnp.zeros(np.shape(sigma)) if x is None else x
    return _utils.check_per_slice(
        sigma,
        "sigma",
        template,
        (),
        lambda s: np.isfinite(s) & (s >= tiny),
        f"positive and finite (at least {tiny:g})",
    )


def _check_outputs(fn, y, args):
    """The shapes and dtypes of ``fn(y, *args)``, or a TypeError naming ``fn``."""
    try:
        outputs = jax.eval_shape(fn, y, *args)
    except TypeError as error:
        raise TypeError(f"fn must return an array or a pytree of arrays: {error}") from None
    leaves = jax.tree.leaves(outputs)
    if not leaves:
        raise TypeError(f"fn must return an array or a pytree of arrays, got {outputs!r}")
    for leaf in leaves:
        if not isinstance(leaf, jax.ShapeDtypeStruct) or not (
            jnp.issubdtype(leaf.dtype, jnp.floating)
            or jnp.issubdtype(leaf.dtype, jnp.integer)
            or leaf.dtype == jnp.bool_
        ):
            raise TypeError(f"fn must return real or boolean arrays, got {leaf!r}")
    return outputs


def _hoist_closure(fn, *example_args):
    """(converted, consts): ``fn`` with the values it closes over, traced ones included, as
    explicit trailing arguments (the rule's backward pass is traced after the trace that
    holds them has ended). ``jax.closure_convert`` hoists only values being differentiated."""
    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    out_tree = jax.tree.structure(shape)
    count = len(example_args)

    def converted(*args_and_consts):
        args, consts = args_and_consts[:count], args_and_consts[count:]
        call = jax.extend.core.jaxpr_as_fun(jax.extend.core.ClosedJaxpr(closed.jaxpr, consts))
        return jax.tree.unflatten(out_tree, call(*jax.tree.leaves(args)))

    return converted, closed.consts


def _evaluate_as(fn, input_dtype, outputs, y, *args):
    """``fn`` on the perturbed input in ``x``'s own dtype, its outputs cast to their
    averaging dtype (float32 for half precision, booleans and integers)."""
    values = fn(y.astype(input_dtype), *args)
    return jax.tree.map(lambda v, o: v.astype(_average_dtype(o.dtype)), values, outputs)


def _result_dtype(dtype):
    """An average's dtype: ``dtype`` if it is a float, else the default float."""
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _average_dtype(dtype):
    return _utils.compute_dtype(_result_dtype(dtype))


def _moving(x: jax.Array, where: jax.Array | None, fixed: jax.Array | None = None):
    """Where a change of the input can change the choice: finite, unmasked entries that are
    not ``fixed``, and NaN entries, which keep their NaN gradient."""
    moving = jnp.isfinite(x) if fixed is None else jnp.isfinite(x) & ~fixed
    moving = moving | jnp.isnan(x)
    return moving if where is None else moving & where


def _shift(x, where, axes):
    """(m, shifted, moving) for one choice per slice: the slice maximum, the scores less it
    (in a slice holding +inf, 0 at those and -inf or -finfo.max elsewhere), and the entries
    that move: in a slice holding +inf, none."""
    m, shifted = _utils.shift_by_max(x, where, axes)
    holds_posinf = jnp.any(_utils.fill_masked(x, where) == jnp.inf, axes, keepdims=True)
    return m, shifted, _moving(x, where, fixed=holds_posinf)


# --- the estimate ---


def _draw(noise, key, shape, dtype):
    """(z, score): a noise sample and the gradient of its negative log-density.

    Normal noise is ``jax.random.normal``'s. Gumbel noise is ``-log(-log(u))`` with ``u`` on
    the midpoints of ``jax.random.uniform``'s grid, in the open interval (0, 1):
    ``jax.random.gumbel`` maps a draw of 0 (one in 2**23 in float32) to ``finfo.tiny``, a
    Gumbel value of -4.5 that should almost never occur (probability about exp(-87)) and
    whose score, 1 - exp(4.5) = -86, would dominate a gradient estimate.
    """
    if noise == "normal":
        low = np.nextafter(np.array(-1.0, dtype), np.array(0.0, dtype))
        z = np.array(np.sqrt(2), dtype) * lax.erf_inv(_utils.uniform(key, shape, dtype, low, 1.0))
        return z, z
    half_step = np.array(2.0 ** -(jnp.finfo(dtype).nmant + 1), dtype)
    e = -jnp.log(_utils.uniform(key, shape, dtype) + half_step)  # = exp(-z)
    return -jnp.log(e), 1 - e


def _sample_sum(batch_total, plan):
    """The sum over ``m < num_samples`` of the pytrees ``batch_total(start, size)`` (the sum
    over samples ``start <= m < start + size``), ``batch_size`` samples at a time, in a loop
    that keeps only the running sum."""
    size = plan.batch_size
    full, rest = divmod(plan.num_samples, size)
    if full == 1:
        total = batch_total(0, size)
    else:
        zeros = jax.tree.map(
            lambda v: jnp.zeros(v.shape, v.dtype), jax.eval_shape(lambda: batch_total(0, size))
        )
        total = lax.fori_loop(
            0, full, lambda i, acc: jax.tree.map(jnp.add, acc, batch_total(i * size, size)), zeros
        )
    if rest:
        total = jax.tree.map(jnp.add, total, batch_total(full * size, rest))
    return total


def _vmapped_total(per_sample):
    """``batch_total`` for :func:`_sample_sum` from a function of one sample's index."""

    def batch_total(start, size):
        return jax.tree.map(_sum_leading, jax.vmap(per_sample)(start + jnp.arange(size)))

    return batch_total


def _sum_leading(v):
    """The sum over the leading axis, as a product with ones: XLA's CPU backend reduces over
    a leading axis some fifty times slower (48 ms against 0.8 for 100 x 64 x 1024 numbers)."""
    return jnp.tensordot(jnp.ones(v.shape[0], v.dtype), v, 1)


def _mean(fn, plan, key, x, sigma, args):
    def per_sample(m):
        z, _ = _draw(plan.noise, jax.random.fold_in(key, m), x.shape, x.dtype)
        return fn(x + sigma * z, *args)

    total = _sample_sum(_vmapped_total(per_sample), plan)
    return jax.tree.map(lambda v: v / plan.num_samples, total)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def perturbed_rule(fn, plan, key, x, sigma, moving, *args):
    """The perturbed mean of ``fn(x + sigma Z, *args)`` (its outputs in their averaging
    dtypes), with the perturbation estimate as its VJP; ``moving`` masks the entries whose
    gradient may be nonzero (0/1 or boolean, broadcastable to ``x``)."""
    return _mean(fn, plan, key, x, sigma, args)


def _perturbed_fwd(fn, plan, key, x, sigma, moving, *args):
    return _mean(fn, plan, key, x, sigma, args), (key, x, sigma, moving, args)


def _perturbed_bwd(fn, plan, residuals, cotangent):
    key, x, sigma, moving, args = residuals
    baseline = fn(x, *args) if plan.control_variate else None

    def pair(y):
        """<cotangent, y - baseline>: per slice over ``plan.axes``, else in total."""
        if baseline is not None:
            y = jax.tree.map(jnp.subtract, y, baseline)
        products = jax.tree.map(
            lambda v, w: jnp.sum(v * w, plan.axes, keepdims=plan.axes is not None), cotangent, y
        )
        return sum(jax.tree.leaves(products))

    def per_sample(m):
        z, score = _draw(plan.noise, jax.random.fold_in(key, m), x.shape, x.dtype)
        return pair(fn(x + sigma * z, *args)) * score

    total = _sample_sum(_vmapped_total(per_sample), plan)
    dx = total * (moving / (plan.num_samples * sigma))
    return (None, dx.astype(x.dtype), None, None) + (None,) * len(args)


perturbed_rule.defvjp(_perturbed_fwd, _perturbed_bwd)


# --- the perturbed argmax and maximum ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _exact_max(key, shifted, sigma, moving, axes, plan):
    """The perturbed maximum of scores less their slice maximum (size-1 dims kept); its
    gradient, exact sample by sample, is the perturbed argmax, computed alongside."""
    return _exact_max_fwd(key, shifted, sigma, moving, axes, plan)[0]


def _exact_max_fwd(key, shifted, sigma, moving, axes, plan):
    # The argmax is the winners rule's output, so that second derivatives see its estimate.
    return _max_and_argmax_rows(key, shifted, sigma, moving, axes, plan)


def _exact_max_bwd(axes, plan, argmax, cotangent):
    del axes, plan
    return None, cotangent * argmax, None, None


_exact_max.defvjp(_exact_max_fwd, _exact_max_bwd)


def _max_and_argmax_rows(key, shifted, sigma, moving, axes, plan):
    """(max, argmax): the perturbed maximum (size-1 dims kept) and argmax of ``shifted`` over
    ``axes``, computed on its slices laid out as the rows of a matrix (the noise is drawn in
    that layout)."""
    rows, back = _utils.rows_last(shifted, axes)
    matrix = rows.reshape(math.prod(rows.shape[:-1]), rows.shape[-1])

    def as_matrix(v):  # a per-entry array broadcastable to the scores
        if np.ndim(v) == 0:
            return v
        return _utils.rows_last(jnp.broadcast_to(v, shifted.shape), axes)[0].reshape(matrix.shape)

    maximum, argmax = _winners_rule(key, matrix, as_matrix(sigma), as_matrix(moving), plan)
    kept = tuple(1 if i in axes else n for i, n in enumerate(shifted.shape))
    return maximum.reshape(kept), back(argmax.reshape(rows.shape))


def _winners(plan, key, x, sigma, m):
    """Sample ``m``'s row maxima and first-maximum positions (int32, the row length for a
    row with no maximum) of ``x + sigma Z``, both of shape ``(rows, 1)``, and the noise's
    score."""
    z, score = _draw(plan.noise, jax.random.fold_in(key, m), x.shape, x.dtype)
    y = x + sigma * z
    maximum = jnp.max(y, 1, keepdims=True, initial=-jnp.inf)  # NaN: see the callers' poison
    _, first = _hard.first_max_position(_utils.below_max(y, None, (1,)), (1,))
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
        return _sum_leading(maxima), counts[:, :n]

    total_max, counts = _sample_sum(batch_total, plan)
    poison = _utils.nan_poison(x, (1,))
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

        return _sum_leading(jax.vmap(one)(start + jnp.arange(size)))

    total = _sample_sum(batch_total, plan)
    dx = total * (moving / (plan.num_samples * sigma)) + _utils.nan_poison(x, (1,))
    return None, dx, None, None


_winners_rule.defvjp(_winners_fwd, _winners_bwd)
