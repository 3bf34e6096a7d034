"""Property-based fuzzing of every public function against the float64 oracles of reference.py.

Every function is tested on every configuration (shape, axis, dtype, mask shape, temperature
shape) of a small fixed pool, one test each: the shapes people forget (slices of length 1
and 0, a 0-d input, negative and tuple axes, ``axis=None``) in float32, float16, bfloat16,
float64 and float32 under x64, and integer and boolean input. Compiling dominates the cost,
so each family of functions is compiled once per configuration, into one program that
computes all of them (values, VJP forward values and VJPs). Hypothesis then draws the values
freely: +-inf, NaN, 1e30, finfo.max, subnormals, exact ties, masks with every entry or all
but one masked, one temperature per slice from 1e-6 to 1e6 and the extremes finfo.tiny,
1e-20, 1e20, alpha from 1 to 3 (a float, a 0-d array or one per slice), labels, keys.

The oracle is the documented semantics (README, "Guarantees"):

- masked and -inf entries take no part: probability 0 and gradient exactly 0, whatever they
  hold; an empty slice (size 0, or nothing unmasked above -inf) gives zeros (distributions,
  losses, indices, spatial coordinates) or -inf (smooth_max, st_max) with zero gradient;
- unmasked +inf entries share the mass and beat finfo.max; the gradients stay NaN-free;
- an unmasked NaN makes its slice NaN; the other slices' values and gradients are unaffected;
- straight-through forward values are the hard values exactly, their gradients those of the
  soft surrogate; the samplers' noise is ``jax.random.gumbel`` / ``logistic`` of the key;
- half precision is computed in float32 and returned, with gradients, in its dtype; integers
  are promoted like ``jax.nn.softmax``.

Reference gradients are the closed-form VJPs of reference.py (checked there against autodiff
of the textbook formulas and finite differences), compared on slices whose unmasked entries
are finite or -inf; at the edges (+inf, masks, empty slices) the gradients are asserted
NaN-free and exactly zero where masked or -inf. Tolerances are relative to each slice's own
scale (the cotangent over the temperature for a softmax VJP, for instance), so that a slice
at temperature 1e6 is not checked at the scale of one at 1e-6; a gradient whose true value
overflows the output dtype is not compared.

Each function is tested on each configuration of its pool (one test each, about 400): the
default (CI) profile draws 10 examples for each, ``pytest --hypothesis-profile=thorough`` ten
times as many, and ``--hypothesis-profile=shrink`` shrinks failures (see conftest.py).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import EMPTY, FINITE, NAN_SLICE, POSINF

import jaxrelax

# --- dtypes: (the input's dtype, the dtype it is computed in and returned in, needs x64) ---

DTYPES = {
    "float32": (np.float32, np.float32, False),
    "float64": (np.float64, np.float64, True),
    "bfloat16": (jnp.bfloat16, np.float32, False),
    "float16": (np.float16, np.float32, False),
    "int32": (np.int32, np.float32, False),
    "bool": (np.bool_, np.float32, False),
    "int64": (np.int64, np.float64, True),  # float64 under x64, like jax.nn.softmax
    "int32_x64": (np.int32, np.float32, True),  # float32 even under x64, like jax.nn.softmax
    "float32_x64": (np.float32, np.float32, True),  # stays float32 under x64
}
# Relative tolerance on values, per output dtype: the rounding of a half-precision result, a
# few hundred ulps of float32 (exp of scores up to ~100 in size) and 1e-9 in float64 (the
# alpha-entmax bound the README states; softmax does far better).
TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 2e-5, "float64": 1e-9}
# Gradients go through one more division by the temperature and a centring.
GRAD_TOL = {"float16": 4e-3, "bfloat16": 3.2e-2, "float32": 1e-4, "float64": 1e-8}
# General alpha in float32: the README's 5e-5 (the support's edge for alpha > 2).
SPARSE_TOL = {"float16": 2e-3, "bfloat16": 1.6e-2, "float32": 5e-5, "float64": 1e-9}

ALPHAS = [1.0, 1.02, 1.2, 1.5, 2.0, 3.0]
TEMPERATURES = [1e-6, 1e-3, 0.05, 0.7, 1.0, 3.0, 1e3, 1e6]
# Extremes, drawn less often: the smallest normal float32 (valid for every compute dtype
# here), and the 1e-20 and 1e20.
EXTREME_TEMPERATURES = [float(jnp.finfo(np.float32).tiny), 1e-20, 1e20]


# --- the configuration pool ---


@dataclasses.dataclass(frozen=True)
class Config:
    shape: tuple
    axis: int | tuple | None
    dtype: str
    mask: str | None  # None, "full" (x's shape), "slices" (one mask shared by every slice),
    #                   "batch" (size 1 along the reduced axes: whole slices masked or not)
    temperature: str  # "scalar" or "slice" (one per slice)


C = Config
POOL = [
    C((4, 5), -1, "float32", "full", "slice"),
    C((3, 1), -1, "float32", "full", "scalar"),  # slices of length 1
    C((2, 0), -1, "float32", None, "scalar"),  # slices of length 0
    C((2, 3, 4), (0, 2), "float32", "slices", "slice"),  # a tuple of axes
    C((3, 4), None, "float32", "full", "scalar"),  # all axes
    C((), None, "float32", None, "scalar"),  # a 0-d input
    C((2, 3, 4), -2, "bfloat16", "batch", "slice"),  # a negative middle axis
    C((3, 1), -1, "bfloat16", "full", "slice"),
    C((1, 4), 0, "float16", "slices", "scalar"),
    C((4, 5), -1, "float64", "full", "slice"),
    C((2, 1, 1), (1, 2), "float64", "full", "scalar"),
    C((2, 3), 0, "float32_x64", "batch", "slice"),
    C((4, 1), -1, "int32", "full", "scalar"),
    C((3, 2), -1, "int32_x64", "full", "scalar"),
    C((3, 4), None, "int64", None, "scalar"),
    C((2, 1), -1, "bool", "full", "scalar"),
]
FLOAT_POOL = [
    c for c in POOL if np.issubdtype(DTYPES[c.dtype][0], np.floating) or c.dtype == "bfloat16"
]
# The samplers reuse the deterministic rules; length-1 slices in bfloat16 and float64 are
# left to those.
SAMPLER_POOL = [c for c in FLOAT_POOL if c.shape not in [(3, 1), (2, 1, 1)] or c.dtype == "float32"]
SPATIAL_POOL = [
    C((2, 3, 4), (-2, -1), "float32", None, "slice"),
    C((3, 1, 1), (-2, -1), "float32", None, "scalar"),  # 1 x 1 heatmaps
    C((2, 0, 3), (-2, -1), "float32", None, "scalar"),  # empty heatmaps
    C((4, 5), (-2, -1), "bfloat16", None, "scalar"),
    C((2, 2, 3), (-2, -1), "float64", None, "slice"),
    C((3, 4), (-2, -1), "int32", None, "scalar"),
]
ELEMENTWISE_POOL = [  # binary_concrete: "slice" means one temperature per element here
    C((4, 5), (), "float32", None, "slice"),
    C((), (), "float32", None, "scalar"),
    C((2, 0), (), "float32", None, "scalar"),
    C((3, 1), (), "bfloat16", None, "slice"),
    C((4,), (), "float16", None, "scalar"),
    C((2, 3), (), "float64", None, "slice"),
]


def _config_id(c):
    shape = "x".join(map(str, c.shape)) or "0d"
    axis = "all" if c.axis is None else ",".join(map(str, np.atleast_1d(c.axis))) or "elementwise"
    return f"{c.dtype}-{shape}-axis{axis}-mask{c.mask}-t{c.temperature}"


def _items(names, pool, skip=lambda name, config: False):
    """One test per function and configuration: every function sees every configuration."""
    return [
        pytest.param(name, config, id=f"{name}-{_config_id(config)}")
        for name in names
        for config in pool
        if not skip(name, config)
    ]


@dataclasses.dataclass
class Case:
    """One drawn input. ``t`` is the temperature as drawn (a float, or an array of the
    compute dtype); ``t_array``, the same as an array, is what the compiled programs take."""

    config: Config
    x: np.ndarray
    where: np.ndarray | None
    t: float | np.ndarray
    seed: int  # of the cotangents, labels and PRNG key
    alpha: np.ndarray  # 0-d, for entmax(x, alpha) with an array alpha
    alpha_slices: np.ndarray  # one alpha per slice

    def __repr__(self):
        with np.printoptions(precision=10, threshold=100):
            return (
                f"Case({self.config}, x={self.x!r}, where={self.where!r}, t={self.t!r}, "
                f"seed={self.seed}, alpha={self.alpha!r}, alpha_slices={self.alpha_slices!r})"
            )

    @property
    def dtype(self):
        return DTYPES[self.config.dtype][0]

    @property
    def compute(self):
        return np.dtype(DTYPES[self.config.dtype][1])

    @property
    def out_name(self):
        return self.out.name

    @property
    def out(self):
        return np.dtype(self.dtype) if self.is_float else self.compute

    @property
    def is_float(self):
        return self.config.dtype == "bfloat16" or np.issubdtype(self.dtype, np.floating)

    @property
    def x64(self):
        return DTYPES[self.config.dtype][2]

    @property
    def axis(self):
        return self.config.axis

    @functools.cached_property
    def axes(self):
        a = self.config.axis
        if a is None:
            return tuple(range(self.x.ndim))
        return tuple(sorted(i % self.x.ndim for i in np.atleast_1d(a)))

    @functools.cached_property
    def xc(self):
        """x as the library computes with it."""
        return self.x.astype(self.compute)

    @property
    def t_array(self):
        return np.asarray(self.t, self.compute)

    @functools.cached_property
    def keep_shape(self):
        """x's shape with size 1 along the reduced axes (a per-slice parameter's)."""
        return tuple(1 if a in self.axes else n for a, n in enumerate(self.x.shape))

    @functools.cached_property
    def slice_shape(self):
        """x's shape without the reduced axes (a reduction's result)."""
        return tuple(n for a, n in enumerate(self.x.shape) if a not in self.axes)

    def per_slice(self, param):
        """A scalar or per-slice parameter as one value per slice."""
        value = np.broadcast_to(np.asarray(param, np.float64), self.keep_shape)
        return np.squeeze(value, self.axes) if self.axes else value

    @functools.cached_property
    def mask(self):
        return np.broadcast_to(True if self.where is None else self.where, self.x.shape)

    @functools.cached_property
    def kinds(self):
        return ref.slice_kinds(self.xc, self.axes, self.where)

    def per_element(self, per_slice):
        return np.broadcast_to(np.expand_dims(per_slice, self.axes), self.x.shape)

    @functools.cached_property
    def valid(self):
        """Unmasked entries above -inf (not NaN): the ones that take part."""
        return self.mask & (self.xc.astype(np.float64) > -np.inf)

    @property
    def size(self):
        return int(np.prod([self.x.shape[a] for a in self.axes]))

    def slice_t(self):
        """The temperature of each slice."""
        return self.per_slice(self.t)

    def context(self):
        return jax.enable_x64(True) if self.x64 else _nothing()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- strategies ---


def _float_elements(dtype):
    """Exact ties (small integers) and finite floats, often; the extremes (+-inf, +-finfo.max)
    and other special values (NaN, +-0, +-1e30, the smallest normal, subnormals) less often."""
    info = jnp.finfo(dtype)
    big = [np.inf, -np.inf, float(info.max), -float(info.max)]
    special = [
        np.nan,
        0.0,
        -0.0,
        1e30,
        -1e30,
        float(info.tiny),
        float(info.smallest_subnormal),
        -float(info.smallest_subnormal),
    ]
    special = [v for v in special if not np.isfinite(v) or abs(v) <= float(info.max)]
    ties = st.integers(-3, 3).map(float)
    finite = st.floats(-20, 20, allow_subnormal=False)
    return st.one_of(
        ties, ties, ties, finite, finite, finite, st.sampled_from(big), st.sampled_from(special)
    )


def _values(config):
    dtype = DTYPES[config.dtype][0]
    if dtype == np.bool_:
        return arrays(np.bool_, config.shape)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        elements = st.one_of(
            st.integers(max(-3, int(info.min)), 3), st.sampled_from([int(info.min), int(info.max)])
        )
        return arrays(np.int64, config.shape, elements=elements)
    general = arrays(np.float64, config.shape, elements=_float_elements(dtype))
    # One example in four is made of extremes only, so that +inf meets finfo.max, -inf and
    # other +inf entries in the same slice often.
    info = jnp.finfo(dtype)
    extremes = [np.inf, -np.inf, float(info.max), -float(info.max), 0.0, 1.0]
    size = int(np.prod(config.shape))
    extreme = st.lists(st.sampled_from(extremes), min_size=size, max_size=size).map(
        lambda values: np.array(values, np.float64).reshape(config.shape)
    )
    return st.one_of(general, general, general, extreme)


def _temperatures():
    return st.sampled_from(TEMPERATURES * 3 + EXTREME_TEMPERATURES)


@st.composite
def _masks(draw, config):
    shape, kind = config.shape, config.mask
    if kind is None:
        return None
    axes = () if config.axis is None else tuple(np.atleast_1d(config.axis) % max(len(shape), 1))
    if config.axis is None:
        axes = tuple(range(len(shape)))
    if kind == "full":
        mask_shape = shape
    elif kind == "slices":
        mask_shape = tuple(n if i in axes else 1 for i, n in enumerate(shape))
    else:
        mask_shape = tuple(1 if i in axes else n for i, n in enumerate(shape))
    pattern = draw(st.sampled_from(["random", "random", "all", "all", "none", "one"]))
    if pattern == "random":
        return draw(arrays(np.bool_, mask_shape))
    mask = np.full(mask_shape, pattern == "all")
    if pattern == "one" and mask.size:
        mask.reshape(-1)[draw(st.integers(0, mask.size - 1))] = True
    return mask


@st.composite
def cases(draw, config, salt=""):
    """A Case of ``config``. ``salt`` (the function's name) shifts the draws, so that the
    functions sharing a configuration see different values (derandomized Hypothesis seeds
    every parametrization of a test alike)."""
    for _ in range(zlib.crc32(salt.encode()) % 7):
        draw(st.integers(0, 2**32))
    x = draw(_values(config))
    with np.errstate(over="ignore"):
        x = x.astype(DTYPES[config.dtype][0])
    where = draw(_masks(config))
    compute = DTYPES[config.dtype][1]
    if config.temperature == "scalar":
        t = draw(_temperatures())
    else:
        if config.axis == ():
            t_shape = config.shape
        else:
            axes = tuple(range(len(config.shape))) if config.axis is None else config.axis
            axes = tuple(a % len(config.shape) for a in np.atleast_1d(axes))
            t_shape = tuple(1 if i in axes else n for i, n in enumerate(config.shape))
        t = np.asarray(draw(arrays(np.float64, t_shape, elements=_temperatures())), compute)
    seed = draw(st.integers(0, 2**16))
    alpha = np.asarray(draw(st.sampled_from(ALPHAS)), compute)
    keep = t_shape if config.temperature != "scalar" else None
    if keep is None:
        axes = tuple(range(len(config.shape))) if config.axis is None else config.axis
        axes = tuple(a % len(config.shape) for a in np.atleast_1d(axes))
        keep = tuple(1 if i in axes else n for i, n in enumerate(config.shape))
    alpha_slices = np.asarray(
        draw(arrays(np.float64, keep, elements=st.sampled_from(ALPHAS))), compute
    )
    return Case(config, x, where, t, seed, alpha, alpha_slices)


def _cotangent(case, shape):
    """Random cotangents for an output of ``shape``, in the output dtype."""
    rng = np.random.default_rng(case.seed)
    return rng.normal(size=shape).astype(case.out)


# --- comparisons ---


def _rounded(want, dtype):
    """The oracle rounded to the output dtype (overflowing to inf as the output would)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(want, np.float64).astype(dtype).astype(np.float64)


def assert_values(got, want, case, tol, scale=1.0, what="value"):
    got = np.asarray(got)
    assert got.dtype == case.out, f"{what}: dtype {got.dtype}, expected {case.out}"
    assert got.shape == np.shape(want), f"{what}: shape {got.shape}, expected {np.shape(want)}"
    _assert_close(got.astype(np.float64), _rounded(want, case.out), tol, tol * scale, what, case)


def _assert_close(got, want, rtol, atol, what, case):
    """|got - want| <= rtol |want| + atol (atol an array), NaN where want is NaN, and
    infinities equal."""
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
        ok = (got == want) | (np.isnan(got) & np.isnan(want))
        ok |= np.isfinite(want) & (
            err <= rtol * np.abs(want) + atol + _floor(case.compute, case.out)
        )
    assert ok.all(), (
        f"{what} differs: got {got[~ok]}, expected {want[~ok]} "
        f"(tolerance {np.broadcast_to(rtol * np.abs(want) + atol, want.shape)[~ok]}) "
        f"at {np.argwhere(~ok).tolist()} for {case}"
    )


def assert_exact(got, wants, case, what="value"):
    """Equal to one of the oracles ``wants`` exactly (NaN where it is NaN)."""
    got = np.asarray(got)
    assert got.dtype == case.out, f"{what}: dtype {got.dtype}, expected {case.out}"
    wants = [_rounded(w, case.out) for w in wants]
    assert got.shape == wants[0].shape, f"{what}: shape {got.shape}, expected {wants[0].shape}"
    got = got.astype(np.float64)
    for want in wants:
        if np.array_equal(got, want, equal_nan=True):
            return
    np.testing.assert_array_equal(got, wants[0], err_msg=f"{what} of {case}")


def _flushed(case):
    """x with scores below 4 * finfo.tiny (of the compute dtype) flushed to zero, as hardmax's
    docstring allows: XLA's CPU backend flushes subnormals, and the comparison runs on
    scores scaled by 1/4."""
    xc = case.xc
    if not np.issubdtype(xc.dtype, np.floating):
        return xc
    return np.where(np.abs(xc) < 4 * jnp.finfo(xc.dtype).tiny, np.copysign(0, xc), xc)


def _both_xs(case):
    """x, and x with tiny scores flushed (see :func:`_flushed`)."""
    return [case.xc, _flushed(case)]


def _closer_by_slice(value, wants, case):
    """Per slice, the oracle in ``wants`` closest to ``value`` (largest absolute error)."""
    value = np.asarray(value, np.float64)
    if not case.axes or not case.size:
        return wants[0]
    with np.errstate(invalid="ignore"):
        errors = [np.nanmax(np.abs(value - w), axis=case.axes, initial=0) for w in wants]
    best = np.expand_dims(np.argmin(np.stack(errors), 0), case.axes)
    return np.choose(np.broadcast_to(best, value.shape), wants)


def _hard_oracles(case, oracle):
    """The hard oracle of x and of x with tiny scores flushed (either is right)."""
    return [oracle(case.xc), oracle(_flushed(case))]


def _big(dtype):
    return float(jnp.finfo(dtype).max) / 16


def _floor(compute, out):
    """An absolute tolerance far below any value of interest: above the flushing of subnormal
    intermediates to zero (XLA's CPU backend flushes them) and the subnormal range of the
    output dtype (float16 gradients of 1e-7 keep a digit or two)."""
    info = jnp.finfo(compute)
    return max(1e3 * float(info.tiny) / float(info.eps), float(jnp.finfo(out).tiny))


def _kinds(case, skip):
    """The slice kinds, with the ``skip`` slices (a per-slice mask) treated as NaN slices
    (nothing checked)."""
    return case.kinds if skip is None else np.where(skip, NAN_SLICE, case.kinds)


def assert_x_grad(got, want, case, scale, tol, what="dx", skip=None):
    """The cotangent of x: NaN-free outside NaN slices, exactly 0 at masked and -inf entries
    (and in empty slices), equal to ``want`` on finite slices to ``tol`` times the per-slice
    ``scale`` (where neither overflows the output dtype)."""
    got = np.asarray(got)
    assert got.dtype == case.out, f"{what}: dtype {got.dtype}, expected {case.out}"
    assert got.shape == case.x.shape
    got = got.astype(np.float64)
    kinds = case.per_element(_kinds(case, skip))
    live = kinds != NAN_SLICE
    assert not np.isnan(got[live]).any(), f"{what} has NaN outside NaN slices: {got} for {case}"
    invalid = live & ~case.valid
    assert (got[invalid] == 0).all(), (
        f"{what} is not 0 at masked or -inf entries: {got[invalid]} for {case}"
    )
    scale = case.per_element(np.asarray(scale, np.float64))
    with np.errstate(invalid="ignore"):
        check = (kinds == FINITE) & (np.abs(want) < _big(case.out)) & (scale < _big(case.out))
    err = np.abs(got[check] - want[check])
    bound = tol * (np.abs(want[check]) + scale[check]) + _floor(case.compute, case.out)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{what} differs: got {got[check][bad]}, expected {want[check][bad]} "
        f"(bound {bound[bad]}) for {case}"
    )


