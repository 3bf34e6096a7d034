"""Shared pieces of the property-based suites (test_fuzz*.py): the configuration pools, the
hypothesis strategies that draw inputs (the shapes people forget and the values that break
numerics: +-inf, NaN, 1e30, finfo.max, subnormals, exact ties, masks with every entry or all
but one masked, temperatures from finfo.tiny to 1e20) and the assertions that compare a
function's values and gradients with the float64 oracles of reference.py, relative to each
slice's own scale. test_fuzz.py's docstring states the semantics they check.
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
import registry
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from reference import EMPTY, FINITE, NAN_SLICE, POSINF

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
    C((0, 4), -1, "float32", "full", "slice"),  # an empty batch axis
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
    C((0, 2, 3), (-2, -1), "float32", None, "slice"),  # no heatmaps
]
ELEMENTWISE_POOL = [  # binary_concrete: "slice" means one temperature per element here
    C((4, 5), (), "float32", None, "slice"),
    C((), (), "float32", None, "scalar"),
    C((2, 0), (), "float32", None, "scalar"),
    C((3, 1), (), "bfloat16", None, "slice"),
    C((4,), (), "float16", None, "scalar"),
    C((2, 3), (), "float64", None, "slice"),
]


def config_id(c):
    shape = "x".join(map(str, c.shape)) or "0d"
    axis = "all" if c.axis is None else ",".join(map(str, np.atleast_1d(c.axis))) or "elementwise"
    return f"{c.dtype}-{shape}-axis{axis}-mask{c.mask}-t{c.temperature}"


def fuzzed_names(test, **expand):
    """The function names a fuzz test checks: the ids of the registry entries it fuzzes
    (``test`` is "file::test function"), each expanded to several names where the test
    draws one of its parameters several ways (``id=[names]``)."""
    unknown = set(expand) - set(registry.fuzzed_by(test))
    assert not unknown, f"{test} expands entries it does not fuzz: {unknown}"
    return [name for id_ in registry.fuzzed_by(test) for name in expand.get(id_, [id_])]


FLUSH_DEPENDENT = " (it depends on XLA flushing subnormals: seen in some runs, not all)"


def params(names, pool, skip=lambda name, config: False, known_failures=None):
    """One test per function and configuration: every function sees every configuration.
    ``known_failures`` maps test ids to the library bug each exposes: a strict xfail, so
    that the test fails again once the bug is fixed and the mark is left behind; a reason in
    ``FLUSH_DEPENDENT`` marks a bug in subnormal flushing, which showed in some runs of the
    same draws and not in others, so its xfail is not strict."""
    known_failures = dict(known_failures or {})

    def param(name, config):
        id_ = f"{name}-{config_id(config)}"
        reason = known_failures.pop(id_, None)
        strict = not (reason or "").endswith(FLUSH_DEPENDENT)
        marks = [pytest.mark.xfail(strict=strict, reason=reason)] if reason else []
        return pytest.param(name, config, id=id_, marks=marks)

    out = [param(name, config) for name in names for config in pool if not skip(name, config)]
    assert not known_failures, f"known failures of no test: {known_failures}"
    return out


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


def float_elements(dtype):
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
    general = arrays(np.float64, config.shape, elements=float_elements(dtype))
    # One example in four is made of extremes only, so that +inf meets finfo.max, -inf and
    # other +inf entries in the same slice often.
    info = jnp.finfo(dtype)
    extremes = [np.inf, -np.inf, float(info.max), -float(info.max), 0.0, 1.0]
    size = int(np.prod(config.shape))
    extreme = st.lists(st.sampled_from(extremes), min_size=size, max_size=size).map(
        lambda values: np.array(values, np.float64).reshape(config.shape)
    )
    return st.one_of(general, general, general, extreme)


def temperatures(extra=()):
    return st.sampled_from(TEMPERATURES * 3 + EXTREME_TEMPERATURES + list(extra))


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
        t = draw(temperatures())
    else:
        if config.axis == ():
            t_shape = config.shape
        else:
            axes = tuple(range(len(config.shape))) if config.axis is None else config.axis
            axes = tuple(a % len(config.shape) for a in np.atleast_1d(axes))
            t_shape = tuple(1 if i in axes else n for i, n in enumerate(config.shape))
        t = np.asarray(draw(arrays(np.float64, t_shape, elements=temperatures())), compute)
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


def random_cotangent(case, shape):
    """Random cotangents for an output of ``shape``, in the output dtype."""
    rng = np.random.default_rng(case.seed)
    return rng.normal(size=shape).astype(case.out)


# --- comparisons ---


def rounded(want, dtype):
    """The oracle rounded to the output dtype (overflowing to inf as the output would)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(want, np.float64).astype(dtype).astype(np.float64)


def assert_values(got, want, case, tol, scale=1.0, what="value"):
    got = np.asarray(got)
    assert got.dtype == case.out, f"{what}: dtype {got.dtype}, expected {case.out}"
    assert got.shape == np.shape(want), f"{what}: shape {got.shape}, expected {np.shape(want)}"
    assert_close(got.astype(np.float64), rounded(want, case.out), tol, tol * scale, what, case)


