"""Argument checks and canonicalisation shared by every public function.

Every public function goes through :func:`prepare` (or the checks it is built from): the
scores become a float array in the compute dtype, ``axis`` a sorted tuple, the temperature
an array checked where it is concrete, the mask a boolean array, and bad input raises an
error naming the argument.
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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


def check_channel_axis(channel_axis, ndim: int, name: str = "x") -> int | None:
    """The channel axis of an array of ``ndim`` dimensions as a non-negative int (None: the
    array has none), or an error naming ``channel_axis``."""
    if channel_axis is None:
        return None
    if isinstance(channel_axis, (bool, np.bool_)) or not isinstance(
        channel_axis, (int, np.integer)
    ):
        raise TypeError(f"channel_axis must be an int or None, got {channel_axis!r}")
    if not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis {channel_axis} is out of range for {name} with {ndim} dimension(s)"
        )
    return int(channel_axis) % ndim


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
