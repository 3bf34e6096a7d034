"""Stochastic relaxations: Gumbel-softmax, straight-through Gumbel-softmax, Gumbel-Rao and the
binary Concrete (relaxed Bernoulli).

The samplers add noise to the logits and hand the perturbed logits to the deterministic
rules, whose gradients then flow to the logits unchanged: Gumbel-softmax is ``softmax`` of
``logits + g``, its straight-through variant ``st_hardmax`` of it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from . import _checks, _hard, _numerics, _soft, _straight_through


def gumbel_softmax(
    key: ArrayLike,
    logits: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    hard: bool = False,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""A Gumbel-softmax (Concrete) sample, or with ``hard=True`` a straight-through one.

    .. math::
        y = \mathrm{softmax}\big((\ell + g) / t\big), \qquad g_i \sim \mathrm{Gumbel}(0, 1)

    With ``hard=True`` the forward value is the one-hot of ``argmax(logits + g)``, an exact
    sample of the categorical distribution ``softmax(logits)``, and the backward pass is the
    vector-Jacobian product of the soft sample ``y`` with the same noise (straight-through
    Gumbel-softmax); only the soft sample is saved for it. The gradient reaches ``logits``
    and ``temperature``; the noise is ``jax.random.gumbel(key, logits.shape)``, so the same key
    gives the same noise for ``hard=True`` and ``hard=False`` (and as that plain recipe).

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      logits: unnormalised log-probabilities, a float array; bfloat16 and float16 are
        computed in float32.
      axis: the axis, or tuple of axes (``None``: all of them), of the categories (one
        sample per slice).
      temperature: the softmax temperature, as in :func:`jaxrelax.softmax`; it receives a
        gradient.
      hard: return the exact one-hot sample forward (straight-through estimator).
      where: optional boolean mask broadcastable to ``logits``; masked classes are never
        sampled.

    Returns:
      A sample of ``logits``' shape and dtype: on the simplex, or one-hot with ``hard=True``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> key = jax.random.key(0)
      >>> logits = jnp.log(jnp.array([0.2, 0.5, 0.3]))
      >>> soft = jaxrelax.gumbel_softmax(key, logits, temperature=0.5)
      >>> hard = jaxrelax.gumbel_softmax(key, logits, temperature=0.5, hard=True)
      >>> bool(jnp.argmax(soft) == jnp.argmax(hard)), float(hard.sum())
      (True, 1.0)

    References:
      Jang et al., Categorical Reparameterization with Gumbel-Softmax, 2017,
      https://arxiv.org/abs/1611.01144; Maddison et al., The Concrete Distribution, 2017,
      https://arxiv.org/abs/1611.00712

    Note:
      Masked classes and ``-inf`` logits are never sampled and get zero gradient; a slice
      with no class left gives zeros, never NaN. ``jax.random.gumbel`` never takes ``log(0)``.
      A NaN logit makes its slice NaN.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    key = _checks.check_key(key)
    hard = _checks.check_flag(hard, "hard")
    a = _checks.prepare(logits, axis, temperature, where, name="logits", integers=False)
    perturbed = _limit_logits(a) + jax.random.gumbel(key, a.x.shape, a.x.dtype)
    if hard:
        value = _straight_through.st_hardmax_impl(
            perturbed, a.temperature, a.where, axes=a.axes, ties="first"
        )
    else:
        value = _soft.softmax_impl(perturbed, a.temperature, a.where, axes=a.axes)
    return value.astype(a.dtype)


def gumbel_rao(
    key: ArrayLike,
    logits: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    num_samples: int = 10,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The Gumbel-Rao estimator: an exact categorical sample with a Rao-Blackwellised
    straight-through Gumbel-softmax gradient.

    The forward value is the one-hot ``D`` of an exact sample of ``softmax(logits)``. The
    backward pass averages, over ``num_samples`` Gumbel vectors ``g_k`` drawn conditionally on
    ``argmax(logits + g_k) = D``, the straight-through Gumbel-softmax VJP
    :math:`\bar y \, \partial_\ell \mathrm{softmax}((\ell + g_k) / t)` with ``g_k`` held
    fixed, as in the authors' code. Its expectation is that of straight-through
    Gumbel-softmax; its variance is lower, falling as ``num_samples`` grows (Rao-Blackwell).

    The first of the ``num_samples`` vectors is the noise that drew ``D`` (given ``D`` it is a
    conditional sample like the others), so ``num_samples=1`` is exactly straight-through
    Gumbel-softmax: ``gumbel_rao(key, ...)`` equals
    ``gumbel_softmax(jax.random.split(key)[0], ..., hard=True)``, forward and backward. The
    others follow the truncated-Gumbel (exponential race) construction and are drawn again,
    one at a time, from the key in the backward pass: memory does not grow with
    ``num_samples``, time does.

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      logits: unnormalised log-probabilities, a float array (half precision computed in
        float32).
      axis: the axis, or tuple of axes (``None``: all of them), of the categories (one
        sample per slice).
      temperature: the softmax temperature of the backward pass; it receives a gradient.
      num_samples: the number of conditional Gumbel vectors averaged (at least 1).
      where: optional boolean mask broadcastable to ``logits``; masked classes are never
        sampled.

    Returns:
      The one-hot sample, of ``logits``' shape and dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> logits = jnp.log(jnp.array([0.2, 0.5, 0.3]))
      >>> sample = jaxrelax.gumbel_rao(jax.random.key(0), logits, num_samples=8)
      >>> float(sample.sum())
      1.0

    References:
      Paulus, Maddison, Krause, Rao-Blackwellizing the Straight-Through Gumbel-Softmax
      Gradient Estimator, 2021, https://arxiv.org/abs/2010.04838

    Note:
      Masks, ``-inf`` and NaN logits behave as in :func:`gumbel_softmax`. Second derivatives
      differentiate the backward pass with the conditional noise held fixed.
      Forward mode (``jax.jvp``, ``jax.jacfwd``, and so ``jax.hessian``) is not supported: the
      gradient is a ``custom_vjp``. Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``, and grad of
      grad for second derivatives.
    """
    key = _checks.check_key(key)
    num_samples = _checks.check_integer(num_samples, "num_samples")
    a = _checks.prepare(logits, axis, temperature, where, name="logits", integers=False)
    forward_key, backward_key = jax.random.split(key)
    noise = jax.random.gumbel(forward_key, a.x.shape, a.x.dtype)
    value = _gumbel_rao_rule(
        _limit_logits(a), a.temperature, a.where, noise, backward_key, a.axes, num_samples
    )
    return value.astype(a.dtype)


