"""Judging gradient estimators exactly, on problems small enough to enumerate.

For ``z`` one categorical variable with probabilities ``softmax(logits)`` (``logits`` of shape
``(n,)``), or ``m`` independent ones (``logits`` of shape ``(m, n)``, a factorised product),
:func:`exact_expectation` and :func:`exact_gradient` give ``E_z[f(z)]`` and its gradient with
respect to the logits by summing over all ``n ** m`` one-hot configurations. An estimator
``estimator(key, logits) -> gradient sample`` is then judged by its Monte-Carlo bias, variance
and mean squared error against that gradient (:func:`estimator_stats`). Everything is jit- and
vmap-friendly: ``f`` and the estimator are traced, never called in Python loops.

Arguments are checked: a wrong type raises a TypeError and a bad value a ValueError, each
naming the argument. Concrete logits must be finite (traced ones cannot be checked, and
non-finite ones give NaN); NaN or infinite gradient samples give NaN or infinite statistics.

Examples:
  >>> import jax
  >>> import jax.numpy as jnp
  >>> import jaxrelax
  >>> from jaxrelax import diagnostics
  >>> cost = jnp.array([1.0, 0.0, 2.0])
  >>> f = lambda z: jnp.dot(z, cost)
  >>> logits = jnp.zeros(3)
  >>> exact = diagnostics.exact_gradient(f, logits)
  >>> def st_gumbel(key, logits):
  ...     return jax.grad(lambda l: f(jaxrelax.gumbel_softmax(key, l, hard=True)))(logits)
  >>> stats = diagnostics.estimator_stats(
  ...     st_gumbel, jax.random.key(0), logits, exact, num_samples=2000
  ... )
  >>> stats.bias.shape, bool(stats.mse > 0)
  ((3,), True)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _checks

__all__ = [
    "GradientStats",
    "estimate_gradients",
    "estimator_stats",
    "exact_expectation",
    "exact_gradient",
    "gradient_stats",
    "one_hot_configurations",
]

MAX_CONFIGURATIONS = 2**20
MAX_ELEMENTS = 2**27  # in all configurations together: 512 MiB in float32


class GradientStats(NamedTuple):
    """Monte-Carlo statistics of gradient samples against the exact gradient.

    ``mean``, ``bias`` and ``variance`` (unbiased, per coordinate) have the logits' shape;
    ``mse`` is the mean over samples of the squared error summed over coordinates, and
    ``mse_stderr`` its standard error (the standard deviation of the per-sample squared errors
    over the square root of the number of samples).
    """

    mean: jax.Array
    bias: jax.Array
    variance: jax.Array
    mse: jax.Array
    mse_stderr: jax.Array


def one_hot_configurations(shape: tuple[int, ...]) -> jax.Array:
    """All one-hot assignments for categorical logits of ``shape``: ``(n ** m,) + shape``.

    ``shape`` is a tuple ``(n,)`` for one variable with ``n`` classes or ``(m, n)`` for ``m``
    of them, ``m, n >= 1``, with at most ``MAX_CONFIGURATIONS`` (``2**20``) configurations
    and ``MAX_ELEMENTS`` (``2**27``) numbers in all.

    Examples:
      >>> from jaxrelax import diagnostics
      >>> diagnostics.one_hot_configurations((2, 3)).shape
      (9, 2, 3)
    """
    if not isinstance(shape, (tuple, list)):
        raise TypeError(f"shape must be a tuple (n,) or (m, n), got {shape!r}")
    return _configurations(
        tuple(_checks.check_integer(size, "shape", 1) for size in shape), "shape"
    )


def _configurations(shape, name):
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f"{name} must have shape (n,) or (m, n) with m, n >= 1, got {shape}")
    n, m = shape[-1], (shape[0] if len(shape) == 2 else 1)
    count = n ** min(m, 21)  # n >= 2 and m >= 21 is too many anyway
    if count > MAX_CONFIGURATIONS or count * m * n > MAX_ELEMENTS:
        raise ValueError(
            f"{name} of shape {shape} have {n}**{m} configurations of {m * n} numbers, more "
            f"than can be enumerated ({MAX_CONFIGURATIONS} configurations, {MAX_ELEMENTS} "
            "numbers in all)"
        )
    indices = np.array(list(itertools.product(range(n), repeat=m)), dtype=np.int32)
    return jnp.asarray(np.eye(n, dtype=np.float32)[indices].reshape((-1,) + shape))


def exact_expectation(f: Callable, logits: ArrayLike) -> jax.Array:
    """``E_z[f(z)]`` for one-hot ``z`` drawn from ``softmax(logits)`` (factorised over the
    leading axis of 2-D logits), by enumeration. ``f`` maps a one-hot array of the logits'
    shape to a scalar; the logits must be finite, of shape ``(n,)`` or ``(m, n)``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxrelax import diagnostics
      >>> logits = jnp.log(jnp.array([0.2, 0.3, 0.5]))
      >>> mean = diagnostics.exact_expectation(lambda z: z @ jnp.arange(3.0), logits)
      >>> print(round(float(mean), 4))
      1.3
    """
    _check_callable(f, "f")
    logits = _float_logits(logits)
    configurations = _configurations(logits.shape, "logits").astype(logits.dtype)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    axes = tuple(range(1, configurations.ndim))
    weights = jnp.exp(jnp.sum(configurations * log_probs, axis=axes))
    values = jax.vmap(f)(configurations)
    if not isinstance(values, jax.Array) or values.shape != weights.shape:
        raise TypeError(f"f must return a scalar array, got {jax.tree.map(jnp.shape, values)}")
    return jnp.sum(weights * values)


def exact_gradient(f: Callable, logits: ArrayLike) -> jax.Array:
    """The gradient of :func:`exact_expectation` with respect to the logits.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxrelax import diagnostics
      >>> logits = jnp.log(jnp.array([0.2, 0.3, 0.5]))
      >>> print(diagnostics.exact_gradient(lambda z: z @ jnp.arange(3.0), logits))
      [-0.26 -0.09  0.35]
    """
    return jax.grad(lambda logits: exact_expectation(f, logits))(_float_logits(logits))


def _check_callable(value, name):
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {value!r}")


def _float_logits(logits):
    """Logits as a floating-point array, finite unless traced; raises naming ``logits``."""
    logits = _checks.as_real_array(logits, "logits", booleans=False)
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"logits must be a floating-point array, got dtype {logits.dtype}")
    if not isinstance(logits, jax.core.Tracer) and not np.isfinite(logits).all():
        raise ValueError(f"logits must be finite, got {logits}")
    return logits


def estimate_gradients(
    estimator: Callable,
    key: ArrayLike,
    logits: ArrayLike,
    *,
    num_samples: int,
    batch_size: int = 1024,
) -> jax.Array:
    """``num_samples`` gradient samples ``estimator(key_i, logits)`` with independent keys,
    stacked on a new leading axis; computed ``batch_size`` at a time (vmapped) to bound
    memory. ``key`` is a PRNG key (split as it is, so a legacy key gives legacy keys), the
    logits are floating-point and finite, and ``num_samples`` and ``batch_size`` are integers
    ``>= 1``.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> from jaxrelax import diagnostics
      >>> def estimator(key, logits):  # straight-through Gumbel-softmax of z . [0, 1, 2]
      ...     loss = lambda lg: jaxrelax.gumbel_softmax(key, lg, hard=True) @ jnp.arange(3.0)
      ...     return jax.grad(loss)(logits)
      >>> diagnostics.estimate_gradients(
      ...     estimator, jax.random.key(0), jnp.zeros(3), num_samples=100
      ... ).shape
      (100, 3)
    """
    _check_callable(estimator, "estimator")
    _checks.check_key(key)
    logits = _float_logits(logits)
    num_samples = _checks.check_integer(num_samples, "num_samples", 1)
    batch_size = _checks.check_integer(batch_size, "batch_size", 1)
    keys = jax.random.split(key, num_samples)
    return jax.lax.map(lambda k: estimator(k, logits), keys, batch_size=batch_size)


def gradient_stats(samples: ArrayLike, exact: ArrayLike) -> GradientStats:
    """Bias, variance and mean squared error of gradient ``samples`` (stacked on axis 0).

    ``mse`` is the mean over samples of the squared error summed over the gradient's entries,
    with its standard error ``mse_stderr``; ``bias`` and ``variance`` are per entry.
    ``samples`` holds at least 2 samples of ``exact``'s shape; integers are promoted to floats.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxrelax import diagnostics
      >>> stats = diagnostics.gradient_stats(jnp.array([[1.0, 0.0], [3.0, 0.0]]), jnp.ones(2))
      >>> print(stats.bias, stats.variance, float(stats.mse))
      [ 1. -1.] [2. 0.] 3.0
    """
    samples, exact = (
        _checks.as_real_array(samples, "samples", booleans=False),
        _checks.as_real_array(exact, "exact", booleans=False),
    )
    if samples.ndim < 1 or samples.shape[0] < 2:
        raise ValueError(
            f"samples must hold at least 2 gradient samples on axis 0, got shape {samples.shape}"
        )
    if exact.shape != samples.shape[1:]:
        raise ValueError(
            f"exact must have the shape of one sample, {samples.shape[1:]}, got {exact.shape}"
        )
    count = samples.shape[0]
    samples = samples.astype(jnp.result_type(samples.dtype, float))
    mean = jnp.mean(samples, axis=0)
    squared_errors = jnp.sum((samples - exact) ** 2, axis=tuple(range(1, samples.ndim)))
    return GradientStats(
        mean=mean,
        bias=mean - exact,
        variance=jnp.var(samples, axis=0, ddof=1),
        mse=jnp.mean(squared_errors),
        mse_stderr=jnp.std(squared_errors, ddof=1) / math.sqrt(count),
    )


def estimator_stats(
    estimator: Callable,
    key: ArrayLike,
    logits: ArrayLike,
    exact: ArrayLike,
    *,
    num_samples: int,
    batch_size: int = 1024,
) -> GradientStats:
    """:func:`gradient_stats` of ``num_samples >= 2`` samples of ``estimator`` at ``logits``
    (drawn by :func:`estimate_gradients`).

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> from jaxrelax import diagnostics
      >>> def f(z):
      ...     return z @ jnp.array([0.0, 1.0, 4.0])
      >>> def estimator(key, logits):  # Gumbel-Rao, straight-through gradients of f
      ...     return jax.grad(lambda lg: f(jaxrelax.gumbel_rao(key, lg, num_samples=8)))(logits)
      >>> logits = jnp.array([0.5, -0.2, 0.1])
      >>> exact = diagnostics.exact_gradient(f, logits)
      >>> stats = diagnostics.estimator_stats(
      ...     estimator, jax.random.key(0), logits, exact, num_samples=1000
      ... )
      >>> bool(stats.mse > 0), stats.bias.shape
      (True, (3,))
    """
    num_samples = _checks.check_integer(num_samples, "num_samples", 2)
    exact = _checks.as_real_array(exact, "exact", booleans=False)
    samples = estimate_gradients(
        estimator, key, logits, num_samples=num_samples, batch_size=batch_size
    )
    return gradient_stats(samples, exact)