def assert_close(got, want, rtol, atol, what, case):
    """|got - want| <= rtol |want| + atol (atol an array), NaN where want is NaN, and
    infinities equal."""
    with np.errstate(invalid="ignore"):
        err = np.abs(got - want)
        ok = (got == want) | (np.isnan(got) & np.isnan(want))
        ok |= np.isfinite(want) & (
            err <= rtol * np.abs(want) + atol + floor(case.compute, case.out)
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
    wants = [rounded(w, case.out) for w in wants]
    assert got.shape == wants[0].shape, f"{what}: shape {got.shape}, expected {wants[0].shape}"
    got = got.astype(np.float64)
    for want in wants:
        if np.array_equal(got, want, equal_nan=True):
            return
    np.testing.assert_array_equal(got, wants[0], err_msg=f"{what} of {case}")


def flushed(case):
    """x with scores below 4 * finfo.tiny (of the compute dtype) flushed to zero, as hardmax's
    docstring allows: XLA's CPU backend flushes subnormals, and the comparison runs on
    scores scaled by 1/4."""
    xc = case.xc
    if not np.issubdtype(xc.dtype, np.floating):
        return xc
    return np.where(np.abs(xc) < 4 * jnp.finfo(xc.dtype).tiny, np.copysign(0, xc), xc)


def both_xs(case):
    """x, and x with tiny scores flushed (see :func:`flushed`)."""
    return [case.xc, flushed(case)]


def closer_by_slice(value, wants, case):
    """Per slice, the oracle in ``wants`` closest to ``value`` (largest absolute error)."""
    value = np.asarray(value, np.float64)
    if not case.axes or not case.size:
        return wants[0]
    with np.errstate(invalid="ignore"):
        errors = [np.nanmax(np.abs(value - w), axis=case.axes, initial=0) for w in wants]
    best = np.expand_dims(np.argmin(np.stack(errors), 0), case.axes)
    return np.choose(np.broadcast_to(best, value.shape), wants)


def hard_oracles(case, oracle):
    """The hard oracle of x and of x with tiny scores flushed (either is right)."""
    return [oracle(case.xc), oracle(flushed(case))]


def big(dtype):
    return float(jnp.finfo(dtype).max) / 16


def floor(compute, out):
    """An absolute tolerance far below any value of interest: above the flushing of subnormal
    intermediates to zero (XLA's CPU backend flushes them) and the subnormal range of the
    output dtype (float16 gradients of 1e-7 keep a digit or two)."""
    info = jnp.finfo(compute)
    return max(1e3 * float(info.tiny) / float(info.eps), float(jnp.finfo(out).tiny))


def kinds_skipping(case, skip):
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
    kinds = case.per_element(kinds_skipping(case, skip))
    live = kinds != NAN_SLICE
    assert not np.isnan(got[live]).any(), f"{what} has NaN outside NaN slices: {got} for {case}"
    invalid = live & ~case.valid
    assert (got[invalid] == 0).all(), (
        f"{what} is not 0 at masked or -inf entries: {got[invalid]} for {case}"
    )
    scale = case.per_element(np.asarray(scale, np.float64))
    with np.errstate(invalid="ignore"):
        check = (kinds == FINITE) & (np.abs(want) < big(case.out)) & (scale < big(case.out))
    err = np.abs(got[check] - want[check])
    bound = tol * (np.abs(want[check]) + scale[check]) + floor(case.compute, case.out)
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
    kinds = kinds_skipping(case, skip)

    def to_param(per_slice):
        return _sum_to(np.expand_dims(per_slice, case.axes), param.shape)

    nan = to_param(kinds == NAN_SLICE) > 0
    edge = to_param(kinds == POSINF) > 0
    assert not np.isnan(got[~nan]).any(), f"{what} is NaN: {got} for {case}"
    with np.errstate(invalid="ignore"):
        want = to_param(np.where(kinds == FINITE, want, 0))
        scale = to_param(np.where(kinds == FINITE, scale, 0))
        limit = big(param.dtype)
        check = ~nan & ~edge & (np.abs(want) < limit) & (scale < limit)
    err = np.abs(got[check] - want[check])
    bound = tol * (np.abs(want[check]) + scale[check]) + floor(case.compute, param.dtype)
    bad = ~(err <= bound)
    assert not bad.any(), (
        f"{what} differs: got {got[check][bad]}, expected {want[check][bad]} "
        f"(bound {bound[bad]}) for {case}"
    )


def slice_max_abs(case, values):
    """max |values| over each slice (0 for an empty one)."""
    values = np.abs(np.asarray(values, np.float64))
    if case.size == 0:
        return np.zeros(case.kinds.shape)
    return np.max(np.where(np.isfinite(values), values, 0), axis=case.axes)


def softmax_spread(case, p, squared=False, x=None):
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


def coordinate_max(n):
    return max(n - 1, 1)


def events(case):
    """Statistics (pytest --hypothesis-show-statistics): the configurations and slice kinds
    drawn."""
    kinds = set(np.ravel(case.kinds).tolist())
    for kind, label in [(FINITE, "finite"), (EMPTY, "empty"), (POSINF, "+inf"), (NAN_SLICE, "NaN")]:
        if kind in kinds:
            event(f"has {label} slices")


def collect(functions, is_float, errors):
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


def assert_forward(value, forward, case, exact, tol=None):
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


def assert_subset(value, perturbed, case, k):
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
