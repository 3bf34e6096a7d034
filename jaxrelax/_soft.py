"""Soft relaxations with a temperature: softmax (soft argmax as a one-hot), the smooth
maximum, the expected index and the spatial soft-argmax.

All of them rest on one ``custom_vjp`` softmax whose backward pass reads only its output
``p``: the gradient with respect to the temperature uses ``log p``, which equals the shifted
logits ``(x - c) / t`` up to a per-slice constant that the softmax Jacobian annihilates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from . import _checks, _numerics

METHODS = ("logsumexp", "softmax")


def softmax(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Softmax with a temperature: the soft one-hot of the maximum.

    .. math::
        \mathrm{softmax}(x)_i = \frac{\exp(x_i / t)}{\sum_j \exp(x_j / t)}

    As ``t -> 0`` it tends to ``hardmax(x, ties="uniform")``; as ``t -> inf``, to uniform.
    The gradient is the exact vector-Jacobian product of this function, with respect to ``x``
    and to ``temperature``. The backward pass keeps one input-sized array, the output (and
    the temperature).

    Args:
      x: the scores, any real dtype; integers are promoted to the default float, bfloat16 and
        float16 are computed in float32.
      axis: the axis, or tuple of axes (``None``: all of them), to normalise over.
      temperature: a positive scalar, or an array broadcastable to ``x`` with size 1 along
        ``axis`` (one temperature per slice). It may be traced, and receives a gradient.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      An array of ``x``'s shape and float dtype whose slices along ``axis`` sum to 1.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jaxrelax.softmax(x, temperature=0.5))
      [0.0159 0.1173 0.8668]
      >>> print(jaxrelax.softmax(x, where=jnp.array([True, True, False])))
      [0.2689 0.7311 0.    ]

    Note:
      Masked entries and ``-inf`` entries are 0 with zero gradient, even when they hold huge
      values, NaN or infinities; a slice with no unmasked finite entry is all zeros (not NaN).
      ``+inf`` entries share the mass equally (the limit of large finite values). A NaN in an
      unmasked entry makes its slice NaN. A concrete ``temperature <= 0`` raises ValueError;
      a traced one is not checked and gives NaN if it is negative (0 gives the limit). A
      huge temperature gives the uniform distribution, but for scores that differ by a few
      units of it (near finfo.max), computed as exactly up to about ``1.7e38`` (float32) and
      as at that temperature beyond; its gradients underflow to 0. The scores are shifted
      by their maximum in halves (so that nothing overflows); XLA's CPU backend flushes
      subnormal numbers to zero, so there scores below ``2 * finfo.tiny`` in magnitude
      count as 0, which matters only at temperatures that small.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    a = _checks.prepare(x, axis, temperature, where)
    return softmax_impl(a.x, a.temperature, a.where, axes=a.axes).astype(a.dtype)


def smooth_max(
    x: ArrayLike,
    axis: int | tuple[int, ...] = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
    method: str = "logsumexp",
    keepdims: bool = False,
) -> jax.Array:
    r"""A smooth maximum with a temperature.

    ``method="logsumexp"`` gives :math:`t \log \sum_i \exp(x_i / t)`, which lies in
    ``[max(x), max(x) + t log(n)]`` and whose gradient is ``softmax(x / t)``.
    ``method="softmax"`` gives :math:`\sum_i \mathrm{softmax}(x / t)_i \, x_i`, the
    softmax-weighted mean (Goodfellow et al.'s :math:`\mathrm{softmax}(z)^\top z`), which lies
    in ``[mean(x), max(x)]``. Both tend to ``max(x)`` as ``t -> 0``. The gradient is exact,
    with respect to ``x`` and ``temperature``; only the softmax is saved for the backward pass.

    Args:
      x: the scores, any real dtype (see :func:`softmax`).
      axis: the axis, or tuple of axes (``None``: all of them), to reduce.
      temperature: as in :func:`softmax`.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.
      method: ``"logsumexp"`` or ``"softmax"``.
      keepdims: keep the reduced axes with size 1.

    Returns:
      ``x`` reduced over ``axis``, in ``x``'s float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jaxrelax.smooth_max(x, temperature=0.1))
      3.0
      >>> print(jaxrelax.smooth_max(x, temperature=1.0, method="softmax"))
      2.5752

    References:
      Goodfellow et al., Deep Learning, 2016, section 6.2.2.3.

    Note:
      A slice with no unmasked entry gives ``-inf`` with zero gradient; ``+inf`` entries give
      ``+inf``; NaN propagates. Masked and ``-inf`` entries get zero gradient.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    method = _checks.check_choice(method, "method", METHODS)
    keepdims = _checks.check_flag(keepdims, "keepdims")
    a = _checks.prepare(x, axis, temperature, where)
    value = smooth_max_impl(a.x, a.temperature, a.where, axes=a.axes, method=method)
    return (value if keepdims else jnp.squeeze(value, a.axes)).astype(a.dtype)


def soft_argmax(
    x: ArrayLike,
    axis: int = -1,
    *,
    temperature: ArrayLike = 1.0,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The expected index under the softmax: :math:`\sum_i i \, \mathrm{softmax}(x / t)_i`.

    A float in ``[0, n - 1]`` that tends to the index of the maximum as ``t -> 0`` (to the
    mean of the tied indices when the maximum is tied). The gradient is exact.

    Args:
      x: the scores, any real dtype (see :func:`softmax`).
      axis: the single axis of the index, or ``None`` for the flat (row-major) index over all
        axes, as ``jnp.argmax(axis=None)``.
      temperature: as in :func:`softmax`.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      ``x`` reduced over ``axis``, in ``x``'s float dtype. (bfloat16 represents whole numbers
      exactly only up to 256: pass float32 scores for longer axes.)

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> print(jaxrelax.soft_argmax(jnp.array([0.0, 0.0, 10.0, 0.0]), temperature=0.1))
      2.0
      >>> print(jaxrelax.soft_argmax(jnp.array([1.0, 1.0])))
      0.5

    Note:
      A fully masked slice gives 0 with zero gradient; masks, infinities and NaN behave as in
      :func:`softmax`.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    a = _checks.prepare(x, axis, temperature, where, single_axis=True)
    return soft_argmax_impl(a.x, a.temperature, a.where, axes=a.axes).astype(a.dtype)


def spatial_soft_argmax(
    heatmaps: ArrayLike,
    *,
    temperature: ArrayLike = 1.0,
    normalized: bool = True,
    channel_axis: int | None = -1,
) -> jax.Array:
    r"""Expected (row, column) coordinates of the softmax over each heatmap's two spatial axes.

    .. math::
        p = \mathrm{softmax}(h / t) \text{ over } (H, W), \qquad
        (r, c) = \Big(\sum_{ij} p_{ij}\, u_i,\; \sum_{ij} p_{ij}\, v_j\Big)

    With ``normalized=True`` the coordinate of index ``i`` on an axis of length ``n`` is
    ``-1 + 2 i / (n - 1)`` (``linspace(-1, 1, n)``, kornia's convention; ``-1`` when ``n = 1``);
    with ``normalized=False`` it is ``i`` itself. The gradient is exact. Unlike kornia's
    ``spatial_soft_argmax2d``, which returns (x, y), the result is in (row, column) order.

    Each channel of a feature map is one heatmap: a keypoint per channel, as in Levine et
    al.'s spatial softmax, laid out as the pooling functions lay out their input.

    Args:
      heatmaps: scores of shape ``(*batch, H, W, C)`` (channels-last, flax's layout; see
        ``channel_axis``), any real dtype (see :func:`softmax`).
      temperature: a positive scalar, or an array broadcastable to ``heatmaps`` with size 1 in
        its two spatial axes (one temperature per heatmap). It receives a gradient.
      normalized: coordinates in ``[-1, 1]`` (True) or in pixels (False).
      channel_axis: the channel axis: ``-1`` (channels-last, the default), ``1`` for
        PyTorch's ``(N, C, H, W)``, or ``None`` for heatmaps ``(..., H, W)`` without one.
        The spatial axes are the two that come last once it is set aside.

    Returns:
      An array of shape ``(*batch, C, 2)`` holding (row, column) per channel (``(..., 2)``
      with ``channel_axis=None``), in ``heatmaps``' float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> h = jnp.zeros((3, 5)).at[2, 1].set(20.0)
      >>> print(jaxrelax.spatial_soft_argmax(h, normalized=False, channel_axis=None).round(3))
      [2. 1.]
      >>> print(jaxrelax.spatial_soft_argmax(h, channel_axis=None).round(3))
      [ 1.  -0.5]
      >>> features = jnp.zeros((3, 5, 2)).at[2, 1, 0].set(20.0).at[0, 4, 1].set(20.0)
      >>> print(jaxrelax.spatial_soft_argmax(features, normalized=False).round(3))
      [[2. 1.]
       [0. 4.]]

    References:
      Levine et al., End-to-End Training of Deep Visuomotor Policies, 2016,
      https://arxiv.org/abs/1504.00702

    Note:
      ``-inf`` entries get no mass; a heatmap of only ``-inf`` gives (0, 0) in pixels; NaN
      propagates to its heatmap's coordinates.
      Forward mode (``jax.jvp``, ``jax.jacfwd``) is not supported: the gradient is a ``custom_vjp``.
      Use ``jax.grad``, ``jax.vjp`` or ``jax.jacrev``; second derivatives (``jax.hessian``, grad of
      grad) work.
    """
    normalized = _checks.check_flag(normalized, "normalized")
    heatmaps = _checks.as_real_array(heatmaps, "heatmaps")
    layout = _checks.check_channel_axis(channel_axis, heatmaps.ndim, "heatmaps")
    if layout is not None:
        if heatmaps.ndim < 3:
            raise ValueError(
                f"heatmaps must have two spatial axes and a channel axis (channel_axis="
                f"{channel_axis}), got shape {heatmaps.shape}; channel_axis=None takes (H, W)"
            )
        temperature = _numerics.per_slice_to_layout(temperature, heatmaps.ndim, layout, -3)
        heatmaps = _numerics.to_layout(heatmaps, layout, -3)[0]
    a = _checks.prepare(heatmaps, (-2, -1), temperature, name="heatmaps", min_ndim=2)
    p = softmax_impl(a.x, a.temperature, None, axes=a.axes)
    rows, cols = (_coordinates(n, normalized, p.dtype) for n in p.shape[-2:])
    row = jnp.einsum("...hw,h->...", p, rows)
    col = jnp.einsum("...hw,w->...", p, cols)
    return jnp.stack([row, col], axis=-1).astype(a.dtype)


def _coordinates(n: int, normalized: bool, dtype) -> jax.Array:
    return jnp.linspace(-1.0, 1.0, n, dtype=dtype) if normalized else jnp.arange(n, dtype=dtype)


# --- the rules, on prepared arguments (compute dtype, canonical axes, checked mask) ---


def _softmax_parts(x, temperature, where, axes):
    """(m, e, total): the slice maximum (from ``slice_max``), the shifted exponentials
    ``exp((x - m) / t)`` (0 where masked) and their sum; softmax is ``e / total``.

    Arithmetic only, so XLA fuses it into two passes over ``x``; ``total`` is NaN exactly for
    slices holding NaN, since sums propagate NaN.
    """
    m, shifted = _numerics.shift_by_max(x, where, axes, temperature=temperature)
    e = jnp.exp(shifted)
    return m, e, jnp.sum(e, axes, keepdims=True)


def _normaliser(total):
    """The normaliser, with an empty slice's 0 replaced by 1 (its zeros stay zeros).

    A non-empty slice has ``total >= 1`` (its maximum contributes ``exp(0)``), so this changes
    nothing else, and ``1 / total`` stays at most 1 however small the temperature.
    """
    return jnp.maximum(total, 1)


def inverse_total(total):
    return 1 / _normaliser(total)


def softmax_value(x, temperature, where, axes):
    _, e, total = _softmax_parts(x, temperature, where, axes)
    return e / _normaliser(total)


def softmax_vjp(e, scale, temperature, cotangent, axes):
    """The VJP of ``p = softmax(x / t)`` from its factors ``p = e * scale``.

    ``scale`` is per slice (1 when ``e`` is ``p`` itself), which keeps the division by the
    temperature slice-sized. The temperature's cotangent uses ``log p``, equal to the shifted
    logits up to a per-slice constant that the softmax Jacobian annihilates.
    """
    centred = cotangent - jnp.sum(cotangent * e, axes, keepdims=True) * scale
    dx = e * (scale / temperature) * centred  # = p (g - <g, p>) / t
    dt = -jnp.sum(dx * _numerics.safe_log(e * scale), axes, keepdims=True)
    return dx, _numerics.sum_to_shape(dt, temperature.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _softmax_rule(x, temperature, where, axes):
    return softmax_value(x, temperature, where, axes)


def _softmax_fwd(x, temperature, where, axes):
    p = softmax_value(x, temperature, where, axes)
    return p, (p, temperature)


def _softmax_bwd(axes, residuals, cotangent):
    p, temperature = residuals
    return (*softmax_vjp(p, 1, temperature, cotangent, axes), None)


_softmax_rule.defvjp(_softmax_fwd, _softmax_bwd)


def softmax_impl(x, temperature, where, *, axes):
    return _softmax_rule(x, temperature, where, axes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _smooth_max_rule(x, temperature, where, axes, method):
    return _smooth_max_fwd(x, temperature, where, axes, method)[0]


def _smooth_max_fwd(x, temperature, where, axes, method):
    m, e, total = _softmax_parts(x, temperature, where, axes)
    p = e / _normaliser(total)
    if method == "logsumexp":
        # m is finite or +inf, and log(total) is -inf exactly when the slice is empty.
        value = m + temperature * jnp.log(total)
    else:
        weighted = jnp.where(p > 0, p * x, p)  # p = 0 where x may be masked, inf or NaN
        value = jnp.where(total == 0, -jnp.inf, jnp.sum(weighted, axes, keepdims=True))
    return value, (p, temperature)


def _smooth_max_bwd(axes, method, residuals, cotangent):
    # With z = (x - c) / t = log p + const: d lse / dx = p, d lse / dt = H(p); for the
    # softmax-weighted mean m = <p, x>: dm/dx = p (1 + log p + H(p)), dm/dt = -Var_p(log p).
    p, temperature = residuals
    log_p = _numerics.safe_log(p)
    p_log_p = p * log_p
    neg_entropy = jnp.sum(p_log_p, axes, keepdims=True)
    if method == "logsumexp":
        dx = cotangent * p
        dt = -cotangent * neg_entropy
    else:
        dx = cotangent * (p + p_log_p - p * neg_entropy)
        variance = jnp.sum(p_log_p * log_p, axes, keepdims=True) - neg_entropy**2
        dt = -cotangent * variance
    return dx, _numerics.sum_to_shape(dt, temperature.shape), None


_smooth_max_rule.defvjp(_smooth_max_fwd, _smooth_max_bwd)


def smooth_max_impl(x, temperature, where, *, axes, method):
    """smooth_max on prepared arguments, keeping the reduced axes."""
    return _smooth_max_rule(x, temperature, where, axes, method)


def soft_argmax_impl(x, temperature, where, *, axes):
    """The expected index along the single axis in ``axes``, with that axis removed."""
    p = _softmax_rule(x, temperature, where, axes)
    (axis,) = axes
    # A contraction with a length-n vector: its backward pass keeps nothing of x's size.
    return jnp.tensordot(p, jnp.arange(x.shape[axis], dtype=p.dtype), axes=[[axis], [0]])
