"""The perturbation estimator: the Monte-Carlo smoothing of any argmax-like function.

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
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.extend
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from . import _checks, _noise

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
    r"""Makes any function of an array (or of a pytree of arrays) differentiable by averaging
    it over perturbations.

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

    A pytree ``x`` (as in ``optax.perturbations.make_perturbed_fun``) is perturbed as one
    vector of all its leaves (``jax.flatten_util.ravel_pytree``, in their common float
    dtype): ``fn`` receives a pytree of ``x``'s structure, and the gradient has it too.

    Args:
      fn: the function ``fn(y, *args)`` of an array ``y`` of ``x``'s shape and dtype (or a
        pytree of ``x``'s structure), returning an array or a pytree of arrays (booleans
        and integers are averaged as floats).
      num_samples: ``M``, the number of perturbations averaged, at least 1.
      sigma: the noise's scale, positive: a scalar or an array broadcastable to ``x`` (one
        scale per entry; a scalar for a pytree ``x``). A fixed hyperparameter: it receives no
        gradient.
      noise: ``"gumbel"`` or ``"normal"``.
      batch_size: how many samples are evaluated at once (vmapped); ``None`` evaluates all
        ``num_samples`` at once (fastest while their intermediates fit in memory). The last
        batch holds the remainder when it does not divide ``num_samples``; a larger one is
        taken as ``num_samples``.
      control_variate: subtract ``f(x)`` (one more evaluation of ``fn``, in the backward pass)
        in the gradient estimate.

    Returns:
      The function ``g(key, x, *args)``: ``key`` a PRNG key, ``x`` a real array (integers are
      promoted to float) or a pytree of floating-point arrays, ``args`` (arrays, or pytrees
      of arrays: bind other options with ``functools.partial``) passed to ``fn``
      unperturbed. It returns ``fn``'s output
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
      Optax: ``optax.perturbations.make_perturbed_fun(fn, num_samples=1000, sigma=0.1,
      use_baseline=True)``; the defaults here differ (``num_samples=100``, ``sigma=1.0``,
      ``control_variate=False``: pass Optax's for its estimator), ``use_baseline`` is
      ``control_variate``, the noise is named, and ``batch_size`` bounds memory.
      Only ``x`` receives a gradient; ``args`` and any value ``fn`` closes over get zero.
      The gradient at infinite entries of ``x`` is 0 (moving them changes nothing); NaN
      propagates to the value and the gradient as ``fn`` propagates it. Second derivatives
      differentiate the estimate with the noise held fixed (they are the estimator's own
      derivatives, zero for a piecewise-constant ``fn``). Forward mode (``jax.jvp``) is not
      supported: the gradient is a ``custom_vjp``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    num_samples = _checks.check_integer(num_samples, "num_samples")
    plan = _plan(num_samples, noise, batch_size, control_variate, None)
    _check_sigma(sigma, None)

    @functools.partial(jax.jit, static_argnums=3)
    def estimate(key, x, scale, dtype, *args):
        outputs = jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, dtype), *args)
        evaluate = functools.partial(_evaluate_as, fn, dtype, outputs)
        evaluate, consts = _hoist_closure(evaluate, x, *args)
        moving = moving_entries(x, None)
        means = perturbed_rule(evaluate, plan, key, x, scale, moving, *args, *consts)
        return jax.tree.map(lambda v, o: v.astype(_result_dtype(o.dtype)), means, outputs)

    @functools.wraps(fn)
    def smoothed(key, x, *args):
        key = _checks.check_key(key)
        if not jax.tree_util.treedef_is_leaf(jax.tree.structure(x)):
            return _on_pytree(smoothed_vector, key, x, args)
        a = _checks.prepare(x, None, elementwise=True)
        scale = _check_sigma(sigma, a.x)
        _check_outputs(fn, jax.ShapeDtypeStruct(a.x.shape, a.dtype), args)
        return estimate(key, a.x, scale, a.dtype, *args)

    by_structure = {}

    def smoothed_vector(structure, unravel):
        """``perturbed`` of ``fn`` on the flat vector of a pytree's leaves: one per structure
        (tree and leaf shapes and dtypes), so that its compiled programs are reused."""
        if structure not in by_structure:
            by_structure[structure] = perturbed(
                lambda v, *args: fn(unravel(v), *args),
                num_samples=num_samples,
                sigma=sigma,
                noise=noise,
                batch_size=batch_size,
                control_variate=control_variate,
            )
        return by_structure[structure]

    return smoothed


