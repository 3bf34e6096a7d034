"""Shared plumbing: argument checks, the dtype policy, masks and the safe slice maximum.

Every public function goes through :func:`prepare`; the numerical helpers below are the
only places that know how masks, infinities and NaN are handled.

A note on the arithmetic. On XLA's CPU backend, fused elementwise kernels accept only
arithmetic (add, multiply, min, max, exp, ceil, ...), not compares or selects: one select
in a hot loop splits a fusion and costs a full extra pass over memory. The helpers
therefore express "is this the maximum" and "first maximum" with ``min``/``ceil``
arithmetic, which is exact (see :func:`below_max`), and reserve ``jnp.where`` for
masks and slice-sized arrays. A second rule: a full-size intermediate that two fusions
share, even a broadcast of a slice maximum or of a constant, is written to memory and read
back; the soft and hard halves of ``st_hardmax`` therefore share no elementwise expression
(see ``_st_hardmax``), and full-size clamps against 0 take a zero computed per slice
(:func:`slice_zero`). These rules are checked by the benchmarks, not by the tests.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

MAX_INT32 = 2**31 - 1
_HALF_FLOATS = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


NO_TEMPERATURE = object()  # for functions without a temperature argument


class Prepared(NamedTuple):
    """A public function's validated arguments, ready for its private rule."""

    x: jax.Array  # in the compute dtype (float32 for half-precision inputs)
    axes: tuple[int, ...]  # sorted, non-negative
    temperature: jax.Array | None  # in the compute dtype, broadcastable to x
    where: jax.Array | None  # boolean, broadcastable to x
    dtype: np.dtype  # the dtype of the result (the input's float dtype)


def prepare(
    x: ArrayLike,
    axis,
    temperature=NO_TEMPERATURE,
    where=None,
    *,
    name: str = "x",
    integers: bool = True,
    single_axis: bool = False,
    elementwise: bool = False,
    min_ndim: int = 0,
) -> Prepared:
    """Validates and canonicalises the arguments shared by the public functions.

    ``name`` is the scores' argument name in error messages; ``integers=False`` rejects
    integer scores instead of promoting them (the samplers take float logits only).
    ``axis=None`` means all axes, as in ``jax.nn.softmax``; with ``single_axis`` (the
    index-returning functions) the scores, mask and temperature are then flattened to one
    axis, so that the index is the flat row-major one, as in ``jnp.argmax(axis=None)``.
    ``elementwise`` functions reduce nothing: their temperature may vary per element.
    """
    x, dtype = _as_float(x, name, integers)
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {x.shape}")
    mask = None if where is None else check_mask(where, x.shape, name)
    if axis is None and single_axis:
        mask = None if mask is None else jnp.broadcast_to(mask, x.shape).reshape(-1)
        temperature = _flatten_per_slice(temperature)
        x, axis = x.reshape(-1), 0
    if elementwise:
        axes = ()
    elif axis is None:
        axes = tuple(range(x.ndim))
    else:
        axes = canonicalize_axes(axis, x.ndim, single_axis=single_axis, name=name)
    t = None
    if temperature is not NO_TEMPERATURE:
        t = check_temperature(temperature, x, axes, name)
    return Prepared(x, axes, t, mask, dtype)


def _flatten_per_slice(value):
    """A per-slice parameter for a whole array flattened to one slice: its single value (an
    array of shape (1,) or a scalar), or as given when it has more values (an error later)."""
    if value is NO_TEMPERATURE or value is None or isinstance(value, (int, float)):
        return value
    shape = np.shape(value)
    return jnp.reshape(value, (1,)) if len(shape) and np.prod(shape) == 1 else value


def _as_float(x: ArrayLike, name: str, integers: bool) -> tuple[jax.Array, np.dtype]:
    """Promotes integers and booleans to a float dtype as ``jax.nn.softmax`` does (64-bit
    integers to float64, the others to float32) and returns (compute array, result dtype)."""
    x = as_real_array(x, name)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if not integers:
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
        wide = x.dtype.itemsize == 8  # only under jax_enable_x64
        x = x.astype(jnp.float64 if wide else jnp.float32)
    dtype = x.dtype
    return x.astype(compute_dtype(dtype)), dtype