def binary_concrete(
    key: ArrayLike,
    logits: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    hard: bool = False,
) -> jax.Array:
    r"""A binary Concrete (relaxed Bernoulli) sample, or with ``hard=True`` a straight-through
    Bernoulli sample, elementwise.

    .. math::
        y = \sigma\big((\ell + L) / t\big), \qquad L \sim \mathrm{Logistic}(0, 1)

    With ``hard=True`` the forward value is ``[logits + L > 0]``, an exact sample of
    ``Bernoulli(sigmoid(logits))``, and the backward pass is the VJP of ``y`` with the same
    noise. The gradient reaches ``logits`` and ``temperature`` (which may vary per element).

    Args:
      key: a PRNG key (``jax.random.key`` or a legacy ``jax.random.PRNGKey``).
      logits: log-odds, a float array (half precision computed in float32).
      temperature: a positive scalar, or an array broadcastable to ``logits``.
      hard: return exact 0/1 samples forward (straight-through estimator).

    Returns:
      Samples of ``logits``' shape and dtype, in [0, 1] (in float32 they saturate to exactly
      0 or 1 once ``|logits + L| / t`` exceeds about 17, with zero gradient there), or 0/1
      with ``hard=True``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> sample = jaxrelax.binary_concrete(jax.random.key(0), jnp.zeros(4), hard=True)
      >>> bool(jnp.all((sample == 0) | (sample == 1)))
      True

    References:
      Maddison et al., The Concrete Distribution, 2017, https://arxiv.org/abs/1611.00712;
      Jang et al., Categorical Reparameterization with Gumbel-Softmax, 2017,
      https://arxiv.org/abs/1611.01144

    Note:
      ``logits = +inf`` (``-inf``) always gives 1 (0) with zero gradient; NaN propagates.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    key = _checks.check_key(key)
    hard = _checks.check_flag(hard, "hard")
    a = _checks.prepare(logits, None, temperature, name="logits", integers=False, elementwise=True)
    perturbed = a.x + jax.random.logistic(key, a.x.shape, a.x.dtype)
    if hard:
        value = _straight_through.straight_through_rule(
            _bernoulli_from_perturbed, _relaxed_bernoulli_rule, perturbed, a.temperature
        )
    else:
        value = _relaxed_bernoulli_rule(perturbed, a.temperature)
    return value.astype(a.dtype)


@jax.custom_vjp
def _relaxed_bernoulli_rule(perturbed, temperature):
    return jax.nn.sigmoid(perturbed / temperature)


def _relaxed_bernoulli_fwd(perturbed, temperature):
    y = jax.nn.sigmoid(perturbed / temperature)
    return y, (y, temperature)


def _relaxed_bernoulli_bwd(residuals, cotangent):
    # From the output alone: dy/dz = y (1 - y) / t and dy/dt = -y (1 - y) logit(y) / t.
    y, temperature = residuals
    tiny = jnp.finfo(y.dtype).tiny
    d_scaled = cotangent * y * (1 - y)
    logit = jnp.log(jnp.maximum(y, tiny)) - jnp.log(jnp.maximum(1 - y, tiny))
    dt = _numerics.sum_to_shape(-d_scaled * logit / temperature, temperature.shape)
    return d_scaled / temperature, dt


_relaxed_bernoulli_rule.defvjp(_relaxed_bernoulli_fwd, _relaxed_bernoulli_bwd)


def _bernoulli_from_perturbed(perturbed, temperature):
    del temperature
    perturbed = lax.stop_gradient(perturbed)
    return jnp.where(jnp.isnan(perturbed), perturbed, (perturbed > 0).astype(perturbed.dtype))


def _limit_logits(a: _checks.Prepared) -> jax.Array:
    """The logits less their slice maximum: the same distribution, and in a slice holding
    +inf logits, 0 at those and -inf elsewhere (the limit of equal, ever larger logits), so
    that the noise decides among the +inf classes as among equal finite ones."""
    return _numerics.shift_by_max(a.x, a.where, a.axes)[1]


# --- Gumbel-Rao ---


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _gumbel_rao_rule(logits, temperature, where, noise, backward_key, axes, num_samples):
    return _gumbel_rao_fwd(logits, temperature, where, noise, backward_key, axes, num_samples)[0]


def _gumbel_rao_fwd(logits, temperature, where, noise, backward_key, axes, num_samples):
    del num_samples
    perturbed = logits + noise
    sample = _hard.hardmax_impl(perturbed, None, where, axes=axes, ties="first")
    p = _soft.softmax_value(perturbed, temperature, where, axes)
    return sample, (logits, sample, p, temperature, backward_key, where)


def _gumbel_rao_bwd(axes, num_samples, residuals, cotangent):
    logits, sample, p, temperature, key, where = residuals
    # The forward noise is the first conditional sample (as in st_hardmax's backward pass).
    dx, dt = _soft.softmax_vjp(p, 1, temperature, cotangent, axes)
    logits = _numerics.fill_masked(logits, where)
    probs = lax.stop_gradient(
        _soft.softmax_impl(logits, jnp.ones_like(temperature), None, axes=axes)
    )
    # Second derivatives see logits + fixed noise: gaps move with logits_i - logits_D.
    finite_logits = jnp.where(jnp.isfinite(logits), logits, 0)
    relative = finite_logits - jnp.sum(sample * finite_logits, axes, keepdims=True)
    moving = relative - lax.stop_gradient(relative)  # 0, with derivative 1

    def add_one_sample(k, grads):
        arrivals = _exponentials(jax.random.fold_in(key, k), logits.shape, logits.dtype)
        gaps, _ = _conditional_gaps(probs, sample, arrivals, axes)
        # -inf for impossible classes, as such: XLA divides by t as a product with 1 / t,
        # which flushes to 0 beyond t = 8.5e37 in float32, and -inf * 0 is NaN.
        e_k = jnp.exp(jnp.where(gaps == -jnp.inf, -jnp.inf, (gaps + moving) / temperature))
        scale_k = _soft.inverse_total(jnp.sum(e_k, axes, keepdims=True))
        dx_k, dt_k = _soft.softmax_vjp(e_k, scale_k, temperature, cotangent, axes)
        return grads[0] + dx_k, grads[1] + dt_k

    dx, dt = lax.fori_loop(0, num_samples - 1, add_one_sample, (dx, dt))
    return dx / num_samples, dt / num_samples, None, None, None


_gumbel_rao_rule.defvjp(_gumbel_rao_fwd, _gumbel_rao_bwd)


def _exponentials(key, shape, dtype):
    """Exp(1) draws. In float32, from 24-bit uniforms made four from every three 32-bit words:
    the random bits are most of Gumbel-Rao's cost, and ``jax.random.exponential`` spends a
    32-bit word on each 23-bit uniform (``benchmarks/tricks.py``, row "24-bit
    exponentials")."""
    if dtype != jnp.float32:
        return jax.random.exponential(key, shape, dtype)
    size = math.prod(shape)
    words = jax.random.bits(key, (3, -(-size // 4)), jnp.uint32)
    low_bytes = (words[0] & 0xFF) | ((words[1] & 0xFF) << 8) | ((words[2] & 0xFF) << 16)
    integers = jnp.concatenate([words >> 8, low_bytes[None]]).reshape(-1)[:size]
    uniform = integers.astype(jnp.float32) * 2.0**-24  # exact, in [0, 1 - 2**-24]
    return -jnp.log1p(-uniform).reshape(shape)  # as jax.random.exponential: no log(0)


def _conditional_gaps(probs, sample, arrivals, axes):
    """``(logits + g) - (logits + g)_D``, for Gumbel noise ``g`` conditioned on the one-hot
    ``sample`` (at ``D``) being the argmax, from Exp(1) draws ``arrivals``; and ``E_D``.

    Exponential races (Maddison et al. 2014, A* Sampling): class ``i`` arrives at
    ``E_i / exp(logits_i)``, the first arrival wins and ``logits_i + g_i`` is minus the log of
    its arrival time. Given that ``D`` wins, it arrives at ``E_D / Z`` (``Z`` the partition
    function) and every other class ``E_i / exp(logits_i)`` later, so its gap to the winner is
    ``-log(1 + E_i / (p_i E_D))`` with ``p = softmax(logits)``. The noise is held fixed: no
    gradient flows through the gaps.
    """
    arrivals = jnp.maximum(arrivals, jnp.finfo(arrivals.dtype).tiny)  # Exp(1) is never 0
    winner = jnp.sum(sample * arrivals, axes, keepdims=True)  # E_D
    # E_i / E_D first: E_D / E_D is exactly 1, where p_D * E_D could underflow to 0.
    gaps = -jnp.log1p(arrivals / winner / probs)  # -inf for impossible classes
    return lax.stop_gradient((1 - sample) * gaps), winner
