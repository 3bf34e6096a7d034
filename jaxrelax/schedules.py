"""Temperature schedules for annealing a relaxation, as Optax schedules.

Each function returns a plain ``step -> temperature`` callable built from Optax's own schedules,
usable inside ``jit`` (the step may be traced) and anywhere Optax takes a schedule. All of them
start at ``initial`` and never go below a positive ``minimum``.

Examples:
  >>> import jax.numpy as jnp
  >>> from jaxrelax import schedules
  >>> anneal = schedules.exponential_anneal(initial=1.0, rate=1e-2, minimum=0.5, interval=10)
  >>> [round(float(anneal(step)), 4) for step in (0, 9, 10, 100, 1000)]
  [1.0, 1.0, 0.9048, 0.5, 0.5]
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax

__all__ = ["cosine_anneal", "exponential_anneal", "linear_anneal", "piecewise_anneal"]


def exponential_anneal(
    initial: float = 1.0, rate: float = 1e-4, minimum: float = 0.5, interval: int = 1
) -> optax.Schedule:
    r"""The exponential annealing of Jang et al. 2017, updated every ``interval`` steps.

    .. math::
        \tau(t) = \max\big(m, \tau_0 \exp(-r \cdot I \lfloor t / I \rfloor)\big)

    Args:
      initial: the temperature at step 0, ``tau_0 > 0``.
      rate: the decay rate per step, ``r >= 0``.
      minimum: the floor ``m``, with ``0 < m <= tau_0``.
      interval: the number of steps ``I >= 1`` between updates.

    Returns:
      An Optax schedule: ``optax.exponential_decay`` (decaying by ``e`` every ``1 / rate``
      steps, floored at ``minimum``) read at the last multiple of ``interval``.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.exponential_anneal(1.0, rate=1e-3, interval=100)
      >>> print([round(float(schedule(step)), 4) for step in (0, 99, 100, 500, 5000)])
      [1.0, 1.0, 0.9048, 0.6065, 0.5]

    References:
      Jang et al., Categorical Reparameterization with Gumbel-Softmax, 2017,
      https://arxiv.org/abs/1611.01144
    """
    _check_range(initial, minimum)
    if not rate >= 0:
        raise ValueError(f"rate must be >= 0, got {rate}")
    _check_steps(interval, "interval")
    if rate == 0:
        return optax.constant_schedule(initial)
    # Optax's own staircase would take decay_rate = exp(-rate * interval), whose float32
    # rounding compounds with the step (a 2e-5 error by step 1000 at the default rate, 0.6%
    # by step 100000); a decay by e every 1 / rate steps keeps the error at rounding level.
    decay = optax.exponential_decay(
        init_value=initial, transition_steps=1 / rate, decay_rate=math.exp(-1), end_value=minimum
    )
    return lambda step: decay(interval * jnp.floor(jnp.asarray(step) / interval))


def linear_anneal(initial: float, minimum: float, steps: int) -> optax.Schedule:
    """Linear from ``initial`` at step 0 to ``minimum`` at ``steps``, constant after.

    Returns ``optax.linear_schedule(initial, minimum, steps)``.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.linear_anneal(2.0, 0.5, steps=100)
      >>> print([float(schedule(step)) for step in (0, 50, 100, 200)])
      [2.0, 1.25, 0.5, 0.5]
    """
    _check_range(initial, minimum)
    _check_steps(steps, "steps")
    return optax.linear_schedule(init_value=initial, end_value=minimum, transition_steps=steps)


def cosine_anneal(initial: float, minimum: float, steps: int) -> optax.Schedule:
    """Half a cosine from ``initial`` at step 0 to ``minimum`` at ``steps``, constant after.

    Returns ``optax.cosine_decay_schedule(initial, steps, alpha=minimum / initial)``.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.cosine_anneal(2.0, 0.5, steps=100)
      >>> print([round(float(schedule(step)), 4) for step in (0, 50, 100, 200)])
      [2.0, 1.25, 0.5, 0.5]
    """
    _check_range(initial, minimum)
    _check_steps(steps, "steps")
    return optax.cosine_decay_schedule(
        init_value=initial, decay_steps=steps, alpha=minimum / initial
    )


def piecewise_anneal(initial: float, boundaries_and_scales: dict[int, float]) -> optax.Schedule:
    """Piecewise constant: the temperature is multiplied by ``scale`` from step ``boundary`` on.

    Returns ``optax.piecewise_constant_schedule(initial, boundaries_and_scales)``; every scale
    must be positive, so that the temperature stays positive.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.piecewise_anneal(1.0, {100: 0.5, 200: 0.5})
      >>> print([float(schedule(step)) for step in (0, 100, 199, 200)])
      [1.0, 0.5, 0.5, 0.25]
    """
    _check_range(initial, initial)
    for boundary, scale in boundaries_and_scales.items():
        if not scale > 0:
            raise ValueError(f"boundaries_and_scales must hold positive scales, got {scale}")
        if boundary < 0:
            raise ValueError(f"boundaries_and_scales must hold steps >= 0, got {boundary}")
    return optax.piecewise_constant_schedule(initial, boundaries_and_scales)


def _check_range(initial, minimum):
    if not (math.isfinite(initial) and initial > 0):
        raise ValueError(f"initial must be positive and finite, got {initial}")
    if not 0 < minimum <= initial:
        raise ValueError(f"minimum must be in (0, initial], got {minimum}")


def _check_steps(steps, name):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{name} must be an int >= 1, got {steps!r}")