def _sum_to(value_keep, shape):
    """Sums an array of x's keepdims shape to ``shape`` (the transpose of broadcasting)."""
    value_keep = np.asarray(value_keep, np.float64)
    lead = value_keep.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and value_keep.shape[lead + i] != 1
    )
    return np.sum(value_keep, axes).reshape(shape)


def assert_param_grad(got, want, case, scale, tol, param, what, skip=None):
    """The cotangent of a per-slice parameter (temperature or alpha) of shape
    ``np.shape(param)``: ``want`` and ``scale`` are per slice (0 for empty slices). Entries
    fed by a NaN slice are not checked, by a +inf slice only for NaN."""
    got = np.asarray(got)
    param = np.asarray(param)
    assert got.dtype == param.dtype, f"{what}: dtype {got.dtype}, expected {param.dtype}"
    assert got.shape == param.shape, f"{what}: shape {got.shape}, expected {param.shape}"
    got = got.astype(np.float64)
    kinds = _kinds(case, skip)

    def to_param(per_slice):
        return _sum_to(np.expand_dims(per_slice, case.axes), param.shape)

    nan = to_param(kinds == NAN_SLICE) > 0
    edge = to_param(kinds == POSINF) > 0
    assert not np.isnan(got[~nan]).any(), f"{what} is NaN: {got} for {case}"
    with np.errstate(invalid="ignore"):
        want = to_param(np.where(kinds == FINITE, want, 0))
        scale = to_param(np.where(kinds == FINITE, scale, 0))
        limit = _big(param.dtype)
        check = ~nan & ~edge & (np.abs(want) < limit) & (scale < limit)
    err = np.abs(got[check] - want[check])
    bound = tol * (np.abs(want[check]) + scale[check]) + _floor(case.compute, param.dtype)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{what} differs: got {got[check][bad]}, expected {want[check][bad]} "
        f"(bound {bound[bad]}) for {case}"
    )


