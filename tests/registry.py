"""The one list of public functions the cross-cutting suites iterate over.

Every public function of ``jaxrelax.__all__`` has one entry here (test_registry.py checks
both directions; the submodules ``diagnostics`` and ``schedules`` are listed in ``MODULES``).
An entry says how to call the function on a standard input and what it promises; its
variants (``hardmax(ties="uniform")``, ``st_topk(backward="sparse")``, ...) are entries of
their own, named ``<name>_<variant>``, that share its properties unless they override one.

The calling convention is uniform::

    entry(x, *axis, temperature=..., where=..., key=KEY, **options)

``axis`` is passed only where given (else the function's default); ``temperature`` goes to
the function's temperature argument (``sigma`` for the perturbed optimizers) and ``where``
to its mask, and passing either to a function without one raises. The standard call fixes
what is not an input: k for the k-of-n functions (``k=`` overrides it), labels for the
losses (ones, of x's shape), alpha = 1.3 for the general entmax, a small ``num_samples``
for the estimators, the window geometry for pooling (``WINDOW``, ``STRIDES``, ``PADDING``),
``hardmax`` as the function ``perturbed`` smooths, hardmax forward and softmax backward for
``straight_through``, and max_pool's values and indices for ``max_unpool``.

The suites that iterate it: test_transformations.py (jit, vmap, grad, grad-of-grad, dtypes,
batch shapes, Hessians, empty slices), test_errors.py (bad input, axis, mask, temperature,
key, k, labels), test_residuals.py (a table keyed by entry), test_audit.py (masked slices of
length one, +inf against finfo.max), sharding_script.py, and the fuzz suites (each entry
names its ``fuzz`` test). A suite that does not cover an entry says why through the entry's
properties (an input that is not a batch of slices, no temperature, no mask, ...), never by a
list of names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jaxrelax

KEY = jax.random.key(0)
MODULES = ("diagnostics", "schedules")

# What the backward pass promises (``gradient``):
SMOOTH = "smooth"  # infinitely differentiable: finite differences and Hessians apply
PIECEWISE = "piecewise"  # differentiable away from a set of measure zero (sparse supports,
#                          ties of a maximum): finite differences apply at generic points
STRAIGHT_THROUGH = "straight-through"  # the hard forward value, a surrogate's gradient
HARD = "hard"  # piecewise constant: the gradient is exactly zero
ESTIMATED = "estimated"  # a Monte-Carlo estimate of the smoothed function's gradient, for
#                          the same noise as the forward value (not its derivative)
GRADIENTS = (SMOOTH, PIECEWISE, STRAIGHT_THROUGH, HARD, ESTIMATED)

# What the standard input is (``input``):
SLICES = "slices"  # any array, reduced over ``axis`` (the default -1)
ELEMENTWISE = "elementwise"  # any array, entry by entry
HEATMAPS = "heatmaps"  # (*batch, height, width), reduced over the last two axes
IMAGES = "images"  # (*batch, *spatial, features), pooled over the spatial dimensions
INPUTS = (SLICES, ELEMENTWISE, HEATMAPS, IMAGES)

# Which ``axis`` it takes (``axis``): an int, a tuple of ints or None; one int or None; none.
ANY_AXIS, ONE_AXIS, NO_AXIS = "any", "one", None

K = 2  # the k of the k-of-n functions (soft_topk's is 2.5: a fraction)
ALPHA = 1.3  # entmax's and entmax_loss's alpha
NUM_SAMPLES = 4  # of the perturbed optimizers (batches of PERTURBED_BATCH for `perturbed`)
PERTURBED_BATCH = 3
WINDOW, STRIDES, PADDING = (3, 3), (2, 2), "SAME"  # overlapping, padded windows
UNPOOL_WINDOW = (2, 2)  # max_unpool of max_pool over non-overlapping windows (stride 2)

_UNSET = object()
FLOAT_DTYPES = ("bfloat16", "float16", "float32", "float64")
# Integer and boolean input is promoted like jax.nn.softmax (float32, float64 for int64
# under x64), except that max_pool and max_unpool keep integers (as flax and PyTorch do);
# the samplers take floating-point logits only.
DTYPES = FLOAT_DTYPES + ("int32", "int64", "bool")


class Entry(NamedTuple):
    """A public function, or one variant of it, and what it promises.

    ``call(key, x, *axis, **keywords)`` calls it on the standard input (see the module
    docstring); use the entry itself, ``entry(x, *axis, temperature=..., where=...)``.
    """

    name: str  # its name in jaxrelax.__all__
    call: Callable[..., Any]
    gradient: str  # one of GRADIENTS
    input: str = SLICES  # one of INPUTS
    axis: str | None = ANY_AXIS  # ANY_AXIS, ONE_AXIS or NO_AXIS
    reduces: bool = False  # one value per slice (x's shape without the axis), not x's shape
    order: bool = False  # ranks or sorted values (every entry takes part, -inf included), not
    #                      a distribution over the slice or a maximum
    empty: float | None = None  # a reduction's value over an empty slice (where it has one)
    temperature: str | None = "temperature"  # its temperature argument's name, if any
    where: bool = True  # takes a boolean mask ``where``
    sampled: bool = False  # takes a PRNG key
    k: int | float | None = None  # the k of a k-of-n function: an int where it must be a
    #                               concrete integer, a float where it may be any real
    checks: str | None = "x"  # the name its errors give its checked input; None: a
    #                            combinator that hands its input to functions of the user's
    dtypes: tuple[str, ...] = DTYPES  # the input dtypes it takes
    variants: tuple[tuple[str, dict[str, Any], dict[str, Any]], ...] = ()  # (suffix, options,
    #                                                       properties it overrides)
    fuzz: str | None = None  # the property-based test of it, "file::test function"
    variant: str | None = None  # the variant's suffix (None: the standard call)
    options: dict[str, Any] = {}  # the variant's keyword arguments

    def __call__(self, x, *axis, temperature=_UNSET, where=None, key=KEY, **options):
        if axis and self.axis is NO_AXIS:
            raise TypeError(f"{self.id} takes no axis")
        keywords = {**self.options, **options}
        if temperature is not _UNSET:
            if self.temperature is None:
                raise TypeError(f"{self.id} takes no temperature")
            keywords[self.temperature] = temperature
        if where is not None:
            if not self.where:
                raise TypeError(f"{self.id} takes no mask")
            keywords["where"] = where
        if self.k is not None:
            keywords.setdefault("k", self.k)
        return self.call(key, x, *axis, **keywords)

    @property
    def id(self) -> str:
        """The public name, or <name>_<variant>."""
        return self.name if self.variant is None else f"{self.name}_{self.variant}"


def variant(suffix, options, **properties):
    return (suffix, options, properties)


# --- how each kind of function is called ---


def _x(fn):
    return lambda key, x, *axis, **kw: fn(x, *axis, **kw)


def _x_k(fn):
    return lambda key, x, *axis, k, **kw: fn(x, k, *axis, **kw)


def _key(fn):
    return lambda key, x, *axis, **kw: fn(key, x, *axis, **kw)


def _key_k(fn):
    return lambda key, x, *axis, k, **kw: fn(key, x, k, *axis, **kw)


def labels_for(x):
    """The losses' standard labels: ones of x's shape, in x's dtype where it is a float array
    (ones of no shape for input that is not an array, which the loss rejects first)."""
    if not isinstance(x, jax.Array | np.ndarray):
        return jnp.ones(())
    return jnp.ones(x.shape, x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else None)


def _loss(fn, **options):
    return lambda key, x, *axis, **kw: fn(x, labels_for(x), *axis, **options, **kw)


def _estimator(fn, *k):
    def call(key, x, *axis, **kw):
        return fn(key, x, *k, *axis, **{"num_samples": NUM_SAMPLES, **kw})

    return call


def _estimator_k(fn):
    return lambda key, x, *axis, k, **kw: _estimator(fn, k)(key, x, *axis, **kw)


def _perturbed(key, x, **kw):
    smoothed = jaxrelax.perturbed(
        jaxrelax.hardmax, **{"num_samples": NUM_SAMPLES, "batch_size": PERTURBED_BATCH, **kw}
    )
    return smoothed(key, x)


_STRAIGHT_THROUGH_HARDMAX = jaxrelax.straight_through(
    lambda x, t: jaxrelax.hardmax(x), lambda x, t: jaxrelax.softmax(x, temperature=t)
)


def _straight_through(key, x, temperature=1.0):
    return _STRAIGHT_THROUGH_HARDMAX(x, temperature)


def _pool(fn):
    return lambda key, x, **kw: fn(x, WINDOW, STRIDES, PADDING, **kw)


def _max_unpool(key, x):
    values, indices = jaxrelax.max_pool(
        x, UNPOOL_WINDOW, UNPOOL_WINDOW, "VALID", return_indices=True
    )
    return jaxrelax.max_unpool(
        values, indices, spatial_shape=np.shape(x)[-1 - len(UNPOOL_WINDOW) : -1]
    )


QUANTILE = 0.3  # soft_quantile's q


def _soft_quantile(key, x, *axis, **kw):
    return jaxrelax.soft_quantile(x, QUANTILE, *axis, **kw)


def _entmax(key, x, *axis, **kw):
    return jaxrelax.entmax(x, *axis, alpha=ALPHA, **kw)


def _binary_concrete(key, x, **kw):
    return jaxrelax.binary_concrete(key, x, **kw)


def _spatial_soft_argmax(key, x, **kw):
    """The heatmaps as one channel in the default, channels-last layout (bad input as it is,
    for its error)."""
    if not isinstance(x, (np.ndarray, jax.Array)) or x.ndim < 2:
        return jaxrelax.spatial_soft_argmax(x, channel_axis=None, **kw)
    t = kw.get("temperature")
    if isinstance(t, (np.ndarray, jax.Array)) and t.ndim == x.ndim:
        kw["temperature"] = t[..., None]
    return jaxrelax.spatial_soft_argmax(x[..., None], **kw)[..., 0, :]


def _perturbed_fy_loss(key, x, *axis, **kw):
    return _estimator(jaxrelax.perturbed_fy_loss, labels_for(x))(key, x, *axis, **kw)


E = Entry
ST = STRAIGHT_THROUGH
_POOLING = dict(input=IMAGES, axis=NO_AXIS, where=False)
_TIES = variant("uniform", dict(ties="uniform"))
_HARD = variant("hard", dict(hard=True), gradient=ST)  # a sampler's straight-through form
_DESCENDING = variant("descending", dict(descending=True))
_KL = variant("kl", dict(regularization="kl"))
_SIGMA = dict(temperature="sigma", sampled=True)
_LOGITS = dict(sampled=True, checks="logits", dtypes=FLOAT_DTYPES)


def _fuzzed_by(test, *entries):
    """The entries, fuzzed by ``test`` ("file::test function")."""
    return [entry._replace(fuzz=test) for entry in entries]


_ENTRIES = [
    # one of n
    *_fuzzed_by("test_fuzz.py::test_distributions",
        E("hardmax", _x(jaxrelax.hardmax), HARD, temperature=None, variants=(_TIES,)),
        E("softmax", _x(jaxrelax.softmax), SMOOTH),
        E("st_hardmax", _x(jaxrelax.st_hardmax), ST,
          variants=(_TIES, variant("identity", dict(backward="identity")))),
        E("sparsemax", _x(jaxrelax.sparsemax), PIECEWISE),
        E("entmax15", _x(jaxrelax.entmax15), PIECEWISE),
        E("entmax", _entmax, PIECEWISE)),
    *_fuzzed_by("test_fuzz.py::test_samplers",
        E("gumbel_softmax", _key(jaxrelax.gumbel_softmax), SMOOTH, variants=(_HARD,), **_LOGITS),
        E("gumbel_rao", _key(jaxrelax.gumbel_rao), ST, **_LOGITS)),
    *_fuzzed_by("test_fuzz.py::test_binary_concrete",
        E("binary_concrete", _binary_concrete, SMOOTH, input=ELEMENTWISE, axis=NO_AXIS,
          where=False, variants=(_HARD,), **_LOGITS)),
    # one value per slice
    *_fuzzed_by("test_fuzz.py::test_reductions",
        E("smooth_max", _x(jaxrelax.smooth_max), SMOOTH, reduces=True, empty=-np.inf,
          variants=(variant("softmax", dict(method="softmax")),)),
        E("st_max", _x(jaxrelax.st_max), ST, reduces=True, empty=-np.inf,
          variants=(variant("softmax", dict(method="softmax")),)),
        E("soft_argmax", _x(jaxrelax.soft_argmax), SMOOTH, axis=ONE_AXIS, reduces=True,
          empty=0.0),
        E("st_argmax", _x(jaxrelax.st_argmax), ST, axis=ONE_AXIS, reduces=True, empty=0.0)),
    *_fuzzed_by("test_fuzz.py::test_spatial_soft_argmax",
        E("spatial_soft_argmax", _spatial_soft_argmax, SMOOTH, input=HEATMAPS, axis=NO_AXIS,
          where=False, checks="heatmaps", variants=(variant("pixels", dict(normalized=False)),))),
    # Fenchel-Young losses
    *_fuzzed_by("test_fuzz.py::test_losses",
        E("sparsemax_loss", _loss(jaxrelax.sparsemax_loss), PIECEWISE, reduces=True, empty=0.0),
        E("entmax_loss", _loss(jaxrelax.entmax_loss, alpha=ALPHA), PIECEWISE, reduces=True,
          empty=0.0)),
    # k of n
    *_fuzzed_by("test_fuzz_topk.py::test_topk",
        E("topk_mask", _x_k(jaxrelax.topk_mask), HARD, temperature=None, k=K,
          variants=(_TIES,)),
        E("soft_topk", _x_k(jaxrelax.soft_topk), SMOOTH, k=K + 0.5),
        E("sparse_topk", _x_k(jaxrelax.sparse_topk), PIECEWISE, k=float(K)),
        E("st_topk", _x_k(jaxrelax.st_topk), ST, k=K,
          variants=(variant("sparse", dict(backward="sparse")),
                    variant("identity", dict(backward="identity"))))),
    *_fuzzed_by("test_fuzz_topk.py::test_gumbel_topk",
        E("gumbel_topk", _key_k(jaxrelax.gumbel_topk), SMOOTH, k=K, variants=(_HARD,),
          **_LOGITS)),
    # orders (descending ranks are the ranks of -x, and the kl forms of st_sort and
    # soft_quantile wrap soft_sort's: tests/test_sort.py checks them; the descending sort
    # places its values differently, so it has an entry)
    *_fuzzed_by("test_fuzz_sort.py::test_orders",
        E("rank", _x(jaxrelax.rank), HARD, temperature=None, order=True),
        E("soft_rank", _x(jaxrelax.soft_rank), PIECEWISE, variants=(_KL,), order=True),
        E("soft_sort", _x(jaxrelax.soft_sort), PIECEWISE, variants=(_DESCENDING, _KL), order=True),
        E("st_rank", _x(jaxrelax.st_rank), ST, order=True),
        E("st_sort", _x(jaxrelax.st_sort), ST, order=True),
        E("soft_quantile", _soft_quantile, PIECEWISE, reduces=True, empty=0.0, order=True)),
    # perturbed optimizers
    *_fuzzed_by("test_fuzz_perturbed.py::test_perturbed",
        E("perturbed_argmax", _estimator(jaxrelax.perturbed_argmax), ESTIMATED, **_SIGMA),
        E("perturbed_topk", _estimator_k(jaxrelax.perturbed_topk), ESTIMATED, k=K, **_SIGMA),
        E("perturbed_max", _estimator(jaxrelax.perturbed_max), ESTIMATED, reduces=True,
          empty=-np.inf, **_SIGMA),
        E("perturbed_fy_loss", _perturbed_fy_loss, ESTIMATED, reduces=True, empty=0.0,
          **_SIGMA),
        E("perturbed", _perturbed, ESTIMATED, axis=NO_AXIS, where=False, **_SIGMA)),
    # the straight-through builder
    *_fuzzed_by("test_fuzz.py::test_straight_through_builder",
        E("straight_through", _straight_through, ST, axis=NO_AXIS, where=False, checks=None)),
    # pooling
    *_fuzzed_by("test_fuzz_pool.py::test_pooling",
        E("max_pool", _pool(jaxrelax.max_pool), PIECEWISE, temperature=None, **_POOLING),
        E("soft_pool", _pool(jaxrelax.soft_pool), SMOOTH, **_POOLING),
        E("lse_pool", _pool(jaxrelax.lse_pool), SMOOTH, **_POOLING),
        E("st_max_pool", _pool(jaxrelax.st_max_pool), ST, **_POOLING),
        E("max_unpool", _max_unpool, PIECEWISE, temperature=None, **_POOLING)),
]  # fmt: skip


def _expand(entries):
    out = {}
    for entry in entries:
        out[entry.id] = entry
        for suffix, options, properties in entry.variants:
            v = entry._replace(variant=suffix, options=options, variants=(), **properties)
            out[v.id] = v
    return out


# Every entry, variants included, by id.
ENTRIES: dict[str, Entry] = _expand(_ENTRIES)
# One entry per public function: its standard call.
FUNCTIONS: dict[str, Entry] = {e.name: e for e in _ENTRIES}


def select(*, variants=True, **properties):
    """The ids of the entries whose properties have the given values (a value may be a
    predicate), variants included unless ``variants=False``."""

    def matches(entry):
        for key, wanted in properties.items():
            value = getattr(entry, key)
            if not (wanted(value) if callable(wanted) else value == wanted):
                return False
        return variants or entry.variant is None

    return [i for i, e in ENTRIES.items() if matches(e)]


def fuzzed_by(test):
    """The ids of the entries (variants included) that ``test`` ("file::test") fuzzes."""
    return select(fuzz=test)