def _on_pytree(smoothed_vector, key, x, args):
    leaves = jax.tree.leaves(x)
    if not leaves:
        raise TypeError(f"x must be an array or a pytree of arrays, got {x!r}")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"x must be an array or a pytree of floating-point arrays, got a leaf of "
                f"dtype {jnp.result_type(leaf)}"
            )
    flat, unravel = jax.flatten_util.ravel_pytree(x)
    structure = (jax.tree.structure(x), tuple((jnp.shape(v), jnp.result_type(v)) for v in leaves))
    return smoothed_vector(structure, unravel)(key, flat, *args)


# --- arguments ---


def prepare_per_slice(key, x, axis, num_samples, sigma, noise, where):
    """The checked arguments of a function of one choice per slice over ``axis``:
    (prepared scores, key, sigma, plan), with batches of about ``BATCH_NUMBERS`` numbers."""
    key = _checks.check_key(key)
    num_samples = _checks.check_integer(num_samples, "num_samples")
    a = _checks.prepare(x, axis, where=where)
    batch_size = max(1, BATCH_NUMBERS // max(a.x.size, 1))
    plan = _plan(num_samples, noise, batch_size, False, a.axes)
    return a, key, _check_sigma(sigma, a.x), plan


def _plan(num_samples, noise, batch_size, control_variate, axes):
    noise = _checks.check_choice(noise, "noise", _noise.NOISES)
    control_variate = _checks.check_flag(control_variate, "control_variate")
    if batch_size is None:
        batch_size = num_samples
    batch_size = min(_checks.check_integer(batch_size, "batch_size"), num_samples)
    return Plan(num_samples, batch_size, noise, control_variate, axes)


def _check_sigma(sigma, x):
    """``sigma`` in ``x``'s dtype, broadcastable to it; a concrete one positive and finite.
    With ``x=None``, checks a concrete ``sigma``'s values alone."""
    tiny = float(jnp.finfo(jnp.float32 if x is None else x.dtype).tiny)
    template = jnp.zeros(np.shape(sigma)) if x is None else x
    return _checks.check_per_slice(
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
    return _checks.compute_dtype(_result_dtype(dtype))


def moving_entries(x: jax.Array, where: jax.Array | None, fixed: jax.Array | None = None):
    """Where a change of the input can change the choice: finite, unmasked entries that are
    not ``fixed``, and NaN entries, which keep their NaN gradient."""
    moving = jnp.isfinite(x) if fixed is None else jnp.isfinite(x) & ~fixed
    moving = moving | jnp.isnan(x)
    return moving if where is None else moving & where


# --- the estimate ---


def sample_sum(batch_total, plan):
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


def vmapped_total(per_sample):
    """``batch_total`` for :func:`sample_sum` from a function of one sample's index."""

    def batch_total(start, size):
        return jax.tree.map(sum_leading, jax.vmap(per_sample)(start + jnp.arange(size)))

    return batch_total


def sum_leading(v):
    """The sum over the leading axis, as a product with ones, which XLA's CPU backend runs
    far faster than a reduction over a leading axis (``benchmarks/tricks.py``, rows "sum by
    tensordot")."""
    return jnp.tensordot(jnp.ones(v.shape[0], v.dtype), v, 1)


def _mean(fn, plan, key, x, sigma, args):
    def per_sample(m):
        z, _ = _noise.noise_and_score(plan.noise, jax.random.fold_in(key, m), x.shape, x.dtype)
        return fn(x + sigma * z, *args)

    total = sample_sum(vmapped_total(per_sample), plan)
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
        z, score = _noise.noise_and_score(plan.noise, jax.random.fold_in(key, m), x.shape, x.dtype)
        return pair(fn(x + sigma * z, *args)), score

    def batch_total(start, size):
        pairs, scores = jax.vmap(per_sample)(start + jnp.arange(size))
        if plan.axes is None:
            # One number per sample: a contraction over the samples, never the products
            # pairs * scores, which XLA's CPU backend (jaxlib 0.10.2) computed wrongly past
            # 2**15 entries with the control variate (test_perturbed.py).
            return jnp.tensordot(pairs, scores, 1)
        return sum_leading(pairs * scores)

    total = sample_sum(batch_total, plan)
    dx = total * (moving / (plan.num_samples * sigma))
    return (None, dx.astype(x.dtype), None, None) + (None,) * len(args)


perturbed_rule.defvjp(_perturbed_fwd, _perturbed_bwd)