def as_real_array(value, name: str, *, booleans: bool = True) -> jax.Array:
    """``value`` as a JAX array of real numbers (floats, integers, and booleans unless
    ``booleans=False``), or a TypeError naming the argument (None, strings, ragged lists,
    complex numbers, keys)."""
    try:
        array = jnp.asarray(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"{name} must be an array of real numbers, got {type(value).__name__}"
        ) from None
    real = (
        jnp.issubdtype(array.dtype, jnp.floating)
        or jnp.issubdtype(array.dtype, jnp.integer)
        or (booleans and array.dtype == jnp.bool_)
    )
    if not real:
        raise TypeError(f"{name} must be an array of real numbers, got dtype {array.dtype}")
    return array


def check_key(key) -> jax.Array:
    """Returns a single PRNG key as a typed key array, or raises a TypeError naming ``key``.

    New-style keys (``jax.random.key``) of any implementation are taken as they are; legacy
    ``uint32`` keys (``jax.random.PRNGKey``) are read with the default implementation.
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise TypeError(f"key must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    raw = key if isinstance(key, (jax.Array, np.ndarray)) else None
    if raw is None or raw.dtype != jnp.uint32 or raw.ndim != 1:
        kind = getattr(key, "dtype", type(key).__name__)
        raise TypeError(
            f"key must be a PRNG key from jax.random.key or jax.random.PRNGKey, got {kind}"
        )
    try:
        return jax.random.wrap_key_data(raw)
    except (TypeError, ValueError) as error:
        raise TypeError(f"key is not a valid legacy PRNG key: {error}") from None


def check_flag(value, name: str) -> bool:
    """Checks that a static option is a Python (or NumPy) bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def check_integer(value, name: str, low: int = 1) -> int:
    """A concrete integer (Python, NumPy or a 0-d array; not a bool) in ``[low, 2**31)`` as an
    int, or a TypeError or ValueError naming ``name``."""
    dtype = getattr(value, "dtype", None)  # NumPy and JAX booleans have one
    try:
        if isinstance(value, bool) or (dtype is not None and jnp.issubdtype(dtype, jnp.bool_)):
            raise TypeError
        value = operator.index(value)
    except TypeError:  # also a traced value
        raise TypeError(f"{name} must be a concrete integer, got {value!r}") from None
    if not low <= value <= MAX_INT32:
        raise ValueError(f"{name} must be an integer in [{low}, 2**31 - 1], got {value}")
    return value


def compute_dtype(dtype) -> np.dtype:
    """float32 for bfloat16 and float16 (computed in float32), the dtype itself otherwise."""
    dtype = jnp.dtype(dtype)
    return jnp.dtype(jnp.float32) if dtype in _HALF_FLOATS else dtype


def canonicalize_axes(
    axis, ndim: int, *, single_axis: bool = False, name: str = "x"
) -> tuple[int, ...]:
    """Returns ``axis`` as a sorted tuple of non-negative ints, or raises naming ``axis``."""
    if single_axis and isinstance(axis, (tuple, list)):
        raise TypeError(f"axis must be a single int for this function, got {axis!r}")
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    if not axes:
        raise ValueError("axis must name at least one axis, got an empty tuple")
    result = []
    for a in axes:
        if isinstance(a, (bool, np.bool_)):
            raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}")
        try:
            a = operator.index(a)
        except TypeError:
            raise TypeError(f"axis must be an int or a tuple of ints, got {axis!r}") from None
        if not -ndim <= a < ndim:
            raise ValueError(f"axis {a} is out of range for {name} with {ndim} dimension(s)")
        result.append(a % ndim)
    if len(set(result)) != len(result):
        raise ValueError(f"axis must not repeat an axis, got {axis!r}")
    return tuple(sorted(result))