def _slice_max_abs(case, values):
    """max |values| over each slice (0 for an empty one)."""
    values = np.abs(np.asarray(values, np.float64))
    if case.size == 0:
        return np.zeros(case.kinds.shape)
    return np.max(np.where(np.isfinite(values), values, 0), axis=case.axes)


def _spread(case, p, squared=False, x=None):
    """sum p |z - max z| (or its square) per slice, with z = x / t: the size of the terms of
    a softmax VJP's temperature cotangent."""
    with np.errstate(all="ignore"):
        x = np.asarray(case.xc if x is None else x, np.float64)
        valid = case.mask & (x > -np.inf)
        top = np.max(np.where(valid, x, -np.inf), axis=case.axes, keepdims=True, initial=-np.inf)
        t = case.per_element(case.slice_t())
        gap = np.abs(np.where((p > 0) & valid, (x - top) / t, 0))
        terms = np.where(p > 0, p * (gap**2 if squared else gap), 0)
        return np.sum(terms, axis=case.axes)


def _coordinate_max(n):
    return max(n - 1, 1)


# --- the compiled programs: one per family and configuration ---
#
# A program computes every function of its family (the value, and for float input the
# forward value of the VJP and the VJP itself), so that XLA compiles each configuration once
# per family; the test of each function then reads its own results. A function that raises
# while being traced is recorded in the program's ``errors`` and re-raised by its test.

