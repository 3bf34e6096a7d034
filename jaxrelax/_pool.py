"""Pooling: the exact max-pool with its winners' indices, its reverse (max-unpooling), and the
soft, smooth and straight-through max-pools.

Layout and arguments follow ``flax.linen.max_pool``: channels-last ``x`` of shape
``(*batch, *spatial, features)`` and one window dimension per spatial dimension.

Every function reads the windows as strided slices of the input, one slice of the output's
shape per offset within the window (``window_dilation`` apart), padded where the windows
overhang the input, and combines them elementwise; XLA fuses the slices into one pass, so that
no (windows x window size) patch tensor is ever built. The backward passes are the dual: each
offset's contribution, of the output's shape, is spread back onto the input by a padding with
holes (``lax.pad`` with interior padding), and the offsets' spreads are summed. The max-pool's
backward pass reads the winner's offset within each window, found by the forward pass, in
place of XLA's select-and-scatter (which ``lax.reduce_window`` cannot differentiate with a
window dilation); with overlapping windows it scatters to the winners instead (see
``_max_pool_bwd``). Against ``lax.reduce_window`` (which drops NaN on XLA's CPU backend, so
that an equivalent needs a second window pass for NaN) the slices are faster forward and
several times faster backward: ``benchmarks/tricks.py``, rows "window slices" and "slices +
spreads", and ``benchmarks/pooling.py``.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from . import _checks, _numerics

PADDINGS = ("VALID", "SAME")


class Windows(NamedTuple):
    """Where the windows of a pooling lie, for an input of a given shape."""

    first_axis: int  # the first spatial axis of the input
    window: tuple[int, ...]
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]  # (low, high) per spatial axis
    spatial: tuple[int, ...]  # the input's spatial shape
    pooled: tuple[int, ...]  # the output's spatial shape
    dilation: tuple[int, ...]  # offset j of a window reads its start + j * dilation

    def offsets(self):
        """Each offset within a window (its entries' indices, not their distances), in
        row-major order."""
        return itertools.product(*map(range, self.window))

    def expand(self, per_spatial: Sequence, fill) -> list:
        """A per-axis list for the whole input: ``per_spatial`` on the spatial axes, ``fill``
        on the batch axes and the features axis."""
        return [fill] * self.first_axis + list(per_spatial) + [fill]

    def resize(self, shape, per_spatial) -> list:
        """``shape`` (the input's or the output's) with ``per_spatial`` as its spatial sizes."""
        sizes = self.expand(per_spatial, None)
        return [n if size is None else size for size, n in zip(sizes, shape, strict=True)]


def max_pool(
    x: ArrayLike,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    return_indices: bool = False,
    window_dilation: Sequence[int] | None = None,
    channel_axis: int | None = -1,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    r"""The max-pool, optionally with the position of each window's maximum.

    .. math::
        y_w = \max_{i \in w} x_i

    over each window ``w`` of the spatial dimensions, feature by feature; with
    ``window_dilation`` a window's neighbouring entries lie that far apart. The gradient goes
    to one position per window, the one ``indices`` names; where overlapping windows share
    that position, their gradients add up.

    Args:
      x: input of shape ``(*batch, *spatial, features)`` (channels-last, flax's layout; see
        ``channel_axis``), with one spatial dimension per window dimension and any number of
        batch dimensions (none included).
        Any real dtype: integers keep their dtype (the maximum is exact; as in
        ``flax.linen.max_pool`` and PyTorch) and carry no gradient, booleans are promoted to
        float32, bfloat16 and float16 are computed in float32.
      window_shape: the window's size along each spatial dimension (1, 2 or 3 of them).
      strides: the step between windows along each spatial dimension; ``None`` means 1 on
        each, as in ``flax.linen.max_pool`` (PyTorch's default is the window itself).
      padding: ``"VALID"`` (no padding), ``"SAME"`` (the output has ``ceil(n / stride)``
        positions per dimension; the padding of ``lax.reduce_window`` for the dilated
        window), or one ``(low, high)`` pair of non-negative integers per spatial
        dimension, each smaller than the window's extent along that dimension (the window
        itself without dilation). Every window must keep a real entry (see the Note).
        Padded positions never win a window and receive no gradient.
      return_indices: also return the positions of the maxima.
      window_dilation: the step between a window's neighbouring entries along each spatial
        dimension (``lax.reduce_window``'s ``window_dilation``, PyTorch's ``dilation``), so
        that a window of size ``w`` spans an extent of ``(w - 1) * window_dilation + 1``
        positions; ``None`` means 1 on each (contiguous windows).
      channel_axis: the features axis: ``-1`` (channels-last, the default), ``1`` for
        PyTorch's ``(N, C, H, W)``, or ``None`` for input without one. The spatial axes are
        the ``len(window_shape)`` axes that come last once it is set aside; the output keeps
        the input's layout.

    Returns:
      The pooled array of shape ``(*batch, *pooled, features)``, in ``x``'s dtype (float32
      for booleans), and with ``return_indices=True`` also an int32 array of the same
      shape: the flat, row-major index of each window's maximum within its input's spatial
      plane (the convention of ``torch.nn.functional.max_pool2d(return_indices=True)``,
      with ``dilation`` too), the first maximum in the window's row-major order on ties.
      :func:`max_unpool` takes it back.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([[1.0, 5.0, 2.0, 2.0], [3.0, 4.0, 0.0, 1.0]])[..., None]  # (2, 4, 1)
      >>> values, indices = jaxrelax.max_pool(x, (2, 2), (2, 2), return_indices=True)
      >>> print(values[..., 0], indices[..., 0])
      [[5. 2.]] [[1 2]]
      >>> row = jnp.array([4, 0, 1, 7, 2, 3], jnp.int32)[:, None]  # integers stay integers
      >>> values, indices = jaxrelax.max_pool(row, (2,), window_dilation=(3,), return_indices=True)
      >>> print(values[:, 0], indices[:, 0])  # windows {0, 3}, {1, 4}, {2, 5}
      [7 2 3] [3 4 5]

    Note:
      ``+inf`` wins its window and ``-inf`` loses; a window holding NaN gives NaN, and its
      index is that of its last NaN (as in PyTorch). A window whose real entries are all
      ``-inf`` (for integers: the dtype's minimum) gives that, with the index of its first
      real entry. No window consists of padding alone: without dilation, padding narrower
      than the window (the check above, which ``"SAME"`` always passes) leaves a real entry
      in every window; with dilation, a window may straddle the input and still hold only
      padding (size 1, window 2, dilation 3, padding ``(2, 2)``), so that every window is
      checked, and a padding (``"SAME"`` included) that leaves one without a real entry
      raises ValueError. Invalid window shapes, strides, padding or dilations raise
      ValueError naming the argument.
    """
    return_indices = _checks.check_flag(return_indices, "return_indices")
    x, dtype = _exact_input(x, "x")
    x, back = _numerics.to_layout(x, _checks.check_channel_axis(channel_axis, x.ndim), -1)
    windows = pooling_windows(x.shape, window_shape, strides, padding, window_dilation)
    if not return_indices:
        return back(_max_pool(x, windows).astype(dtype))
    values, indices = _max_pool_with_indices(x, windows)
    return back(values.astype(dtype)), back(indices)


def max_unpool(
    values: ArrayLike,
    indices: ArrayLike,
    window_shape: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    window_dilation: Sequence[int] | None = None,
    spatial_shape: Sequence[int] | None = None,
    channel_axis: int | None = -1,
) -> jax.Array:
    r"""The reverse of :func:`max_pool`: each pooled value put back where its maximum was.

    The result is zero everywhere except at each window's index, where it holds that
    window's value (SegNet's decoder; PyTorch's ``max_unpool1d/2d/3d``). Where several
    windows name one position (overlapping windows) it holds the largest of their values,
    whatever their order: for :func:`max_pool`'s own indices these are the same input value.
    ``max_unpool(*max_pool(x, w, s, p, return_indices=True), w, s, p)`` keeps exactly the
    window maxima of ``x`` in place and zeros the rest.

    The output's spatial shape is found from the pooling's arguments, as PyTorch's
    ``kernel_size``, ``stride`` and ``padding`` find it, and checked against ``values``' pooled
    shape when the function is traced (shapes are static, so under ``jit`` too): a shape that
    the pooling would not take to ``values``' shape raises ValueError. Where several shapes
    would (a stride above 1 leaves up to ``stride - 1`` entries out, or ``"SAME"`` pads them),
    it is PyTorch's default, ``(pooled - 1) * stride + (window - 1) * dilation + 1 - low -
    high`` with explicit or ``"VALID"`` padding, and ``pooled * stride`` with ``"SAME"``;
    ``spatial_shape`` names another one of them.

    The gradient with respect to ``values`` is what PyTorch's gives: each window receives the
    output's cotangent at its index (overlapping windows that share an index all receive it).
    ``indices`` get no gradient.

    Args:
      values: pooled values of shape ``(*batch, *pooled, features)``, any real dtype:
        integers keep theirs (and carry no gradient), as in :func:`max_pool`.
      indices: integer array of ``values``' shape: for each value, the flat row-major index
        of its position within the output's spatial plane, in ``[0, prod(spatial_shape))``,
        as :func:`max_pool` returns them.
      window_shape: the pooling's window, as given to :func:`max_pool` (1, 2 or 3 sizes).
      strides: the pooling's strides (``None``: 1 on each spatial dimension).
      padding: the pooling's padding: ``"VALID"``, ``"SAME"`` or ``(low, high)`` pairs.
      window_dilation: the pooling's dilation (``None``: 1 on each spatial dimension).
      spatial_shape: the output's spatial shape, typically ``x.shape[-1 - len(window_shape):
        -1]`` of the input that was pooled: with the pooling's arguments, one of the shapes
        they take to ``values``' shape; without them (``window_shape=None``), any shape
        (only the indices' range can be checked).
      channel_axis: the features axis of ``values`` and ``indices``, as in
        :func:`max_pool`; the output has the same layout.

    Returns:
      An array of shape ``(*batch, *spatial_shape, features)`` in ``values``' dtype
      (float32 for booleans).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([[1.0, 5.0, 2.0, 2.0], [3.0, 4.0, 0.0, 1.0]])[..., None]
      >>> pooled = jaxrelax.max_pool(x, (2, 2), (2, 2), return_indices=True)
      >>> print(jaxrelax.max_unpool(*pooled, (2, 2), (2, 2))[..., 0])
      [[0. 5. 2. 0.]
       [0. 0. 0. 0.]]

    Note:
      NaN values are put in place as they are; a ``-inf`` value (for integers, the dtype's
      minimum) holds its position as it is. Concrete indices out of range raise ValueError;
      traced ones cannot be checked, and a value whose index is out of range is dropped
      (its gradient is 0). Flat indices name positions of one plane: those of a
      :func:`max_pool` of another spatial shape land in the wrong places, which only the
      pooling's arguments (or the right ``spatial_shape``) rule out.
    """
    v, dtype = _exact_input(values, "values")
    layout = _checks.check_channel_axis(channel_axis, v.ndim, "values")
    v, back = _numerics.to_layout(v, layout, -1)
    indices = _checks.as_real_array(indices, "indices", booleans=False)
    if indices.ndim == v.ndim - (layout is None):
        indices = _numerics.to_layout(indices, layout, -1)[0]
    if window_shape is None:
        if spatial_shape is None:
            raise TypeError(
                "max_unpool needs the pooling's window_shape (with its strides, padding and "
                "window_dilation), or spatial_shape"
            )
        spatial = _check_sizes(spatial_shape, "spatial_shape")
        _pooled_shape(v, len(spatial))
    else:
        spatial = _unpooled_shape(v, window_shape, strides, padding, window_dilation, spatial_shape)
    flat = _flat_indices(indices, v.shape, spatial)
    return back(_unpool(v, flat, spatial).astype(dtype))


def _pooled_shape(values: jax.Array, dims: int) -> tuple[int, ...]:
    if values.ndim < dims + 1:
        raise ValueError(
            f"values must have {dims} spatial dimension(s) and a features dimension, "
            f"got shape {values.shape}"
        )
    return tuple(values.shape[-1 - dims : -1])


def _unpooled_shape(values, window_shape, strides, padding, dilation, spatial_shape):
    """The spatial shapes that the pooling takes to ``values``' pooled shape, dimension by
    dimension; ``spatial_shape`` (checked to be one of them) or the default one."""
    window = _check_sizes(window_shape, "window_shape")
    n = len(window)
    pooled = _pooled_shape(values, n)
    strides = (1,) * n if strides is None else _check_sizes(strides, "strides", n)
    dilation = (1,) * n if dilation is None else _check_sizes(dilation, "window_dilation", n)
    pads = padding if isinstance(padding, str) else _check_pads(padding, window, dilation)
    choices = []
    for d in range(n):
        pad = pads if isinstance(pads, str) else (pads[d],)
        extent = (window[d] - 1) * dilation[d] + 1
        # The stride's worth of sizes that pool to pooled[d] positions: ceil(size / stride)
        # of them for "SAME", floor((size + low + high - extent) / stride) + 1 otherwise;
        # pooling_windows then rules out those that leave a window without a real entry.
        low, high = (0, 0) if isinstance(pads, str) else pads[d]
        first = (pooled[d] - 1) * strides[d] + (1 if pads == "SAME" else extent - low - high)
        sizes = [
            size
            for size in range(max(first, 1), first + strides[d])
            if _pooled_size(size, window[d], strides[d], pad, dilation[d]) == pooled[d]
        ]
        choices.append(sizes)
    if spatial_shape is not None:
        spatial = _check_sizes(spatial_shape, "spatial_shape", n)
        if all(s in c for s, c in zip(spatial, choices, strict=True)):
            return spatial
        raise ValueError(
            f"spatial_shape {spatial} does not pool to values' pooled shape {pooled} with "
            f"window_shape {window}, strides {strides}, padding {padding!r} and "
            f"window_dilation {dilation}; it could be {_ranges(choices)}"
        )
    if not all(choices):
        raise ValueError(
            f"no spatial shape pools to values' pooled shape {pooled} with window_shape "
            f"{window}, strides {strides}, padding {padding!r} and window_dilation {dilation}"
        )
    return tuple(c[-1] if padding == "SAME" else c[0] for c in choices)


def _pooled_size(size, window, stride, padding, dilation) -> int | None:
    """The pooled length of one dimension of ``size`` entries, None where it cannot pool."""
    try:
        return pooling_windows((size, 1), (window,), (stride,), padding, (dilation,)).pooled[0]
    except ValueError:
        return None


def _ranges(choices) -> str:
    return " x ".join(f"{c[0]}..{c[-1]}" if len(c) > 1 else str(c[0]) for c in choices if c)


def soft_pool(
    x: ArrayLike,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    temperature: ArrayLike = 1.0,
    window_dilation: Sequence[int] | None = None,
    channel_axis: int | None = -1,
) -> jax.Array:
    r"""The softmax-weighted mean of each window, a soft max-pool.

    .. math::
        y_w = \sum_{i \in w} \mathrm{softmax}(x_w / t)_i \, x_i

    (Goodfellow et al.'s :math:`\mathrm{softmax}(z)^\top z`; SoftPool at ``t = 1``). It lies
    between the window's mean and its maximum; as ``t -> 0`` it tends to :func:`max_pool`
    (the mean of tied maxima), as ``t -> inf`` to the average over the window's real
    (unpadded) entries. The gradient is exact, with respect to ``x`` and ``temperature``:
    :math:`\partial y_w / \partial x_i = p_i (1 + (x_i - y_w) / t)` and
    :math:`\partial y_w / \partial t = -\mathrm{Var}_p(x) / t^2`. Each window is shifted by
    its own maximum, so nothing overflows: the backward pass keeps the input and three
    arrays of the output's size.

    Args:
      x: channels-last input, as in :func:`max_pool`, but integers and booleans are
        promoted to float as ``jax.nn.softmax`` promotes them (float32; float64 for int64
        under x64): a relaxation's value is no integer.
      window_shape: as in :func:`max_pool`.
      strides: as in :func:`max_pool` (``None``: 1 on each spatial dimension).
      padding: as in :func:`max_pool`; padded positions take no part and get no gradient.
      temperature: a positive scalar, or an array broadcastable to ``x`` with size 1 along
        the spatial dimensions (one temperature per batch element or feature, say). It may
        be traced, and receives a gradient.
      window_dilation: as in :func:`max_pool` (``None``: 1 on each spatial dimension).
      channel_axis: as in :func:`max_pool`.

    Returns:
      The pooled array of shape ``(*batch, *pooled, features)``, in ``x``'s float dtype
      (the promoted one for integers and booleans).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([0.0, 1.0, 4.0, 4.0])[:, None]  # (4, 1): one spatial dimension
      >>> print(jaxrelax.soft_pool(x, (2,), (2,), temperature=1.0)[:, 0])
      [0.7311 4.    ]

    References:
      Goodfellow et al., Deep Learning, 2016, section 6.2.2.3.
      Stergiou, Poppe & Kalliatakis, Refining activation downsampling with SoftPool, 2021,
      https://arxiv.org/abs/2101.00440

    Note:
      ``+inf`` entries win their window (which gives ``+inf``) and share its gradient equally,
      the limit of equal, ever larger entries; ``-inf`` entries get weight 0 and zero
      gradient at any temperature, and a window whose real entries are all ``-inf`` gives
      ``-inf`` with zero gradient. A window holding NaN gives NaN, and NaN gradients to its
      entries. A concrete ``temperature <= 0`` raises ValueError; a traced negative one gives
      NaN. Temperatures beyond about ``1e38`` (float32) behave as in :func:`jaxrelax.softmax`.
    """
    return _smooth_pool(
        "soft", x, window_shape, strides, padding, temperature, window_dilation, channel_axis
    )


def lse_pool(
    x: ArrayLike,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    temperature: ArrayLike = 1.0,
    window_dilation: Sequence[int] | None = None,
    channel_axis: int | None = -1,
) -> jax.Array:
    r"""The log-sum-exp of each window, the smooth max-pool.

    .. math::
        y_w = t \log \sum_{i \in w} \exp(x_i / t)

    It lies between the window's maximum and the maximum plus ``t log |w|`` (``|w|`` its
    real entries), and tends to :func:`max_pool` as ``t -> 0``. Its gradient is the window's
    softmax, the weights of :func:`soft_pool`; the gradient with respect to ``temperature``
    is the softmax's entropy. Both are exact.

    Args:
      x: channels-last input, as in :func:`soft_pool` (integers are promoted to float).
      window_shape: as in :func:`max_pool`.
      strides: as in :func:`max_pool` (``None``: 1 on each spatial dimension).
      padding: as in :func:`max_pool`; padded positions take no part and get no gradient.
      temperature: as in :func:`soft_pool`.
      window_dilation: as in :func:`max_pool` (``None``: 1 on each spatial dimension).
      channel_axis: as in :func:`max_pool`.

    Returns:
      The pooled array of shape ``(*batch, *pooled, features)``, in ``x``'s float dtype
      (the promoted one for integers and booleans).

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([0.0, 0.0, 4.0, 4.0])[:, None]
      >>> print(jaxrelax.lse_pool(x, (2,), (2,))[:, 0].round(4))
      [0.6931 4.6931]

    References:
      Pinheiro & Collobert, From Image-level to Pixel-level Labeling with Convolutional
      Networks, 2015, https://arxiv.org/abs/1411.6228

    Note:
      Infinities, NaN and temperatures behave as in :func:`soft_pool`; a window holding
      ``c`` entries ``+inf`` has the limit's temperature gradient, ``log c`` (the entropy of
      its softmax), as :func:`jaxrelax.smooth_max` has.
    """
    return _smooth_pool(
        "lse", x, window_shape, strides, padding, temperature, window_dilation, channel_axis
    )


def st_max_pool(
    x: ArrayLike,
    window_shape: Sequence[int],
    strides: Sequence[int] | None = None,
    padding: str | Sequence[tuple[int, int]] = "VALID",
    *,
    temperature: ArrayLike = 1.0,
    window_dilation: Sequence[int] | None = None,
    channel_axis: int | None = -1,
) -> jax.Array:
    r"""Straight-through max-pool: the exact max-pool forward, :func:`soft_pool`'s gradient.

    The forward pass is ``max_pool(x, window_shape, strides, padding)`` exactly (with the same
    ``window_dilation``); the backward pass is the vector-Jacobian product of
    ``soft_pool(x, window_shape, strides, padding, temperature=temperature)``, so each
    window's gradient is spread over its near-maxima rather than given to its single winner.
    The temperature receives soft_pool's gradient.

    Args:
      x: channels-last input, as in :func:`soft_pool`: integers are promoted to float (the
        gradient is soft_pool's), where :func:`max_pool` keeps them.
      window_shape: as in :func:`max_pool`.
      strides: as in :func:`max_pool` (``None``: 1 on each spatial dimension).
      padding: as in :func:`max_pool`.
      temperature: as in :func:`soft_pool`.
      window_dilation: as in :func:`max_pool` (``None``: 1 on each spatial dimension).
      channel_axis: as in :func:`max_pool`.

    Returns:
      The max-pooled array of shape ``(*batch, *pooled, features)``, in ``x``'s float dtype
      (the promoted one for integers and booleans).

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([0.0, 1.0])[:, None]
      >>> print(jaxrelax.st_max_pool(x, (2,))[:, 0])
      [1.]
      >>> print(jax.grad(lambda x: jaxrelax.st_max_pool(x, (2,)).sum())(x)[:, 0])
      [0.0723 0.9277]

    Note:
      The forward value is that of :func:`max_pool` (NaN and infinities included); the
      gradient is that of :func:`soft_pool`.
    """
    return _smooth_pool(
        "st", x, window_shape, strides, padding, temperature, window_dilation, channel_axis
    )


def _smooth_pool(kind, x, window_shape, strides, padding, temperature, dilation, channel_axis):
    a = _checks.prepare(x, None)
    layout = _checks.check_channel_axis(channel_axis, a.x.ndim)
    x, back = _numerics.to_layout(a.x, layout, -1)
    windows = pooling_windows(x.shape, window_shape, strides, padding, dilation)
    spatial_axes = tuple(range(windows.first_axis, windows.first_axis + len(windows.window)))
    temperature = _numerics.per_slice_to_layout(temperature, a.x.ndim, layout, -1)
    t = _checks.check_temperature(temperature, x, spatial_axes)
    return back(_smooth(x, t, windows, kind)).astype(a.dtype)


# The entry points are jit-compiled (static geometry), so that an eager call compiles one
# program per shape and geometry rather than running each window offset's slice on its own.
# Integers carry no gradient: they go around the custom_vjp rules, which are for floats.
@functools.partial(jax.jit, static_argnums=1)
def _max_pool(x, windows):
    if jnp.issubdtype(x.dtype, jnp.integer):
        return _window_max(x, windows)
    return _max_pool_rule(x, windows, _overlapping(windows))


@functools.partial(jax.jit, static_argnums=1)
def _max_pool_with_indices(x, windows):
    if jnp.issubdtype(x.dtype, jnp.integer):
        return _winners(x, windows, True)
    return _max_pool_winners_rule(x, windows, True)


@functools.partial(jax.jit, static_argnums=2)
def _unpool(values, flat, spatial):
    if jnp.issubdtype(values.dtype, jnp.integer):
        return _unpool_values(values, flat, spatial)
    return _unpool_rule(values, flat, spatial)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _smooth(x, t, windows, kind):
    return _smooth_rule(x, t, windows, kind)


def _exact_input(x, name: str) -> tuple[jax.Array, np.dtype]:
    """(compute array, result dtype) for max_pool and max_unpool: integers as they are (a
    maximum is exact in them), the rest as :func:`_checks.prepare` makes them."""
    array = _checks.as_real_array(x, name)
    if jnp.issubdtype(array.dtype, jnp.integer):
        return array, array.dtype
    a = _checks.prepare(array, None, name=name)
    return a.x, a.dtype


def pooling_windows(shape, window_shape, strides, padding, window_dilation=None) -> Windows:
    """Checks the pooling arguments against an input of ``shape`` and returns its windows."""
    window = _check_sizes(window_shape, "window_shape")
    n = len(window)
    if len(shape) < n + 1:
        raise ValueError(
            f"x must have {n} spatial dimension(s) (one per window dimension) and a features "
            f"dimension, got shape {tuple(shape)}"
        )
    first_axis = len(shape) - 1 - n
    spatial = tuple(shape[first_axis:-1])
    if 0 in spatial:
        raise ValueError(f"x must have no empty spatial dimension, got shape {tuple(shape)}")
    strides = (1,) * n if strides is None else _check_sizes(strides, "strides", n)
    dilation = (
        (1,) * n if window_dilation is None else _check_sizes(window_dilation, "window_dilation", n)
    )
    extent = tuple((w - 1) * d + 1 for w, d in zip(window, dilation, strict=True))
    if isinstance(padding, str):
        if padding not in PADDINGS:
            raise ValueError(
                f"padding must be one of {PADDINGS} or a sequence of (low, high) pairs, "
                f"got {padding!r}"
            )
        pads = tuple(lax.padtype_to_pads(spatial, extent, strides, padding))
    else:
        pads = _check_pads(padding, window, dilation)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    padded = tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads, strict=True))
    if any(e > p for e, p in zip(extent, padded, strict=True)):
        dilated = "" if extent == window else f" with window_dilation {dilation} (extent {extent})"
        raise ValueError(
            f"window_shape {window}{dilated} must fit in the padded input's spatial shape {padded}"
        )
    pooled = tuple((p - e) // s + 1 for p, e, s in zip(padded, extent, strides, strict=True))
    windows = Windows(first_axis, window, strides, pads, spatial, pooled, dilation)
    _check_real_entries(windows, padding)
    return windows


def _check_sizes(value, name: str, length: int | None = None) -> tuple[int, ...]:
    """A sequence of 1 to 3 positive integers (``length`` of them when given), or an error
    naming the argument."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise TypeError(f"{name} must be a sequence of positive integers, got {value!r}")
    sizes = tuple(_checks.check_integer(v, name) for v in value)
    expected = "1, 2 or 3" if length is None else str(length)
    if (length is None and not 1 <= len(sizes) <= 3) or (length not in (None, len(sizes))):
        raise ValueError(f"{name} must have {expected} entries, got {tuple(value)!r}")
    return sizes


def _check_pads(padding, window, dilation) -> tuple[tuple[int, int], ...]:
    try:
        pads = tuple(tuple(pair) for pair in padding)
    except TypeError:
        raise TypeError(
            f"padding must be 'VALID', 'SAME' or a sequence of (low, high) pairs, got {padding!r}"
        ) from None
    if len(pads) != len(window) or any(len(pair) != 2 for pair in pads):
        raise ValueError(
            f"padding must have one (low, high) pair per spatial dimension ({len(window)}), "
            f"got {padding!r}"
        )
    pads = tuple(tuple(_checks.check_integer(p, "padding", low=0) for p in pair) for pair in pads)
    extent = tuple((w - 1) * d + 1 for w, d in zip(window, dilation, strict=True))
    if any(p >= e for pair, e in zip(pads, extent, strict=True) for p in pair):
        bound = (
            f"window_shape {window}"
            if extent == window
            else f"the extent {extent} of window_shape {window} with window_dilation {dilation}"
        )
        raise ValueError(
            f"padding must be smaller than {bound} on each side (wider padding would make "
            f"windows of padding alone), got {padding!r}"
        )
    return pads


def _check_real_entries(windows: Windows, padding) -> None:
    """Raises ValueError if some window holds padding alone: possible with dilation only (its
    entries may straddle the input), as padding narrower than a contiguous window always
    leaves it a real entry. A window is real where its entries along every axis are."""
    for axis, (n, w, s, d, (lo, _), m) in enumerate(
        zip(
            windows.spatial,
            windows.window,
            windows.strides,
            windows.dilation,
            windows.padding,
            windows.pooled,
            strict=True,
        )
    ):
        positions = s * np.arange(m)[:, None] + d * np.arange(w) - lo  # within the input
        real = ((positions >= 0) & (positions < n)).any(axis=1)
        if not real.all():
            i = int(np.argmin(real))
            pads = f" (pads {windows.padding})" if isinstance(padding, str) else ""
            raise ValueError(
                f"padding {padding!r}{pads} leaves window {i} of spatial "
                f"dimension {axis} with padding alone (its entries {positions[i].tolist()} lie "
                f"outside the input's {n} positions), for window_shape {windows.window}, "
                f"strides {windows.strides} and window_dilation {windows.dilation}"
            )


class _Offset(NamedTuple):
    """One offset within the window: the input's entries at it, for the windows where that
    entry is real (a strided slice of the input, no padded copy of it)."""

    index: int  # the offset's place in the window, row-major
    entries: jax.Array | None  # None where no window has a real entry at this offset
    windows_at: tuple[tuple[int, int], ...]  # per spatial axis, the (first, last) such window
    windows: Windows

    def pad(self, array, fill) -> jax.Array:
        """An array of ``entries``' shape, padded with ``fill`` to the output's shape."""
        w = self.windows
        config = [
            (first, m - 1 - last, 0)
            for (first, last), m in zip(self.windows_at, w.pooled, strict=True)
        ]
        return lax.pad(array, jnp.asarray(fill, array.dtype), w.expand(config, (0, 0, 0)))

    def crop(self, array) -> jax.Array:
        """An output-shaped array, cropped to ``entries``' windows."""
        w = self.windows
        start = w.expand([first for first, _ in self.windows_at], 0)
        limit = w.resize(array.shape, [last + 1 for _, last in self.windows_at])
        return lax.slice(array, start, limit)


def _offsets(x: jax.Array, windows: Windows):
    """Each offset within the window, in row-major order, with its entries (see _Offset)."""
    for index, offset in enumerate(windows.offsets()):
        start, limit, windows_at = [], [], []
        for o, n, s, d, (lo, _), m in zip(
            offset,
            windows.spatial,
            windows.strides,
            windows.dilation,
            windows.padding,
            windows.pooled,
            strict=True,
        ):
            # window i reads position s i + o d - lo: the real ones are i = first..last
            first = max(0, -((o * d - lo) // s))
            last = min(m - 1, (n - 1 + lo - o * d) // s)
            start.append(s * first + o * d - lo)
            limit.append(s * last + o * d - lo + 1)
            windows_at.append((first, last))
        entries = None
        if all(first <= last for first, last in windows_at):
            entries = lax.slice(
                x,
                windows.expand(start, 0),
                windows.resize(x.shape, limit),
                windows.expand(windows.strides, 1),
            )
        yield _Offset(index, entries, tuple(windows_at), windows)


def _window_slices(x: jax.Array, windows: Windows, *, padded_copy: bool = False):
    """(offset index, slice) for each offset within the window, in row-major order: the
    slice holds, for every window, its entry at that offset, and ``_lowest`` where that
    entry is padding. Each slice is a strided slice of ``x`` padded to the output's shape:
    XLA fuses that padding into a pass that reads the slice once, where slicing a padded
    copy of ``x`` writes the copy out first (a 3x3 stride-2 max-pool with padding 1 took 4
    to 8 times longer: ``benchmarks/pooling.py``, row "max_pool 3x3/2 p1"). A pass that
    reads each slice more than once has XLA write out every padded slice instead: there,
    ``padded_copy`` slices one padded copy of ``x`` (without it, the soft pools' rows took
    25 to 65% longer)."""
    if padded_copy:
        padding = windows.expand([(lo, hi, 0) for lo, hi in windows.padding], (0, 0, 0))
        x = lax.pad(x, _lowest(x.dtype), padding)
        spatial = tuple(
            n + lo + hi for n, (lo, hi) in zip(windows.spatial, windows.padding, strict=True)
        )
        windows = windows._replace(spatial=spatial, padding=((0, 0),) * len(spatial))
    shape = windows.resize(x.shape, windows.pooled)
    for at in _offsets(x, windows):
        if at.entries is None:
            yield at.index, jnp.full(shape, _lowest(x.dtype))
        else:
            yield at.index, at.pad(at.entries, _lowest(x.dtype))


def _lowest(dtype) -> jax.Array:
    """The padding's value, at most every entry's: -inf, or an integer dtype's minimum (a tie
    with the padding never wins: winners are found among the real entries alone)."""
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.asarray(jnp.iinfo(dtype).min, dtype)
    return jnp.asarray(-jnp.inf, dtype)


def _spread(parts, windows: Windows, shape) -> jax.Array:
    """The transpose of :func:`_window_slices`: sums each offset's part (of the pooled shape)
    back onto the input's positions; padded positions are dropped."""
    total = None
    for offset, part in zip(windows.offsets(), parts, strict=True):
        config = [(0, 0, 0)] * len(shape)
        for i, (o, d, (lo, _), s, n, m) in enumerate(
            zip(
                offset,
                windows.dilation,
                windows.padding,
                windows.strides,
                windows.spatial,
                windows.pooled,
                strict=True,
            )
        ):
            low = o * d - lo
            config[windows.first_axis + i] = (low, n - low - (m - 1) * s - 1, s - 1)
        spread = lax.pad(part, jnp.zeros((), part.dtype), config)
        total = spread if total is None else total + spread
    return total


def _window_max(x: jax.Array, windows: Windows, *, padded_copy: bool = False) -> jax.Array:
    """Each window's maximum. An elementwise ``max`` of the slices (see
    :func:`_window_slices`): it propagates NaN, which ``lax.reduce_window`` drops on XLA's
    CPU backend."""
    peak = None
    for _, part in _window_slices(x, windows, padded_copy=padded_copy):
        peak = part if peak is None else jnp.maximum(peak, part)
    return peak


def _winners(x: jax.Array, windows: Windows, plane: bool) -> tuple[jax.Array, jax.Array]:
    """(maximum, winner) per window, the winner being its first maximum, in the window's
    row-major order; in a window with NaN, the maximum is NaN and the winner its last NaN (as
    in PyTorch); in one whose real entries are all -inf (an integer dtype's minimum), the
    winner is its first real entry (never padding). Winners are named by their offsets'
    indices within the window or, with ``plane``, by their flat row-major indices within the
    input's spatial plane (:func:`_labels`)."""
    peak = _window_max(x, windows)
    offsets = [at for at in _offsets(x, windows) if at.entries is not None]
    labels = _labels(windows, plane)
    # Every window has a real entry equal to its maximum, unless the maximum is NaN: the
    # first, by a second pass over the window (one pass keeping both the running maximum
    # and its winner reads each padded slice twice, which XLA then writes out: 5 to 7 times
    # slower at 3x3 stride 2 with padding 1). Compared before padding, padding never wins.
    winner = jnp.zeros((), labels[0].dtype)
    for at in reversed(offsets):
        hit = at.pad(at.entries == at.crop(peak), False)
        winner = jnp.where(hit, labels[at.index], winner)

    if jnp.issubdtype(x.dtype, jnp.floating):  # a window holding NaN: its last NaN
        for at in offsets:
            winner = jnp.where(at.pad(jnp.isnan(at.entries), False), labels[at.index], winner)
    return peak, winner + _window_starts(windows) if plane else winner


def _labels(windows: Windows, plane: bool) -> list[np.ndarray]:
    """Per offset (row-major), the label of each window's entry there: the offset's index
    within the window (int8 for windows of at most 127 entries), or with ``plane`` the
    entry's flat row-major index within the input's spatial plane less its window's start
    (see :func:`_window_starts`). Both grow by a fixed step per offset along each axis."""
    units = _label_units(windows, plane)
    dtype = _label_dtype(windows, plane)
    return [np.asarray(np.dot(offset, units), dtype) for offset in windows.offsets()]


def _window_starts(windows: Windows) -> np.ndarray:
    """The flat row-major plane index of each window's offset 0 (negative in the padding),
    broadcastable to the output: a winner's plane index less it is its label."""
    start = np.zeros((), np.int32)
    for axis, (s, (lo, _), m, n) in enumerate(
        zip(windows.strides, windows.padding, windows.pooled, windows.spatial, strict=True)
    ):
        start = start * n + _along(windows, axis, s * np.arange(m, dtype=np.int32) - lo)
    return start


def _label_units(windows: Windows, plane: bool) -> list[int]:
    """What a label gains per step of offset along each spatial axis."""
    sizes, steps = (windows.spatial, windows.dilation) if plane else (windows.window, None)
    return [
        (1 if steps is None else steps[axis]) * int(np.prod(sizes[axis + 1 :]))
        for axis in range(len(sizes))
    ]


def _label_dtype(windows: Windows, plane: bool) -> type:
    small = not plane and np.prod(windows.window) <= np.iinfo(np.int8).max
    return np.int8 if small else np.int32


def _along(windows: Windows, axis: int, values: np.ndarray) -> np.ndarray:
    """Per-window values along one spatial axis, broadcastable to the output."""
    view = [1] * len(windows.window)
    view[axis] = -1
    return values.reshape(windows.expand(view, 1))


def _overlapping(windows: Windows) -> bool:
    """Whether windows overlap along some axis (their extents, with dilation)."""
    extent = ((w - 1) * d + 1 for w, d in zip(windows.window, windows.dilation, strict=True))
    return any(s < e for s, e in zip(windows.strides, extent, strict=True))


# ``plane``: whether the backward pass reads the winners as plane indices (see _labels):
# always with overlapping windows (see _max_pool_bwd) and where they are returned anyway.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_rule(x, windows, plane):
    return _window_max(x, windows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_winners_rule(x, windows, plane):
    return _winners(x, windows, plane)


def _max_pool_fwd(x, windows, plane):
    return _winners(x, windows, plane)


def _max_pool_winners_fwd(x, windows, plane):
    peak, winner = _winners(x, windows, plane)
    return (peak, winner), winner


def _max_pool_bwd(windows, plane, winner, cotangent):
    if isinstance(cotangent, tuple):  # (values, winners); the winners' cotangent is float0
        cotangent = cotangent[0]
    shape = cotangent.shape[: windows.first_axis] + windows.spatial + cotangent.shape[-1:]
    if _overlapping(windows):
        # Compiled with the forward pass, XLA fuses the winners' search into every offset's
        # part of the spread (nine searches for a 3x3 window; an optimisation barrier does
        # not survive its passes). A scatter reads it once.
        flat = _global_indices(winner, shape, windows.spatial)
        dx = (
            jnp.zeros(int(np.prod(shape)), cotangent.dtype)
            .at[flat.reshape(-1)]
            .add(cotangent.reshape(-1), mode="drop")
        )
        return (dx.reshape(shape),)
    if plane:
        winner = winner - _window_starts(windows)
    parts = (jnp.where(winner == label, cotangent, 0) for label in _labels(windows, plane))
    return (_spread(parts, windows, shape),)


_max_pool_rule.defvjp(_max_pool_fwd, _max_pool_bwd)
_max_pool_winners_rule.defvjp(_max_pool_winners_fwd, _max_pool_bwd)


def _flat_indices(indices, values_shape, spatial) -> jax.Array:
    """Checks max_unpool's indices and returns them as flat indices into the whole output
    (batch, plane, feature), with out-of-range traced indices mapped past its end."""
    indices = _checks.as_real_array(indices, "indices", booleans=False)
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise TypeError(f"indices must be an integer array, got dtype {indices.dtype}")
    if indices.shape != tuple(values_shape):
        raise ValueError(
            f"indices of shape {indices.shape} must have values' shape {tuple(values_shape)}"
        )
    plane = int(np.prod(spatial))
    if not isinstance(indices, jax.core.Tracer) and indices.size:
        host = np.asarray(indices)  # NumPy: under jit, jnp would stage a concrete array
        low, high = int(host.min()), int(host.max())
        if low < 0 or high >= plane:
            raise ValueError(
                f"indices must lie in [0, {plane}) for spatial_shape {spatial}, got "
                f"{low if low < 0 else high}"
            )
    batch = values_shape[: -1 - len(spatial)]
    return _global_indices(indices, (*batch, *spatial, values_shape[-1]), spatial)


def _global_indices(plane_indices, shape, spatial) -> jax.Array:
    """Plane indices (of shape (*batch, *pooled, features)) as flat indices into an array of
    ``shape`` (*batch, *spatial, features); out-of-range ones point past its end."""
    plane = int(np.prod(spatial))
    total = int(np.prod(shape))
    dtype = jnp.int64 if total > _checks.MAX_INT32 and jax.config.jax_enable_x64 else jnp.int32
    if total > _checks.MAX_INT32 and dtype == jnp.int32:
        raise ValueError(f"an array of {total} entries needs 64-bit indices: enable x64")
    lead = len(shape) - 1 - len(spatial)
    batch, features = int(np.prod(shape[:lead])), shape[-1]
    pooled = int(np.prod(plane_indices.shape[lead:-1]))
    rows = plane_indices.reshape(batch, pooled, features).astype(dtype)
    base = jnp.arange(batch, dtype=dtype)[:, None, None] * plane
    flat = (base + rows) * features + jnp.arange(features, dtype=dtype)
    return jnp.where((rows >= 0) & (rows < plane), flat, total).reshape(plane_indices.shape)


def _unpool_values(values, flat, spatial):
    batch = values.shape[: -1 - len(spatial)]
    features = values.shape[-1]
    size = int(np.prod(batch)) * int(np.prod(spatial)) * features
    updates, flat = values.reshape(-1), flat.reshape(-1)
    lowest = _lowest(values.dtype)

    def held():  # each position's largest value, and the lowest value where there is none
        return jnp.full((size,), lowest, values.dtype).at[flat].max(updates, mode="drop")

    def untouched_at_lowest():
        unpooled = held()
        return jnp.where(unpooled == lowest, 0, unpooled)

    def written_apart():  # a second scatter, of which positions are written
        return jnp.where(jnp.zeros((size,), bool).at[flat].set(True, mode="drop"), held(), 0)

    # A position whose value is the lowest value looks untouched: the second scatter runs
    # only where some value may be it. A plain minimum tells (a NaN hides the rest from it,
    # and takes that path too). Counting such values cost 40% more, as did choosing the
    # path after the first scatter rather than around both (benchmarks/pooling.py, rows
    # "max_unpool"); so did scattering the floats' bits as ordered integers, in one pass.
    low = jnp.min(updates, initial=0)
    unpooled = lax.cond((low == lowest) | (low != low), written_apart, untouched_at_lowest)
    return unpooled.reshape(*batch, *spatial, features)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _unpool_rule(values, flat, spatial):
    return _unpool_values(values, flat, spatial)


def _unpool_fwd(values, flat, spatial):
    return _unpool_values(values, flat, spatial), flat


def _unpool_bwd(spatial, flat, cotangent):
    del spatial
    return cotangent.reshape(-1).at[flat].get(mode="fill", fill_value=0), None


_unpool_rule.defvjp(_unpool_fwd, _unpool_bwd)


class _WindowSoftmax(NamedTuple):
    """The per-window statistics of the softmax ``p = exp(u) / den`` over each window, with
    ``u = (x - max) / t`` (computed from halves, see ``_numerics.shift_from_top``)."""

    top: jax.Array  # half the window's maximum (capped; see _numerics.halved_top)
    den: jax.Array  # sum of exp(u): at least 1, or 0 when all real entries are -inf
    mean_gap: jax.Array  # sum of p (x - max) / 2, in x's units: p u at a huge temperature
    #                      would be subnormal and flushed


def _window_softmax(x, t, windows) -> tuple[_WindowSoftmax, jax.Array]:
    """The statistics, and each window's maximum. The logits are clamped at a floor whose
    exponential is 0, so that -inf entries, padding and logits that overflow to -inf (a tiny
    temperature) weigh 0 with no 0 * inf."""
    peak = _window_max(x, windows, padded_copy=True)
    top = _numerics.halved_top(lax.stop_gradient(peak))
    factor = _numerics.halves_factor(1, x.dtype, t)
    den = sum_gap = 0
    for _, part in _window_slices(x, windows, padded_copy=True):
        u = _window_logits(part, top, factor)
        e = jnp.exp(u)
        den = den + e
        sum_gap = sum_gap + e * _half_gap(part, top, u)
    return _WindowSoftmax(top, den, sum_gap / _nonzero(den)), peak


def _nonzero(den):
    """den, or 1 where it is 0 (windows of -inf entries only); NaN stays NaN."""
    return jnp.where(den == 0, 1, den)


def _logit_floor(dtype) -> float:
    """A logit whose exponential is exactly 0 in ``dtype``."""
    return float(np.log(jnp.finfo(dtype).smallest_subnormal)) - 2


@jax.custom_jvp
def _window_logits(part, top, factor):
    """``max((x - max) / t, floor)`` from halves (``factor`` is ``2 / t``): ``-inf`` entries
    and padding give the floor, with derivative 0 (no 0 * inf), and ``top`` gets none."""
    u = (_numerics.capped_half(part) - top) * _numerics.inf_wins(top, factor)
    return jnp.maximum(u, _logit_floor(part.dtype))


@_window_logits.defjvp
def _window_logits_jvp(primals, tangents):
    part, top, factor = primals
    d_part, _, d_factor = tangents
    u = _window_logits(part, top, factor)
    live = u > _logit_floor(part.dtype)
    return u, jnp.where(live, d_part * (factor / 2) + _half_gap(part, top, u) * d_factor, 0)


def _half_gap(part, top, u):
    """``(x - max) / 2``, and 0 where the logit ``u`` is at the floor (no ``0 * inf``)."""
    live = u > _logit_floor(part.dtype)
    return jnp.where(live, _numerics.capped_half(part) - top, 0)  # double where


def _smooth_value(kind, stats: _WindowSoftmax, peak, t):
    if kind == "st":
        return peak
    if kind == "lse":
        return _numerics.max_of_top(stats.top) + t * jnp.log(stats.den)
    # max + t sum p u = 2 (top + sum p (x - max) / 2): from halves, so that it cannot overflow
    value = 2 * (stats.top + stats.mean_gap)
    return jnp.where(stats.den == 0, -jnp.inf, value)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _smooth_rule(x, t, windows, kind):
    if kind == "st":
        return _window_max(x, windows)
    stats, peak = _window_softmax(x, t, windows)
    return _smooth_value(kind, stats, peak, t)


def _smooth_fwd(x, t, windows, kind):
    stats, peak = _window_softmax(x, t, windows)
    return _smooth_value(kind, stats, peak, t), (x, t, stats)


def _smooth_bwd(windows, kind, residuals, cotangent):
    x, t, stats = residuals
    den = _nonzero(stats.den)
    factor = _numerics.halves_factor(1, x.dtype, t)
    mean_u = stats.mean_gap * factor
    parts, spread_u = [], 0
    for _, part in _window_slices(x, windows, padded_copy=True):
        u = _window_logits(part, stats.top, factor)
        p = jnp.exp(u) / den  # 0 at the floor, where u - mean u is finite
        if kind == "lse":
            parts.append(cotangent * p)
        else:  # d/dx_i sum p x = p_i (1 + (x_i - y) / t), with (x_i - y) / t = u_i - mean u
            gap = u - mean_u
            parts.append(cotangent * (p + p * gap))
            spread_u = spread_u + p * gap * gap
    dx = _spread(parts, windows, x.shape)
    if kind == "lse":  # the entropy of the window's softmax
        dt = cotangent * (jnp.log(den) - mean_u)
    else:  # -Var_p(x) / t^2, as the mean of squared (x - y) / t
        dt = -cotangent * spread_u
    return dx, _numerics.sum_to_shape(dt, t.shape).astype(t.dtype)


_smooth_rule.defvjp(_smooth_fwd, _smooth_bwd)