def check_choice(value, name: str, options: tuple[str, ...]) -> str:
    """Raises a ValueError naming the argument unless ``value`` is one of ``options``."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def check_temperature(
    temperature, x: jax.Array, axes: tuple[int, ...], name: str = "x"
) -> jax.Array:
    """Checks a temperature and returns it as an array in ``x``'s dtype.

    A temperature is a scalar or an array broadcastable to ``x`` with size 1 along every
    reduced axis (one temperature per slice). A concrete one must be positive, finite and at
    least the smallest normal number of the compute dtype (XLA flushes subnormals to zero); a
    traced one cannot be checked.
    """
    tiny = float(jnp.finfo(x.dtype).tiny)
    return check_per_slice(
        temperature,
        "temperature",
        x,
        axes,
        lambda t: np.isfinite(t) & (t >= tiny),
        f"positive and finite (at least {tiny:g})",
        name,
    )


def check_per_slice(
    value, name: str, x: jax.Array, axes, valid, requirement: str, x_name: str = "x"
) -> jax.Array:
    """Checks a real parameter that is a scalar or one value per slice (an array broadcastable
    to ``x`` with size 1 along ``axes``) and returns it in ``x``'s dtype. A concrete value must
    pass ``valid`` (a NumPy predicate); a traced one cannot be checked."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not isinstance(value, jax.core.Tracer):
        try:
            concrete = np.asarray(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
        if not (
            np.issubdtype(concrete.dtype, np.floating) or np.issubdtype(concrete.dtype, np.integer)
        ):
            raise TypeError(f"{name} must be a real number, got dtype {concrete.dtype}")
        bad = ~valid(concrete)
        if bad.any():
            shown = concrete[bad].ravel()[0] if concrete.ndim else concrete.item()
            raise ValueError(f"{name} must be {requirement}, got {shown}")
        value = concrete
    value = jnp.asarray(value)
    if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
        raise TypeError(f"{name} must be a real number, got dtype {value.dtype}")
    padded = (1,) * (x.ndim - value.ndim) + value.shape
    fits = value.ndim <= x.ndim and all(p in (1, n) for p, n in zip(padded, x.shape, strict=True))
    if not fits or any(padded[a] != 1 for a in axes):
        raise ValueError(
            f"{name} of shape {value.shape} must broadcast to {x_name} of shape {x.shape} "
            f"with size 1 along the reduced axes {axes}"
        )
    return value.astype(x.dtype)


def check_mask(where, shape: tuple[int, ...], x_name: str = "x") -> jax.Array:
    """Checks that ``where`` is a boolean mask broadcastable to ``shape``."""
    try:
        mask = jnp.asarray(where)
    except (TypeError, ValueError):
        raise TypeError(f"where must be a boolean mask, got {type(where).__name__}") from None
    if mask.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean mask, got dtype {mask.dtype}")
    try:
        fits = jnp.broadcast_shapes(mask.shape, shape) == tuple(shape)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"where of shape {mask.shape} does not broadcast to {x_name} of shape {shape}"
        )
    return mask