_PROGRAMS = {}
# XLA's HLO passes (where the size-1 reduction of the audit was simplified away) run as
# always; only LLVM's optimisation of the generated code is skipped, which halves the
# compile time and leaves IEEE arithmetic as it is (no fast-math flags either way).
COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}
# The float alpha of entmax and entmax_loss is static (it picks a code path), so it is fixed
# per configuration, cycling through the values that take the general path and alpha = 1
# (alpha = 1.5 and 2 as floats are entmax15 and sparsemax themselves).
FLOAT_ALPHAS = [1.02, 3.0, 1.2, 1.0]


def _float_alpha(config):
    pools = [POOL, SPATIAL_POOL, ELEMENTWISE_POOL]
    index = next(p.index(config) for p in pools if config in p)
    return FLOAT_ALPHAS[index % len(FLOAT_ALPHAS)]


def _run(family, case, *args):
    _events(case)
    key = (family, case.config)
    with case.context():
        if key not in _PROGRAMS:
            errors = {}
            program = functools.partial(
                FAMILIES[family], config=case.config, is_float=case.is_float, errors=errors
            )
            compiled = jax.jit(program).lower(*args).compile(compiler_options=COMPILER_OPTIONS)
            _PROGRAMS[key] = (compiled, errors)
        program, errors = _PROGRAMS[key]
        return jax.device_get(program(*args)), errors


def _events(case):
    """Statistics (pytest --hypothesis-show-statistics): the configurations and slice kinds
    drawn."""
    kinds = set(np.ravel(case.kinds).tolist())
    for kind, label in [(FINITE, "finite"), (EMPTY, "empty"), (POSINF, "+inf"), (NAN_SLICE, "NaN")]:
        if kind in kinds:
            event(f"has {label} slices")


def _collect(functions, is_float, errors):
    """{name: (value, vjp forward value, cotangents)} of ``functions``, a dict
    ``name: (f, primals, cotangent)``."""
    results = {}
    for name, (f, primals, cotangent) in functions.items():
        try:
            value = f(*primals)
            if is_float:
                forward, pullback = jax.vjp(f, *primals)
                results[name] = (value, forward, pullback(cotangent))
            else:
                results[name] = (value,)
        except Exception as error:  # noqa: BLE001 - re-raised by the function's own test
            errors[name] = error
    return results


def _results(family, name, case, *args):
    results, errors = _run(family, case, *args)
    if name in errors:
        raise errors[name]
    return results[name]


def _assert_forward(value, forward, case, exact, tol=None):
    """The VJP's forward value is the function's value."""
    forward, value = np.asarray(forward, np.float64), np.asarray(value, np.float64)
    if exact:
        np.testing.assert_array_equal(forward, value, err_msg=f"VJP forward value for {case}")
    else:
        np.testing.assert_allclose(
            forward,
            value,
            rtol=tol,
            atol=tol,
            err_msg=f"VJP forward value for {case}",
        )


# --- distributions: hardmax, softmax, st_hardmax, sparsemax, entmax15, entmax ---

DISTRIBUTIONS = [
    "hardmax",
    "hardmax_uniform",
    "softmax",
    "st_hardmax",
    "st_hardmax_uniform",
    "st_hardmax_identity",
    "sparsemax",
    "entmax15",
    "entmax_float",  # alpha a Python float (see FLOAT_ALPHAS)
    "entmax_array",  # alpha a 0-d array
    "entmax_per_slice",  # one alpha per slice
]


