"""Temperature schedules for annealing a relaxation, as Optax schedules.

Each function returns a plain ``step -> temperature`` callable built from Optax's own schedules,
usable inside ``jit`` (the step may be traced, an int or a float). At the edges the value is
exact, eagerly and under ``jit``: exactly ``init_value`` (its float32 rounding) at step 0,
exactly ``end_value`` from the end of the annealing on, and never outside ``[end_value,
init_value]`` in between, so a temperature never goes below its positive ``end_value`` (float32
rounding, or XLA rewriting a division as a multiplication by a reciprocal, would otherwise
step just outside). A negative step reads as step 0; a NaN step gives NaN. The arguments take
Optax's names where they mean what Optax's do (``init_value``, ``end_value``,
``transition_steps``, ``decay_steps``, ``boundaries_and_scales``).

Examples:
  >>> import jax.numpy as jnp
  >>> from jaxrelax import schedules
  >>> anneal = schedules.exponential_anneal(1.0, rate=1e-2, end_value=0.5, interval=10)
  >>> [round(float(anneal(step)), 4) for step in (0, 9, 10, 100, 1000)]
  [1.0, 1.0, 0.9048, 0.5, 0.5]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import _checks

__all__ = ["cosine_anneal", "exponential_anneal", "linear_anneal", "piecewise_anneal"]


_TINY = float(np.finfo(np.float32).tiny)  # XLA flushes float32 subnormals to zero
_HUGE = float(np.finfo(np.float32).max)


def exponential_anneal(
    init_value: float = 1.0, *, rate: float = 1e-4, end_value: float = 0.5, interval: int = 1
) -> optax.Schedule:
    r"""The exponential annealing of Jang et al. 2017, updated every ``interval`` steps.

    .. math::
        \tau(t) = \max\big(m, \tau_0 \exp(-r \cdot I \lfloor t / I \rfloor)\big)

    Args:
      init_value: the temperature at step 0, ``tau_0 > 0``.
      rate: the decay rate per step, finite and ``r >= 0`` (``0`` gives a constant).
      end_value: the floor ``m``, with ``0 < m <= tau_0``.
      interval: the number of steps ``I >= 1`` between updates.

    Returns:
      An Optax schedule: ``optax.exponential_decay`` (decaying by ``e`` every ``1 / rate``
      steps, floored at ``end_value``) read at the last multiple of ``interval``. It is
      exactly ``init_value`` at steps ``t <= 0`` (a negative step reads as step 0), exactly
      ``end_value`` once the decay reaches it, and in ``[end_value, init_value]`` always.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.exponential_anneal(1.0, rate=1e-3, interval=100)
      >>> print([round(float(schedule(step)), 4) for step in (0, 99, 100, 500, 5000)])
      [1.0, 1.0, 0.9048, 0.6065, 0.5]

    References:
      Jang et al., Categorical Reparameterization with Gumbel-Softmax, 2017,
      https://arxiv.org/abs/1611.01144

    Note:
      Optax: ``optax.exponential_decay(init_value, transition_steps=interval,
      decay_rate=exp(-rate * interval), staircase=True, end_value=end_value)``, but with the
      rate per step (Jang et al.'s form, keyword-only, since Optax's second and third
      arguments mean other things), exact at both ends and never outside its range.
    """
    initial, minimum = _check_range(init_value, end_value)
    rate = _real(rate, "rate")
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be finite and >= 0, got {rate}")
    interval = _checks.check_integer(interval, "interval", 1)
    if rate == 0:
        return _anneal(optax.constant_schedule(initial), initial, minimum)
    # Optax's own staircase would take decay_rate = exp(-rate * interval), whose float32
    # rounding compounds with the step (a 2e-5 error by step 1000 at the default rate, 0.6%
    # by step 100000); a decay by e every 1 / rate steps keeps the error at rounding level.
    # (1 / rate is capped at float32's largest number: a smaller rate decays by less than
    # float32 can show in 2**31 steps.)
    decay = optax.exponential_decay(
        init_value=initial,
        transition_steps=min(1 / rate, _HUGE),
        decay_rate=math.exp(-1),
        end_value=minimum,
    )
    return _anneal(lambda step: decay(interval * jnp.floor(step / interval)), initial, minimum)


def linear_anneal(init_value: float, end_value: float, transition_steps: int) -> optax.Schedule:
    """Linear from ``init_value`` at step 0 to ``end_value`` at ``transition_steps``, constant
    after.

    Returns ``optax.linear_schedule(init_value, end_value, transition_steps)``, exactly
    ``init_value`` at steps ``t <= 0`` (a negative step reads as step 0), exactly
    ``end_value`` at ``t >= transition_steps`` and clipped to ``[end_value, init_value]`` in
    between. ``0 < end_value <= init_value`` and ``1 <= transition_steps < 2**31``.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.linear_anneal(2.0, 0.5, transition_steps=100)
      >>> print([float(schedule(step)) for step in (-1, 0, 50, 100, 200)])
      [2.0, 2.0, 1.25, 0.5, 0.5]

    Note:
      Optax: ``optax.linear_schedule(init_value, end_value, transition_steps)``, the same
      arguments in the same order, but decreasing only (a temperature), exact at both ends
      and never outside its range, without ``transition_begin``.
    """
    initial, minimum = _check_range(init_value, end_value)
    steps = _checks.check_integer(transition_steps, "transition_steps", 1)
    schedule = optax.linear_schedule(init_value=initial, end_value=minimum, transition_steps=steps)
    return _anneal(schedule, initial, minimum, steps)


def cosine_anneal(init_value: float, *, end_value: float, decay_steps: int) -> optax.Schedule:
    """Half a cosine from ``init_value`` at step 0 to ``end_value`` at ``decay_steps``,
    constant after.

    Returns ``optax.cosine_decay_schedule(init_value, decay_steps, alpha=end_value /
    init_value)``, exactly ``init_value`` at steps ``t <= 0`` (a negative step reads as step
    0), exactly ``end_value`` at ``t >= decay_steps`` and clipped to ``[end_value,
    init_value]`` in between. ``0 < end_value <= init_value`` and ``1 <= decay_steps <
    2**31``.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.cosine_anneal(2.0, end_value=0.5, decay_steps=100)
      >>> print([round(float(schedule(step)), 4) for step in (0, 50, 100, 200)])
      [2.0, 1.25, 0.5, 0.5]

    Note:
      Optax: ``optax.cosine_decay_schedule(init_value, decay_steps, alpha=end_value /
      init_value)``: the end is a value, not a fraction (keyword-only, since Optax's second
      argument is the number of steps), exact at both ends, without ``exponent``.
    """
    initial, minimum = _check_range(init_value, end_value)
    steps = _checks.check_integer(decay_steps, "decay_steps", 1)
    schedule = optax.cosine_decay_schedule(
        init_value=initial, decay_steps=steps, alpha=minimum / initial
    )
    return _anneal(schedule, initial, minimum, steps)


def piecewise_anneal(
    init_value: float, boundaries_and_scales: Mapping[int, float]
) -> optax.Schedule:
    """Piecewise constant: the temperature is multiplied by ``scale`` from step ``boundary`` on.

    Returns ``optax.piecewise_constant_schedule(init_value, boundaries_and_scales)``, read at
    ``max(step, 0)`` (a boundary at 0 scales step 0 and the negative steps too) and clipped to
    the range of the values it takes, ``init_value`` times the products of the first ``k``
    scales. ``boundaries_and_scales`` is a dict ``{step: scale}`` of integer steps in
    ``[0, 2**31)`` and finite positive scales (above 1 raises the temperature); every value
    must lie in float32's normal range, so that the temperature stays positive and finite.

    Examples:
      >>> import jaxrelax
      >>> schedule = jaxrelax.schedules.piecewise_anneal(1.0, {100: 0.5, 200: 0.5})
      >>> print([float(schedule(step)) for step in (0, 100, 199, 200)])
      [1.0, 0.5, 0.5, 0.25]

    Note:
      Optax: ``optax.piecewise_constant_schedule(init_value, boundaries_and_scales)``, the
      same arguments, with every value checked to stay a positive float32 temperature.
    """
    name = "boundaries_and_scales"
    initial = _temperature(init_value, "init_value")
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError(
            f"{name} must be a dict {{step: scale}}, got {type(boundaries_and_scales).__name__}"
        )
    scales = {}
    for boundary, scale in boundaries_and_scales.items():
        scale = _real(scale, f"{name} scales")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{name} must hold finite positive scales, got {scale}")
        scales[_checks.check_integer(boundary, f"{name} steps", 0)] = scale
    values = [initial]  # the values the schedule takes, in float64
    for boundary in sorted(scales):
        values.append(values[-1] * scales[boundary])
    lowest, highest = min(values), max(values)
    if not _TINY <= lowest <= highest <= _HUGE:
        raise ValueError(
            f"{name} take the temperature to [{lowest:g}, {highest:g}], outside float32's "
            f"normal range [{_TINY:g}, {_HUGE:g}]"
        )
    schedule = optax.piecewise_constant_schedule(initial, scales)
    return lambda step: jnp.clip(schedule(jnp.maximum(jnp.asarray(step), 0)), lowest, highest)


def _anneal(schedule, initial, minimum, steps=None):
    """``schedule`` clipped to ``[minimum, initial]``, exactly ``initial`` at steps <= 0 and
    exactly ``minimum`` from ``steps`` on (when given)."""

    def anneal(step):
        step = jnp.asarray(step)
        value = jnp.where(step <= 0, initial, jnp.clip(schedule(step), minimum, initial))
        return value if steps is None else jnp.where(step >= steps, minimum, value)

    return anneal


def _check_range(init_value, end_value):
    initial, minimum = _temperature(init_value, "init_value"), _temperature(end_value, "end_value")
    if minimum > initial:
        raise ValueError(f"end_value must be at most init_value ({initial}), got {minimum}")
    return initial, minimum


def _temperature(value, name):
    value = _real(value, name)
    if not _TINY <= value <= _HUGE:
        raise ValueError(
            f"{name} must be positive and finite in float32 (in [{_TINY:g}, {_HUGE:g}]), "
            f"got {value}"
        )
    return value


def _real(value, name) -> float:
    """A concrete real number (Python, NumPy or a 0-d array; not a bool) as a float, or a
    TypeError naming ``name``."""
    if isinstance(value, (np.ndarray, jax.Array)):
        real = value.ndim == 0 and (
            jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
        )
    else:
        real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    try:
        if real:
            return float(value)
    except OverflowError:  # an int beyond float64
        return math.inf if value > 0 else -math.inf
    except TypeError:  # a traced value
        pass
    raise TypeError(f"{name} must be a concrete real number, got {value!r}")