def sum_to_shape(value: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums a broadcast result back to ``shape`` (the transpose of broadcasting)."""
    lead = value.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and value.shape[lead + i] != 1
    )
    return jnp.sum(value, axes).reshape(shape) if axes else value.reshape(shape)


def fill_masked(x: jax.Array, where: jax.Array | None) -> jax.Array:
    """Sets masked entries to -inf; a masked entry, even NaN, then takes no part."""
    return x if where is None else jnp.where(where, x, -jnp.inf)


def slice_max(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """The maximum over ``axes`` (kept as size-1 dims), at least the lowest finite value.

    An empty or all -inf slice gives the lowest finite value rather than -inf, so that
    ``x - max`` never computes ``-inf - (-inf)``; +inf stays +inf. NaN may or may not
    propagate (see :func:`nan_poison`). No gradient flows through. (The reduction is seeded
    with -inf, the identity of max: XLA takes the seed as neutral and drops it on a size-1
    axis, so the clamp to the lowest value must come after.)
    """
    largest = jnp.max(lax.stop_gradient(x), axes, keepdims=True, initial=-jnp.inf)
    return jnp.maximum(largest, jnp.finfo(x.dtype).min)


def safe_log(p: jax.Array) -> jax.Array:
    """log p with log 0 replaced by a finite value (always multiplied by p = 0)."""
    return jnp.log(jnp.maximum(p, jnp.finfo(p.dtype).tiny))


def slice_zero(per_slice: jax.Array) -> jax.Array:
    """0 of ``per_slice``'s shape (NaN where it is NaN), computed from it.

    XLA's CPU backend folds ``jnp.maximum(a, 0)`` into a full-size broadcast of the constant,
    and when that lands in a fused arithmetic kernel the broadcast is written to memory as a
    full array first (see the module note); a zero computed per slice is broadcast inside the
    kernel instead. ``min(|v|, 0)`` is 0 for every non-NaN ``v``, infinities included.
    """
    return jnp.minimum(jnp.abs(lax.stop_gradient(per_slice)), 0)


def shift_by_max(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...], scale=None):
    """(m, shifted): the slice maximum of the masked scores, and ``(x - m) * scale`` in
    ``[-inf, 0]`` (``scale``, per slice and positive, defaults to 1): masked and ``-inf``
    entries are ``-inf``, NaN entries NaN, and in a slice holding ``+inf`` the ``+inf`` entries
    are 0 and all others ``-inf`` (the limit of equal, ever larger scores: ``+inf`` beats the
    largest finite value). ``m`` is ``+inf`` there, and ``-inf`` for an empty slice.
    Gradients flow to ``x`` with slope ``scale``.

    The scores are halved and capped at the largest finite value: exact and order-preserving
    for finite scores (subnormal halves flush to zero on XLA's CPU backend), while ``+inf``
    maps strictly above every finite half, so the shifted scores need no clamp. A ``scale``
    folds into the doubling, so that this costs four arithmetic operations per entry.
    """
    x = fill_masked(x, where)
    top = _scaled_top(x, axes, 0.5)  # the largest finite value when the slice holds +inf
    return max_of_top(top), shift_from_top(x, top, scale)


def halved_top(maximum: jax.Array) -> jax.Array:
    """The ``top`` of :func:`shift_from_top` for a given maximum (of a slice or a window):
    half of it, at least half the lowest finite value and at most the largest."""
    return _scaled_or_top(jnp.maximum(maximum, jnp.finfo(maximum.dtype).min), 0.5)


def max_of_top(top: jax.Array) -> jax.Array:
    """The maximum that ``top`` was halved from: ``+inf`` where it was capped."""
    return jnp.where(top == jnp.finfo(top.dtype).max, jnp.inf, 2 * top)


def shift_from_top(x: jax.Array, top: jax.Array, scale=None) -> jax.Array:
    """``(x - max) * scale`` computed from halves, as in :func:`shift_by_max`; ``top`` is
    :func:`halved_top` of the maximum, and no gradient flows to it."""
    if scale is None:
        return _shift_halves(x, top, jnp.asarray(2, x.dtype))
    return _shift_halves(x, top, halves_factor(scale, x.dtype))


def halves_factor(scale, dtype) -> jax.Array:
    """``2 * scale``, the factor that turns halved differences into scaled ones, clipped so
    that a huge temperature gives the uniform limit, never 0 * -inf at a masked entry, and a
    tiny one the hard limit, never inf * 0 at the maximum; a (traced) negative scale gives
    NaN."""
    finfo = jnp.finfo(dtype)
    factor = jnp.where(scale >= 0, jnp.clip(2 * scale, finfo.tiny, finfo.max), jnp.nan)
    return factor.astype(dtype)


def capped_half(x: jax.Array) -> jax.Array:
    """``min(x / 2, fmax)``: the halves :func:`shift_from_top` subtracts ``top`` from."""
    return _scaled_or_top(x, 0.5)


@jax.custom_jvp
def _shift_halves(x, top, factor):
    """``(min(x / 2, fmax) - top) * factor``, with the derivative ``factor / 2`` in ``x`` (as
    if uncapped: the backward pass keeps no mask of the capped entries) and none in ``top``."""
    return (_scaled_or_top(x, 0.5) - top) * factor


def _shift_halves_jvp(primals, tangents):
    x, top, factor = primals
    dx, _, dfactor = tangents
    value = _shift_halves(x, top, factor)
    tangent = jnp.zeros_like(value)
    if not isinstance(dx, jax.custom_derivatives.SymbolicZero):
        tangent = dx * (factor / 2)
    if not isinstance(dfactor, jax.custom_derivatives.SymbolicZero):
        tangent = tangent + (_scaled_or_top(x, 0.5) - top) * dfactor
    return value, tangent


_shift_halves.defjvp(_shift_halves_jvp, symbolic_zeros=True)


def _scaled_top(x: jax.Array, axes: tuple[int, ...], factor: float) -> jax.Array:
    """The slice maximum of the scaled, capped scores. Scaling and capping are monotone, so it
    is taken of the plain maximum: the reduction reads ``x`` itself, and XLA does not write
    the scaled scores to memory for two consumers."""
    return _scaled_or_top(slice_max(x, axes), factor)


def _scaled_or_top(x: jax.Array, factor: float) -> jax.Array:
    return jnp.minimum(x * factor, jnp.finfo(x.dtype).max)


def below_max(x: jax.Array, where: jax.Array | None, axes: tuple[int, ...]) -> jax.Array:
    """1 where ``x`` is below its slice's (masked) maximum, 0 at a maximum; masked and
    ``-inf`` entries are 1 (below), and ``+inf`` entries beat the largest finite value.

    As in :func:`shift_by_max`, the scores are scaled down and capped at the largest finite
    value, here by 1/4: then the scaled scores are exactly equal at a maximum and below it
    otherwise (scores below about ``4 * tiny`` flush to zero), and ``ceil`` maps any positive
    gap, however small, to at least 1. Quartering where :func:`shift_by_max` halves leaves XLA
    no full-size expression to share (and write to memory) when both run on the same scores,
    as in ``st_hardmax``. NaN may be dropped.
    """
    x = fill_masked(lax.stop_gradient(x), where)
    top = _scaled_top(x, axes, 0.25)
    zero = slice_zero(top)  # per slice: XLA would write full-size broadcasts of constants
    quarters = jnp.minimum(x * 0.25, zero + jnp.finfo(x.dtype).max)
    return jnp.minimum(jnp.ceil(top - quarters), zero + 1)


def nan_poison(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    """0 per slice of ``x``, or NaN where the slice holds NaN (infinities give 0).

    Adding it to the result of a min- or max-reduction makes NaN propagate: sums propagate NaN
    on every backend, while XLA's CPU min/max reductions drop it on long slices. (``sign``
    keeps this a separate, arithmetic-only pass that shares nothing XLA would materialise.)
    """
    return 0 * jnp.sum(jnp.sign(x), axes, keepdims=True)


def slice_positions(shape: tuple[int, ...], axes: tuple[int, ...], dtype) -> jax.Array:
    """Row-major position of each element within its slice over ``axes``, broadcastable to
    ``shape``."""
    position = jnp.zeros((1,) * len(shape), dtype)
    stride = 1
    for a in reversed(axes):
        view = [1] * len(shape)
        view[a] = shape[a]
        position = position + stride * jnp.arange(shape[a], dtype=dtype).reshape(view)
        stride *= shape[a]
    return position


def rows_last(x: jax.Array, axes: tuple[int, ...]):
    """``x`` with the reduced axes moved last and flattened into one, and the inverse."""
    kept = [a for a in range(x.ndim) if a not in axes]
    moved = jnp.transpose(x, kept + list(axes))
    rows = moved.reshape(*moved.shape[: len(kept)], -1)

    def back(y):
        return jnp.transpose(y.reshape(moved.shape), np.argsort(kept + list(axes)))

    return rows, back


def slice_size(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    return int(np.prod([shape[a] for a in axes], dtype=np.int64))


# --- random numbers ---

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def uniform(key: jax.Array, shape: tuple[int, ...], dtype, minval=0.0, maxval=1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``, bit for bit, and several
    times faster on CPU for float32 and threefry keys.

    XLA's CPU backend runs JAX's threefry hash as a loop over its five groups of rounds,
    writing the whole state to memory after each; here the rounds are unrolled into
    elementwise arithmetic that fuses with what consumes the numbers. Other dtypes, key
    implementations and the non-partitionable threefry mode go to ``jax.random``.
    """
    dtype = jnp.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64))
    if (
        dtype != jnp.float32
        or str(jax.random.key_impl(key)) != "threefry2x32"
        or not jax.config.jax_threefry_partitionable
        or size >= 2**32
    ):
        return jax.random.uniform(key, shape, dtype, minval, maxval)
    bits = _threefry_bits(key, shape)
    mantissa = (bits >> np.uint32(9)) | np.uint32(0x3F800000)  # a float in [1, 2)
    floats = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)
    low, high = np.float32(minval), np.float32(maxval)
    return jnp.maximum(low, floats * (high - low) + low)


def _threefry_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``jax.random.bits(key, shape)`` for a threefry key in partitionable mode and fewer
    than 2**32 numbers: the 2x32 hash of each number's flat index (high word 0), its two
    words xored."""
    k0, k1 = jax.random.key_data(key)[0], jax.random.key_data(key)[1]
    schedule = (k0, k1, k0 ^ k1 ^ np.uint32(0x1BD11BDA))
    low = lax.iota(jnp.uint32, int(np.prod(shape, dtype=np.int64))).reshape(shape)
    x0, x1 = schedule[0], low + schedule[1]
    for group in range(5):
        for rotation in _THREEFRY_ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation)))
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + np.uint32(group + 1)
    return x0 ^ x1