def _distributions(x, t, where, g, alpha, alpha_slices, *, config, is_float, errors):
    axis = config.axis
    float_alpha = _float_alpha(config)

    def entmax(x, t, alpha):
        return jaxrelax.entmax(x, alpha, axis, temperature=t, where=where)

    functions = {
        "hardmax": lambda x, t: jaxrelax.hardmax(x, axis, where=where),
        "hardmax_uniform": lambda x, t: jaxrelax.hardmax(x, axis, where=where, ties="uniform"),
        "softmax": lambda x, t: jaxrelax.softmax(x, axis, temperature=t, where=where),
        "st_hardmax": lambda x, t: jaxrelax.st_hardmax(x, axis, temperature=t, where=where),
        "st_hardmax_uniform": lambda x, t: jaxrelax.st_hardmax(
            x, axis, temperature=t, where=where, ties="uniform"
        ),
        "st_hardmax_identity": lambda x, t: jaxrelax.st_hardmax(
            x, axis, temperature=t, where=where, backward="identity"
        ),
        "sparsemax": lambda x, t: jaxrelax.sparsemax(x, axis, temperature=t, where=where),
        "entmax15": lambda x, t: jaxrelax.entmax15(x, axis, temperature=t, where=where),
        "entmax_float": lambda x, t: entmax(x, t, float_alpha),
    }
    functions = {name: (f, (x, t), g) for name, f in functions.items()}
    functions["entmax_array"] = (entmax, (x, t, alpha), g)
    functions["entmax_per_slice"] = (entmax, (x, t, alpha_slices), g)
    return _collect(functions, is_float, errors)


def _alpha_of(name, case):
    return {
        "sparsemax": 2.0,
        "entmax15": 1.5,
        "entmax_float": _float_alpha(case.config),
        "entmax_array": case.alpha,
        "entmax_per_slice": case.alpha_slices,
    }.get(name)


@pytest.mark.parametrize("name, config", _items(DISTRIBUTIONS, POOL))
@given(data=st.data())
def test_distributions(name, config, data):
    case = data.draw(cases(config, name), label="case")
    g = _cotangent(case, case.x.shape)
    value, *rest = _results(
        "distributions",
        name,
        case,
        case.x,
        case.t_array,
        case.where,
        g,
        case.alpha,
        case.alpha_slices,
    )
    alpha = _alpha_of(name, case)
    hard = name.startswith(("hardmax", "st_hardmax"))
    if hard:
        ties = "uniform" if name.endswith("uniform") else "first"
        oracles = _hard_oracles(case, lambda x: ref.np_hardmax(x, case.axis, case.where, ties))
        assert_exact(value, oracles, case)
    else:
        if alpha is None:
            # Scores below 2 * tiny may be flushed to 0 (softmax's docstring): either oracle,
            # slice by slice.
            wants = [ref.np_softmax(x, case.axis, case.t, case.where) for x in _both_xs(case)]
            want, tol = _closer_by_slice(value, wants, case), TOL
        else:
            want = ref.np_entmax(case.xc, alpha, case.axis, case.t, case.where)
            tol = SPARSE_TOL
        assert_values(value, want, case, tol[case.out_name])
        _assert_on_simplex(value, case)
    if not case.is_float:
        return
    forward, grads = rest
    _assert_forward(value, forward, case, hard, TOL[case.out_name])
    _check_distribution_grads(name, case, alpha, np.asarray(value, np.float64), g, grads)


def _assert_on_simplex(value, case):
    """Values are >= 0 and finite slices sum to 1."""
    value = np.asarray(value, np.float64)
    finite = case.kinds == FINITE
    assert (value[case.per_element(finite)] >= 0).all(), f"negative values for {case}"
    if case.size:
        sums = np.sum(value, axis=case.axes)
        tol = 10 * float(jnp.finfo(case.out).eps) * max(1, case.size)
        np.testing.assert_allclose(sums[finite], 1, atol=tol, err_msg=f"sums of {case}")


def _check_distribution_grads(name, case, alpha, value, g, grads):
    tol = GRAD_TOL[case.out_name]
    t = case.slice_t()
    g_max = _slice_max_abs(case, g)
    if name.startswith("hardmax"):
        assert_x_grad(grads[0], np.zeros(case.x.shape), case, g_max, tol)
        return
    if name == "st_hardmax_identity":  # the cotangent, 0 at masked and -inf entries
        want = np.where(case.valid, g.astype(np.float64), 0)
        assert_x_grad(grads[0], want, case, 0 * g_max, 0)
        return
    if alpha is None or (np.ndim(alpha) == 0 and alpha == 1):  # softmax (st_hardmax: its VJP)
        dx, dt = ref.np_softmax_vjp(case.xc, g, case.axis, case.t, case.where)
        p = ref.np_softmax(case.xc, case.axis, case.t, case.where)
        assert_x_grad(grads[0], dx, case, g_max / t, tol)
        scale = g_max / t * (1 + _spread(case, p))
        assert_param_grad(grads[1], dt, case, scale, tol, case.t_array, "dt")
        if len(grads) > 2:  # alpha = 1 as an array: the limit alpha -> 1+
            _, _, dalpha = ref.np_entmax_vjp(case.xc, g, alpha, case.axis, case.t, case.where)
            scale = g_max * (1 + _spread(case, p)) ** 2
            assert_param_grad(grads[2], dalpha, case, scale, tol, alpha, "dalpha")
        return
    # For alpha > 2 the gradient at the support's edge magnifies p's rounding without bound
    # (s = p ** (2 - alpha) is infinite at p = 0), so the oracle takes the library's p there.
    p = value if np.max(alpha) > 2 else None
    dx, dt, dalpha = ref.np_entmax_vjp(case.xc, g, alpha, case.axis, case.t, case.where, p=p)
    if p is None:
        p = ref.np_entmax(case.xc, alpha, case.axis, case.t, case.where)
    a = case.per_slice(alpha)
    with np.errstate(all="ignore"):
        s = np.where(p > 0, np.abs(p) ** (2 - case.per_element(a)), 0)
    s_max = np.maximum(_slice_max_abs(case, s), 1)
    beta = 1 / np.where(a > 1, a - 1, 1)
    assert_x_grad(grads[0], dx, case, g_max * s_max / t, tol)
    assert_param_grad(grads[1], dt, case, beta * g_max * s_max / t, tol, case.t_array, "dt")
    if len(grads) > 2:
        scale = beta**2 * g_max * s_max * (1 + _spread(case, p))
        assert_param_grad(grads[2], dalpha, case, scale, tol, alpha, "dalpha")


# --- reductions: smooth_max, st_max, soft_argmax, st_argmax ---

REDUCTIONS = [
    "smooth_max",
    "smooth_max_softmax",
    "st_max",
    "st_max_softmax",
    "soft_argmax",
    "st_argmax",
]


def _reductions(x, t, where, g, *, config, is_float, errors):
    axis = config.axis
    functions = {
        "smooth_max": lambda x, t: jaxrelax.smooth_max(x, axis, temperature=t, where=where),
        "smooth_max_softmax": lambda x, t: jaxrelax.smooth_max(
            x, axis, temperature=t, where=where, method="softmax"
        ),
        "st_max": lambda x, t: jaxrelax.st_max(x, axis, temperature=t, where=where),
        "st_max_softmax": lambda x, t: jaxrelax.st_max(
            x, axis, temperature=t, where=where, method="softmax"
        ),
    }
    if not isinstance(axis, tuple):  # the index functions take one axis (or None)
        functions["soft_argmax"] = lambda x, t: jaxrelax.soft_argmax(
            x, axis, temperature=t, where=where
        )
        functions["st_argmax"] = lambda x, t: jaxrelax.st_argmax(
            x, axis, temperature=t, where=where
        )
    functions = {name: (f, (x, t), g) for name, f in functions.items()}
    return _collect(functions, is_float, errors)


def _tuple_axis_for_index(name, config):
    return name.endswith("argmax") and isinstance(config.axis, tuple)  # one axis only


@pytest.mark.parametrize("name, config", _items(REDUCTIONS, POOL, _tuple_axis_for_index))
@given(data=st.data())
def test_reductions(name, config, data):
    case = data.draw(cases(config, name), label="case")
    index = name.endswith("argmax")
    g = _cotangent(case, case.slice_shape)
    value, *rest = _results("reductions", name, case, case.x, case.t_array, case.where, g)
    method = "softmax" if name.endswith("_softmax") else "logsumexp"
    if name.startswith("st_"):
        oracle = ref.np_argmax if index else ref.np_max
        assert_exact(value, _hard_oracles(case, lambda x: oracle(x, case.axis, case.where)), case)
    elif index:
        want = ref.np_soft_argmax(case.xc, case.axis, case.t, case.where)
        assert_values(value, want, case, TOL[case.out_name], scale=case.size)
    else:
        want = ref.np_smooth_max(case.xc, case.axis, case.t, case.where, method)
        scale = _slice_max_abs(case, np.where(case.valid, case.xc, 0))
        scale = scale + case.slice_t() * (1 + np.log1p(case.size))
        assert_values(value, want, case, TOL[case.out_name], scale=scale)
    if not case.is_float:
        return
    forward, grads = rest
    _assert_forward(value, forward, case, name.startswith("st_"), TOL[case.out_name])
    tol = GRAD_TOL[case.out_name]
    t = case.slice_t()
    p = ref.np_softmax(case.xc, case.axis, case.t, case.where)
    spread = _spread(case, p)
    g_max = np.abs(np.asarray(g, np.float64))
    if index:
        dx, dt = ref.np_soft_argmax_vjp(case.xc, g, case.axis, case.t, case.where)
        g_max = g_max * _coordinate_max(case.size)
        dx_scale, dt_scale = g_max / t, g_max / t * (1 + spread)
    else:
        dx, dt = ref.np_smooth_max_vjp(case.xc, g, case.axis, case.t, case.where, method)
        spread2 = _spread(case, p, squared=True)
        dx_scale = dt_scale = g_max * (1 + spread + spread2)
    assert_x_grad(grads[0], dx, case, dx_scale, tol)
    assert_param_grad(grads[1], dt, case, dt_scale, tol, case.t_array, "dt")


# --- spatial_soft_argmax ---


def _spatial(x, t, g, *, config, is_float, errors):
    functions = {
        f"spatial_soft_argmax_{normalized}": (
            functools.partial(_spatial_call, normalized=normalized),
            (x, t),
            g,
        )
        for normalized in ["normalized", "pixels"]
    }
    return _collect(functions, is_float, errors)


def _spatial_call(x, t, normalized):
    return jaxrelax.spatial_soft_argmax(x, temperature=t, normalized=normalized == "normalized")


@pytest.mark.parametrize("normalized, config", _items(["normalized", "pixels"], SPATIAL_POOL))
@given(data=st.data())
def test_spatial_soft_argmax(normalized, config, data):
    case = data.draw(cases(config, normalized), label="case")
    g = _cotangent(case, case.slice_shape + (2,))
    value, *rest = _results(
        "spatial", f"spatial_soft_argmax_{normalized}", case, case.x, case.t_array, g
    )
    is_normalized = normalized == "normalized"
    want = ref.np_spatial_soft_argmax(case.xc, case.t, is_normalized)
    coordinate = 1 if is_normalized else _coordinate_max(max(case.x.shape[-2:]))
    assert_values(value, want, case, TOL[case.out_name], scale=coordinate)
    if not case.is_float:
        return
    forward, grads = rest
    _assert_forward(value, forward, case, False, TOL[case.out_name])
    dx, dt = ref.np_spatial_soft_argmax_vjp(case.xc, g, case.t, is_normalized)
    p = ref.np_softmax(case.xc, case.axis, case.t)
    g_max = np.max(np.abs(np.asarray(g, np.float64)), -1) * coordinate
    t = case.slice_t()
    tol = GRAD_TOL[case.out_name]
    assert_x_grad(grads[0], dx, case, g_max / t, tol)
    scale = g_max / t * (1 + _spread(case, p))
    assert_param_grad(grads[1], dt, case, scale, tol, case.t_array, "dt")


# --- Fenchel-Young losses: sparsemax_loss, entmax_loss ---

LOSSES = ["sparsemax_loss", "entmax_loss_float", "entmax_loss_array", "entmax_loss_per_slice"]


def _losses(x, labels, t, where, g, alpha, alpha_slices, *, config, is_float, errors):
    axis = config.axis
    float_alpha = _float_alpha(config)

    def entmax_loss(x, labels, t, alpha):
        return jaxrelax.entmax_loss(x, labels, alpha, axis, temperature=t, where=where)

    def sparsemax_loss(x, labels, t):
        return jaxrelax.sparsemax_loss(x, labels, axis, temperature=t, where=where)

    functions = {
        "sparsemax_loss": (sparsemax_loss, (x, labels, t), g),
        "entmax_loss_float": (
            functools.partial(entmax_loss, alpha=float_alpha),
            (x, labels, t),
            g,
        ),
        "entmax_loss_array": (entmax_loss, (x, labels, t, alpha), g),
        "entmax_loss_per_slice": (entmax_loss, (x, labels, t, alpha_slices), g),
    }
    return _collect(functions, is_float, errors)


def _labels(case):
    """One-hot labels or random distributions over each slice, from the case's seed."""
    rng = np.random.default_rng(case.seed + 1)
    n, rows = case.size, int(np.prod(case.slice_shape))
    if rng.random() < 0.5 or n == 0:
        flat = np.eye(max(n, 1))[rng.integers(0, max(n, 1), rows)][:, :n]
    else:
        flat = rng.dirichlet(np.ones(n), rows)
    order = [a for a in range(case.x.ndim) if a not in case.axes] + list(case.axes)
    shaped = flat.reshape(case.slice_shape + tuple(case.x.shape[a] for a in case.axes))
    return np.transpose(shaped, np.argsort(order)).astype(case.out)


@pytest.mark.parametrize("name, config", _items(LOSSES, POOL))
@given(data=st.data())
def test_losses(name, config, data):
    case = data.draw(cases(config, name), label="case")
    labels = _labels(case)
    g = _cotangent(case, case.slice_shape)
    value, *rest = _results(
        "losses",
        name,
        case,
        case.x,
        labels,
        case.t_array,
        case.where,
        g,
        case.alpha,
        case.alpha_slices,
    )
    alpha = {
        "sparsemax_loss": 2.0,
        "entmax_loss_float": _float_alpha(case.config),
        "entmax_loss_array": case.alpha,
        "entmax_loss_per_slice": case.alpha_slices,
    }[name]
    kinds = case.kinds
    want = ref.np_fenchel_young_loss(case.xc, labels, alpha, case.axis, case.t, case.where)
    p = ref.np_entmax(case.xc, alpha, case.axis, case.t, case.where)
    a = case.per_slice(alpha)
    with np.errstate(all="ignore"):
        omega = np.where(a > 1, 1 / (a * np.where(a > 1, a - 1, 1)), np.log1p(case.size))
        z = np.where(case.valid, case.xc.astype(np.float64) / case.per_element(case.slice_t()), 0)
        y = np.where(case.valid, labels.astype(np.float64), 0)
        weight = np.abs(p) + y
        terms = np.where(weight > 0, np.abs(z) * weight, 0)
        linear = np.sum(terms, axis=case.axes) if case.size else 0 * a
    got = np.asarray(value, np.float64)
    assert np.asarray(value).dtype == case.out and got.shape == case.slice_shape
    assert (got[kinds == EMPTY] == 0).all(), f"loss of empty slices {got} for {case}"
    assert not np.isnan(got[kinds == POSINF]).any(), f"NaN loss for +inf entries: {case}"
    # Label mass on unmasked -inf classes: ignored by the oracle, like that on masked classes
    # (they take no part; an all -inf slice's loss is 0). Checked last, so that a library
    # that disagrees still has its other slices checked.
    mass_on_neg_inf = case.mask & np.isneginf(case.xc.astype(np.float64)) & (labels > 0)
    neg_inf_labels = (kinds == FINITE) & np.any(mass_on_neg_inf, axis=case.axes)
    check = (kinds != POSINF) & ~neg_inf_labels
    assert_values(
        np.where(check, value, 0).astype(case.out),
        np.where(check, want, 0),
        case,
        SPARSE_TOL[case.out_name],
        scale=1 + omega + linear,
    )
    if case.is_float:
        forward, grads = rest
        _assert_forward(value, forward, case, False, SPARSE_TOL[case.out_name])
        dx, dlabels, dt, dalpha = ref.np_fenchel_young_loss_vjp(
            case.xc, labels, g, alpha, case.axis, case.t, case.where
        )
        tol = GRAD_TOL[case.out_name]
        g_abs = np.abs(np.asarray(g, np.float64))
        t = case.slice_t()
        skip = neg_inf_labels
        assert_x_grad(grads[0], dx, case, g_abs / t, tol, skip=skip)
        _assert_labels_grad(grads[1], dlabels, case, tol, skip=skip)
        with np.errstate(over="ignore"):
            dt_scale = g_abs * linear / t
        assert_param_grad(grads[2], dt, case, dt_scale, tol, case.t_array, "dt", skip=skip)
        if len(grads) > 3:
            scale = g_abs * (1 + omega) ** 2
            assert_param_grad(grads[3], dalpha, case, scale, tol, alpha, "dalpha", skip=skip)
    _assert_close(
        got[neg_inf_labels],
        _rounded(want[neg_inf_labels], case.out),
        SPARSE_TOL[case.out_name],
        (SPARSE_TOL[case.out_name] * (1 + omega + linear))[neg_inf_labels],
        "loss with label mass on -inf classes (ignored, as on masked classes)",
        case,
    )


def _assert_labels_grad(got, want, case, tol, skip=None):
    """The labels' cotangent: NaN-free outside NaN slices (and unmasked -inf entries, where
    it is unspecified), exactly 0 at masked entries, close to the oracle elsewhere."""
    got = np.asarray(got)
    assert got.dtype == case.out
    got = got.astype(np.float64)
    kinds = case.per_element(_kinds(case, skip))
    live = kinds != NAN_SLICE
    unspecified = case.mask & np.isneginf(case.xc.astype(np.float64))
    assert not np.isnan(got[live & ~unspecified]).any(), f"dlabels NaN: {got} for {case}"
    assert (got[live & ~case.mask] == 0).all(), f"dlabels not 0 where masked: {got} {case}"
    with np.errstate(invalid="ignore"):
        scale = case.per_element(_slice_max_abs(case, np.where(np.isnan(want), 0, want)))
        check = (kinds == FINITE) & ~np.isnan(want) & (np.abs(want) < _big(case.out))
    err = np.abs(got[check] - want[check])
    bound = tol * (np.abs(want[check]) + scale[check] + 1) + _floor(case.compute, case.out)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"dlabels differs: got {got[check][bad]}, expected {want[check][bad]} for {case}"
    )


# --- samplers: gumbel_softmax, gumbel_rao ---

SAMPLERS = ["gumbel_softmax", "gumbel_softmax_hard", "gumbel_rao", "gumbel_rao_3"]


def _samplers(key, x, t, where, g, *, config, is_float, errors):
    axis = config.axis
    compute = x.dtype if x.dtype == jnp.float64 else jnp.float32

    def gumbel(x, t, hard):
        return jaxrelax.gumbel_softmax(key, x, axis, temperature=t, hard=hard, where=where)

    def rao(x, t, num_samples):
        return jaxrelax.gumbel_rao(
            key, x, axis, temperature=t, num_samples=num_samples, where=where
        )

    functions = {
        "gumbel_softmax": (functools.partial(gumbel, hard=False), (x, t), g),
        "gumbel_softmax_hard": (functools.partial(gumbel, hard=True), (x, t), g),
        "gumbel_rao": (functools.partial(rao, num_samples=1), (x, t), g),
        "gumbel_rao_3": (functools.partial(rao, num_samples=3), (x, t), g),
    }
    results = _collect(functions, is_float, errors)
    noise = jax.random.gumbel(key, x.shape, compute)
    rao_noise = jax.random.gumbel(jax.random.split(key)[0], x.shape, compute)
    return results, noise, rao_noise


@pytest.mark.parametrize("name, config", _items(SAMPLERS, SAMPLER_POOL))
@given(data=st.data())
def test_samplers(name, config, data):
    case = data.draw(cases(config, name), label="case")
    g = _cotangent(case, case.x.shape)
    with case.context():
        key = jax.random.key(case.seed)
    (results, noise, rao_noise), errors = _run(
        "samplers", case, key, case.x, case.t_array, case.where, g
    )
    if name in errors:
        raise errors[name]
    value, forward, grads = results[name]
    noise = np.asarray(rao_noise if name.startswith("gumbel_rao") else noise)
    hard = name != "gumbel_softmax"
    perturbed = ref.sampler_perturbed(case.xc, noise, case.axis, case.where)
    if hard:
        _assert_sample(value, perturbed, case)
    else:
        want = ref.np_gumbel_softmax(case.xc, noise, case.axis, case.t, case.where)
        assert_values(value, want, case, TOL[case.out_name])
        _assert_on_simplex(value, case)
    _assert_forward(value, forward, case, hard, TOL[case.out_name])
    tol = GRAD_TOL[case.out_name]
    t = case.slice_t()
    g_max = _slice_max_abs(case, g)
    if name == "gumbel_rao_3":
        # Conditional noise drawn in the backward pass: no closed form, but NaN-free, 0 at
        # masked and -inf entries, and a mean of softmax VJPs, whose entries sum to 0.
        nothing = np.full(case.slice_shape, np.inf)
        assert_x_grad(grads[0], np.zeros(case.x.shape), case, nothing, tol)
        assert_param_grad(grads[1], np.zeros(t.shape), case, nothing, tol, case.t_array, "dt")
        if case.size:
            got = np.asarray(grads[0], np.float64)
            sums = np.sum(np.where(case.valid, got, 0), axis=case.axes)
            bound = tol * case.size * g_max / t
            fine = (case.kinds != FINITE) | ~(bound < _big(case.out)) | (np.abs(sums) <= bound)
            assert fine.all(), f"gumbel_rao gradient sums {sums} (bound {bound}) for {case}"
        return
    dx, dt = ref.np_softmax_vjp(perturbed, g, case.axis, case.t, case.where)
    p = ref.np_softmax(perturbed, case.axis, case.t, case.where)
    assert_x_grad(grads[0], dx, case, g_max / t, tol)
    scale = g_max / t * (1 + _spread(case, p, x=perturbed))
    assert_param_grad(grads[1], dt, case, scale, tol, case.t_array, "dt")


def _assert_sample(value, perturbed, case):
    """A one-hot of an argmax of the perturbed logits: a k-subset with k = 1."""
    _assert_subset(value, perturbed, case, 1)


def _assert_subset(value, perturbed, case, k):
    """A k-hot of the largest perturbed logits (min(k, classes left) of them), up to the
    rounding of the compute dtype: zeros for empty slices, NaN for NaN slices."""
    got = np.asarray(value)
    assert got.dtype == case.out and got.shape == case.x.shape
    got = got.astype(np.float64)
    kinds = case.per_element(case.kinds)
    nan, empty = kinds == NAN_SLICE, kinds == EMPTY
    assert np.isnan(got[nan]).all(), f"sample not NaN in NaN slices: {got} for {case}"
    assert (got[empty] == 0).all(), f"sample not 0 in empty slices: {got} for {case}"
    live = ~nan & ~empty
    assert np.isin(got[live], [0, 1]).all(), f"sample not k-hot: {got} for {case}"
    assert (got[live & ~case.valid] == 0).all(), f"masked or -inf class sampled: {got} {case}"
    if not case.size:
        return
    counts = np.sum(np.where(live, got, 0), axis=case.axes)
    available = np.sum(case.valid, axis=case.axes)
    live_slices = (case.kinds != NAN_SLICE) & (case.kinds != EMPTY)
    assert (counts[live_slices] == np.minimum(k, available)[live_slices]).all(), (
        f"not min(k, available) classes per slice: {got} for {case}"
    )
    with np.errstate(invalid="ignore", over="ignore"):
        v = np.where(case.valid, perturbed, -np.inf)
        eps = float(jnp.finfo(case.compute).eps)
        slack = 4 * eps * (np.abs(np.where(np.isfinite(v), v, 0)) + 1)
        # Every chosen class is at least (to rounding) every class left out.
        chosen = live & (got == 1)
        lowest_chosen = np.min(np.where(chosen, v + slack, np.inf), axis=case.axes, initial=np.inf)
        highest_left = np.max(
            np.where(live & (got == 0) & case.valid, v - slack, -np.inf),
            axis=case.axes,
            initial=-np.inf,
        )
    ok = ~live_slices | (lowest_chosen >= highest_left)
    assert ok.all(), f"not the top k of logits + noise: {got}, perturbed {perturbed} for {case}"


# --- binary_concrete ---


def _binary(key, x, t, g, *, config, is_float, errors):
    compute = x.dtype if x.dtype == jnp.float64 else jnp.float32
    functions = {
        f"binary_concrete{suffix}": (
            lambda x, t, hard=hard: jaxrelax.binary_concrete(key, x, temperature=t, hard=hard),
            (x, t),
            g,
        )
        for suffix, hard in [("", False), ("_hard", True)]
    }
    return _collect(functions, is_float, errors), jax.random.logistic(key, x.shape, compute)


@pytest.mark.parametrize(
    "name, config", _items(["binary_concrete", "binary_concrete_hard"], ELEMENTWISE_POOL)
)
@given(data=st.data())
def test_binary_concrete(name, config, data):
    case = data.draw(cases(config, name), label="case")
    g = _cotangent(case, case.x.shape)
    with case.context():
        key = jax.random.key(case.seed)
    (results, noise), errors = _run("binary", case, key, case.x, case.t_array, g)
    if name in errors:
        raise errors[name]
    value, forward, grads = results[name]
    noise = np.asarray(noise)
    hard = name.endswith("hard")
    want = ref.np_binary_concrete(case.xc, noise, case.t, hard)
    if hard:
        assert_exact(value, [want], case)
    else:
        assert_values(value, want, case, TOL[case.out_name])
    _assert_forward(value, forward, case, hard, TOL[case.out_name])
    dx, dt = ref.np_binary_concrete_vjp(case.xc, noise, g, case.t)
    infinite = np.isinf(case.xc)
    got = np.asarray(grads[0], np.float64)
    assert (got[infinite] == 0).all(), f"nonzero gradient at infinite logits: {got} for {case}"
    tol = GRAD_TOL[case.out_name]
    t = case.slice_t()
    g_abs = np.abs(np.asarray(g, np.float64))
    assert_x_grad(grads[0], np.where(infinite, 0, dx), case, g_abs / t, tol)
    z = np.abs((case.xc + noise).astype(np.float64))
    with np.errstate(invalid="ignore", over="ignore"):
        scale = np.where(np.isfinite(z), g_abs * (1 + z / t) / t, 0)
    assert_param_grad(
        grads[1], np.where(np.isfinite(z), dt, 0), case, scale, tol, case.t_array, "dt"
    )


FAMILIES = {
    "distributions": _distributions,
    "reductions": _reductions,
    "spatial": _spatial,
    "losses": _losses,
    "samplers": _samplers,
    "binary": _binary,
}


# --- the generic straight-through builder ---

_ST_ROUND = jaxrelax.straight_through(lambda x, w: jnp.round(x), lambda x, w: x * w)
_ST_HARDMAX = jaxrelax.straight_through(
    lambda x, t: jaxrelax.hardmax(x), lambda x, t: jaxrelax.softmax(x, temperature=t)
)


@given(
    x=arrays(
        np.float32,
        st.sampled_from([(1,), (3,), (2, 4)]),
        elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False),
    ),
    scale=st.floats(0.5, 4.0, width=32),
)
def test_straight_through_builder(x, scale):
    # Forward: the hard function exactly; backward: the VJP of the soft one, for every argument.
    w = np.float32(scale)
    np.testing.assert_array_equal(_ST_ROUND(x, w), np.round(x))
    cotangent = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
    dx, dw = jax.vjp(_ST_ROUND, x, w)[1](cotangent)
    np.testing.assert_array_equal(dx, cotangent * w)
    terms = cotangent.astype(np.float64) * x  # a float32 sum: rounding relative to sum |terms|
    np.testing.assert_allclose(dw, terms.sum(), atol=1e-6 * np.abs(terms).sum() + 1e-30)
    np.testing.assert_array_equal(_ST_HARDMAX(x, w), jaxrelax.hardmax(x))
    got = jax.vjp(_ST_HARDMAX, x, w)[1](cotangent)
    want = jax.vjp(lambda x, t: jaxrelax.softmax(x, temperature=t), x, w)[1](cotangent)
    for g, e in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, e)
