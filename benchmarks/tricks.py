"""Benchmarks of the library's backend-specific tricks against the plain jnp form of the same
computation, on this machine's default backend (the tricks were written for XLA's CPU one).

    python benchmarks/tricks.py [--quick] [--repeats N] [--budget S] [--markdown]

The rule: a trick stays only where a row shows it at least 10% faster than the plain form.
"plain/tuned" is the plain form's time over the trick's, the median over alternating pairs
(see benchmarks/harness.py); "verdict" is "keep" at 1.10x or more and "plain" below. Rows
marked "ref" compare with a reference implementation (``jax.nn.softmax``) and give none.

The tuned side is the library's own helper, or the public function that holds the trick. The
plain side is one of two kinds. Most rows run the same public function with the helper
replaced, while it is compiled, by its plain form (written below in a few lines of jnp; the
"plain" column names it after "patched:"): the module attribute is swapped, JAX's caches are
cleared, the program is compiled ahead of time, and the attribute is restored, so the two
programs differ by the trick alone. The other rows compare with the obvious jnp code a
reviewer would write (``jnp.argmax`` and a one-hot, ``lax.reduce_window``, ``jnp.sum``,
``jax.random``).

Before timing, every row runs both sides once at a small size and compares them, values and
(for "fwd+bwd") vector-Jacobian products: exactly where they must agree bit for bit (hard
choices and counts, the same random bits), to 1e-5 otherwise. The scores are random
normal; the rows of one choice per slice whose plain form keeps the trick's semantics (the
bare helpers and the patched rows) are also compared on scores with +inf, -inf, NaN, tied
maxima and an all -inf row. The exponentials draw
different bits by design, so each side's mean and variance are checked against Exp(1)'s, to
6 standard errors (a false alarm about once in 10**8 runs). A failed check stops the script.

Workloads: float32 scores of shape 4096x1024 (one choice per row; k = n/4 = 256 for the
top-k rows), the pooling shapes of benchmarks/pooling.py (NHWC, windows 2x2/2 and 3x3/2 with
one position of padding), 100x64x1024 = 6.5 million random numbers, the same shape summed
over its leading axis, and ``perturbed(hardmax, num_samples=100)`` of 64x1024 scores.
``--quick`` runs every row at the small size of its check, with 3 timed pairs: a smoke test
(compiling the programs is most of its time), whose ratios mean nothing.

Tricks that measured under 1.10x here and were replaced by the plain form (CHANGELOG.md): a
zero computed per slice for clamps (now the constant), counting in float32 in ``topk_mask``
(now an int32 sum), an optimisation barrier on ``lax.top_k``'s values, and ``st_hardmax``'s
fused forward pass (now the straight-through combinator over hardmax and softmax). Forms
kept for what they compute rather than for speed have no row: the NaN poison as a sum of
signs (the plain ``where(isnan(x).any(), nan, 0)`` makes a NaN constant, which
``jax.debug_nans`` reports), the soft pools' per-window softmax (``lax.reduce_window`` sums
can only shift by the maximum of the plane, not of the window, and underflow) and their
clamp at a floor logit (it also catches logits that overflow to -inf).
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pooling
from harness import alternate, forward, forward_backward, header, normal, parse_args, print_cells
from jax import lax

import jaxrelax
from jaxrelax import _gumbel, _noise, _numerics, _perturbation, _topk

T = 0.5  # the temperature of the softmax rows
KEEP = 1.10  # the speedup a trick must show to stay
TOLERANCE = 1e-5
STANDARD_ERRORS = 6.0


# --- the plain forms of the helpers (their signatures are the helpers') ---


def plain_slice_max(x, axes):
    """``jnp.max`` without a seed, then the clamp that keeps ``x - max`` from -inf - -inf."""
    largest = jnp.max(lax.stop_gradient(x), axes, keepdims=True)
    return jnp.maximum(largest, jnp.finfo(x.dtype).min)


def plain_shift_by_max(x, where, axes, scale=None, temperature=None):
    """``(x - m) * scale / temperature`` with a select for slices holding +inf: 0 at +inf,
    -inf elsewhere."""
    x = _numerics.fill_masked(x, where)
    m = plain_slice_max(x, axes)
    if temperature is not None:
        scale = (1 if scale is None else scale) / temperature
    if scale is not None:  # as the trick clips it: no 0 * inf at either end
        finfo = jnp.finfo(x.dtype)
        scale = jnp.where(scale >= 0, jnp.clip(scale, finfo.tiny, finfo.max), jnp.nan)
    shifted = x - m if scale is None else (x - m) * scale
    at_inf = jnp.where(x == jnp.inf, 0, -jnp.inf).astype(x.dtype)
    return m, jnp.where(m == jnp.inf, at_inf, shifted)


def plain_below_max(x, where, axes):
    """1 below the slice maximum, 0 at it, by a compare and a select."""
    x = _numerics.fill_masked(lax.stop_gradient(x), where)
    return jnp.where(x < plain_slice_max(x, axes), 1.0, 0.0).astype(x.dtype)


def plain_sum_leading(v):
    return jnp.sum(v, 0)


# --- the plain forms of whole computations ---


def reduce_window_max_with_nan(x, w):
    """The max-pool by ``lax.reduce_window``, which drops NaN on XLA's CPU backend, plus a
    window sum of ``0 * x`` that brings NaN back: the plain equivalent of ``max_pool``."""
    return pooling.reduce_window_max(x, w) + pooling.avg_pool(0 * x, w)


def nn_softmax(x):
    return jax.nn.softmax(x / T)


def hardmax_int32_positions(x):
    """hardmax with the first maximum found on int32 positions by a select (the plain form of
    the float position keys)."""
    x = lax.stop_gradient(x)
    below = _numerics.below_max(x, None, (1,))
    positions = _numerics.slice_positions(x.shape, (1,), jnp.int32)
    keys = jnp.where(below == 0, positions, x.shape[1])
    first = jnp.min(keys, 1, keepdims=True, initial=jnp.iinfo(jnp.int32).max)
    return (positions == first).astype(x.dtype) + _numerics.nan_poison(x, (1,))


def one_hot_argmax(x):
    return jax.nn.one_hot(jnp.argmax(x, -1), x.shape[-1], dtype=x.dtype)


def float_argmax(x):
    return jnp.argmax(x, -1).astype(x.dtype)


# --- the tuned functions (one object each, so that their compiled programs are shared) ---

softmax = functools.partial(jaxrelax.softmax, temperature=T)
st_argmax = functools.partial(jaxrelax.st_argmax, temperature=T)
perturbed_hardmax = jaxrelax.perturbed(jaxrelax.hardmax, num_samples=100)


def quarter(x):
    return x.shape[-1] // 4


def topk_quarter(x):
    return jaxrelax.topk_mask(x, quarter(x))


def topk_65(x):  # just above SMALL_K = 64: the smallest k that counts
    return jaxrelax.topk_mask(x, 65)


def perturbed_of(x, key):
    return perturbed_hardmax(key, x)


def slice_max_last(x):
    return _numerics.slice_max(x, (1,))


def plain_slice_max_last(x):
    return plain_slice_max(x, (1,))


# Random rows: functions of the shape, returning functions of the key.
def uniform_draws(shape):
    return lambda key: _noise.uniform(key, shape, jnp.float32)


def jax_uniform_draws(shape):
    return lambda key: jax.random.uniform(key, shape, jnp.float32)


def gumbel_sum(shape):
    return lambda key: jnp.sum(_noise.noise_and_score("gumbel", key, shape, jnp.float32)[0])


def exponentials(shape):
    return lambda key: _gumbel._exponentials(key, shape, jnp.float32)


def jax_exponentials(shape):
    return lambda key: jax.random.exponential(key, shape, jnp.float32)


# --- inputs ---


@dataclass(frozen=True)
class Data:
    """The inputs of a family of rows: the full run's shapes, the small shape of the check
    (and of the quick run), and the arguments for a shape, the first differentiated in
    "fwd+bwd" rows. With ``sized`` the functions take the shape and return a function of
    the arguments."""

    shapes: tuple
    small: tuple
    make: Callable
    edges: Callable | None = None
    sized: bool = False


@functools.cache
def _normal(shape: tuple, seed: int) -> jax.Array:
    return normal(shape, seed)


def scores(shape):
    return (_normal(shape, 0),)


@functools.cache
def edge_scores(shape):
    """Random scores with +inf, -inf, NaN, tied maxima and an all -inf row."""
    x = np.random.default_rng(2).standard_normal(shape, np.float32)
    x[0, [3, 7]] = np.inf
    x[1] = -np.inf
    x[2, ::2] = -np.inf
    x[3, 5] = np.nan
    x[4, [2, 9]] = x[4].max() + 1
    x[5] = 1.0
    return (jnp.asarray(x),)


def key_only(shape):
    del shape
    return (jax.random.key(0),)


def scores_and_key(shape):
    return _normal(shape, 0), jax.random.key(1)


SLICES = Data(((4096, 1024),), (32, 512), scores, edge_scores)
POOLS = Data(tuple(pooling.SHAPES), pooling.CHECK_SHAPE, scores)
DRAWS = Data(((100, 64, 1024),), (16, 64, 64), key_only, sized=True)
LEADING = Data(((100, 64, 1024),), (10, 8, 128), scores)
PERTURBED = Data(((64, 1024),), (8, 128), scores_and_key)


# --- the rows ---


@dataclass(frozen=True)
class Trick:
    name: str
    where: str  # module.function holding the trick
    workload: str
    mode: str  # "fwd" or "fwd+bwd"
    data: Data
    tuned: Callable
    plain: Callable
    plain_label: str
    patch: tuple = ()  # (module, attribute, plain form), swapped in while plain compiles
    check: str = "close"  # "exact", "close" or "Exp(1)"
    tolerance: float = TOLERANCE
    edges: bool = True  # also checked on the edge scores, where the data has them
    reference: bool = False


def patched(name, where, workload, mode, data, fn, module, attribute, replacement, label, **kw):
    """A row whose plain side is ``fn`` itself, compiled with ``module.attribute`` replaced."""
    return Trick(
        name,
        where,
        workload,
        mode,
        data,
        fn,
        fn,
        f"patched: {label}",
        ((module, attribute, replacement),),
        **kw,
    )


def slice_tricks() -> list[Trick]:
    shift = "halving shift"
    rows = []
    for mode in ("fwd", "fwd+bwd"):
        rows += [
            patched(
                shift,
                "_numerics.shift_by_max",
                "softmax t=0.5",
                mode,
                SLICES,
                softmax,
                _numerics,
                "shift_by_max",
                plain_shift_by_max,
                "max, where(+inf)",
            ),
            Trick(
                shift,
                "_numerics.shift_by_max",
                "softmax t=0.5",
                mode,
                SLICES,
                softmax,
                nn_softmax,
                "jax.nn.softmax(x/t)",
                edges=False,
                reference=True,
            ),
        ]
    hardmax = jaxrelax.hardmax
    return rows + [
        patched(
            "arithmetic is-the-max",
            "_numerics.below_max",
            "hardmax",
            "fwd",
            SLICES,
            hardmax,
            _numerics,
            "below_max",
            plain_below_max,
            "where(x < max)",
            check="exact",
        ),
        Trick(
            "float position keys",
            "_hard.first_max_position",
            "hardmax",
            "fwd",
            SLICES,
            hardmax,
            hardmax_int32_positions,
            "int32 positions, where",
            check="exact",
        ),
        Trick(
            "keys + is-the-max + poison",
            "_hard.hardmax_impl",
            "hardmax",
            "fwd",
            SLICES,
            hardmax,
            one_hot_argmax,
            "one_hot(argmax)",
            check="exact",
            edges=False,
        ),
        Trick(
            "keys + is-the-max + poison",
            "_hard.argmax_impl",
            "st_argmax t=0.5",
            "fwd",
            SLICES,
            st_argmax,
            float_argmax,
            "argmax",
            check="exact",
            edges=False,
        ),
        Trick(
            "seeded max",
            "_numerics.slice_max",
            "slice_max",
            "fwd",
            SLICES,
            slice_max_last,
            plain_slice_max_last,
            "jnp.max, clamp",
            check="exact",
        ),
        patched(
            "seeded max",
            "_numerics.slice_max",
            "softmax t=0.5",
            "fwd",
            SLICES,
            softmax,
            _numerics,
            "slice_max",
            plain_slice_max,
            "jnp.max, clamp",
        ),
        patched(
            "counting above SMALL_K",
            "_topk.topk_mask_impl",
            "topk_mask k=65",
            "fwd",
            SLICES,
            topk_65,
            _topk,
            "SMALL_K",
            2**31,
            "lax.top_k path",
            check="exact",
        ),
        patched(
            "counting above SMALL_K",
            "_topk.topk_mask_impl",
            "topk_mask k=n/4",
            "fwd",
            SLICES,
            topk_quarter,
            _topk,
            "SMALL_K",
            2**31,
            "lax.top_k path",
            check="exact",
        ),
    ]


def pool_tricks() -> list[Trick]:
    rows = []
    for w in pooling.WINDOWS:
        max_pool = pooling.ours("max_pool", w)
        reduce_window = functools.partial(pooling.reduce_window_max, w=w)
        with_nan = functools.partial(reduce_window_max_with_nan, w=w)
        rows += [
            Trick(
                "window slices",
                "_pool._window_max",
                f"max_pool {w.label}",
                "fwd",
                POOLS,
                max_pool,
                with_nan,
                "reduce_window max + NaN pass",
                check="exact",
            ),
            Trick(
                "slices + spreads",
                "_pool._max_pool_bwd",
                f"max_pool {w.label}",
                "fwd+bwd",
                POOLS,
                max_pool,
                reduce_window,
                "vjp(reduce_window max)",
            ),
        ]
    return rows


def random_tricks() -> list[Trick]:
    return [
        Trick(
            "unrolled threefry",
            "_noise.uniform",
            "uniform",
            "fwd",
            DRAWS,
            uniform_draws,
            jax_uniform_draws,
            "jax.random.uniform",
            check="exact",
        ),
        patched(
            "unrolled threefry",
            "_noise.uniform",
            "sum of Gumbel noise",
            "fwd",
            DRAWS,
            gumbel_sum,
            _noise,
            "uniform",
            jax.random.uniform,
            "jax.random.uniform",
        ),
        Trick(
            "24-bit exponentials",
            "_gumbel._exponentials",
            "Exp(1) draws",
            "fwd",
            DRAWS,
            exponentials,
            jax_exponentials,
            "jax.random.exponential",
            check="Exp(1)",
        ),
        Trick(
            "sum by tensordot",
            "_perturbation.sum_leading",
            "sum over axis 0",
            "fwd",
            LEADING,
            _perturbation.sum_leading,
            plain_sum_leading,
            "jnp.sum(v, 0)",
        ),
        patched(
            "sum by tensordot",
            "_perturbation.sum_leading",
            "perturbed(hardmax) M=100",
            "fwd+bwd",
            PERTURBED,
            perturbed_of,
            _perturbation,
            "sum_leading",
            plain_sum_leading,
            "jnp.sum(v, 0)",
        ),
    ]


# --- compiling, checking, timing ---


@contextlib.contextmanager
def swapped(patch: tuple):
    """Each ``(module, attribute, value)`` swapped in, with JAX's caches cleared on the way in
    and out, so that nothing traced under the swap outlives it but what is compiled here."""
    saved = []
    for module, attribute, value in patch:
        if not hasattr(module, attribute):  # the trick is gone: say so rather than time it
            raise AttributeError(f"{module.__name__}.{attribute} no longer exists")
        saved.append((module, attribute, getattr(module, attribute)))
        setattr(module, attribute, value)
    if patch:
        jax.clear_caches()
    try:
        yield
    finally:
        for module, attribute, value in saved:
            setattr(module, attribute, value)
        if patch:
            jax.clear_caches()


@dataclass
class Pair:
    """A trick's two programs at one shape (lowered, then compiled), and their arguments."""

    tuned: Any
    plain: Any
    args: tuple
    cotangent: jax.Array | None

    def arguments(self, args: tuple | None = None) -> tuple:
        """What the programs take: ``args`` (by default the pair's own), with the cotangent
        after the first for "fwd+bwd"."""
        args = self.args if args is None else args
        return args if self.cotangent is None else (args[0], self.cotangent, *args[1:])


def lower(fn: Callable, mode: str, arguments: tuple, patch: tuple = ()):
    """``mode`` of ``fn`` traced and lowered for these arguments, with ``patch`` in place."""
    jitted = forward(fn) if mode == "fwd" else forward_backward(fn)
    with swapped(patch):
        return jitted.lower(*arguments)


def prepare(trick: Trick, shape: tuple, shared: dict) -> Pair:
    """Both sides of ``trick`` at ``shape``, lowered; unpatched programs are shared between
    rows through ``shared``."""
    args = trick.data.make(shape)
    tuned_fn, plain_fn = functions(trick, shape)
    cotangent = None
    if trick.mode == "fwd+bwd":
        cotangent = _normal(jax.eval_shape(tuned_fn, *args).shape, 1)
    pair = Pair(None, None, args, cotangent)
    programs = []
    for fn, patch in ((tuned_fn, ()), (plain_fn, trick.patch)):
        if patch:
            programs.append(lower(fn, trick.mode, pair.arguments(), patch))
            continue
        key = (fn, trick.data.make, trick.mode, shape)
        if key not in shared:
            shared[key] = lower(fn, trick.mode, pair.arguments())
        programs.append(shared[key])
    pair.tuned, pair.plain = programs
    return pair


def compile_all(pairs: list[Pair]) -> int:
    """Compiles every lowered program, on as many threads as there are cores (XLA releases
    Python's lock while it compiles); returns how many there were."""
    lowered = {id(p): p for pair in pairs for p in (pair.tuned, pair.plain)}
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        done = dict(zip(lowered, pool.map(lambda p: p.compile(), lowered.values()), strict=True))
    for pair in pairs:
        pair.tuned, pair.plain = done[id(pair.tuned)], done[id(pair.plain)]
    return len(lowered)


def functions(trick: Trick, shape):
    if trick.data.sized:
        return trick.tuned(shape), trick.plain(shape)
    return trick.tuned, trick.plain


def check(trick: Trick, pair: Pair) -> str:
    """Compares the two sides (values, and VJPs for "fwd+bwd"); raises on a mismatch and
    returns what was checked."""
    inputs = [pair.args]
    if trick.edges and trick.data.edges is not None:
        edge_args = trick.data.edges(np.shape(pair.args[0]))
        inputs.append(edge_args + pair.args[len(edge_args) :])
    label = f"{trick.name}, {trick.workload} {trick.mode}"
    for arguments in inputs:
        a = jax.tree.leaves(pair.tuned(*pair.arguments(arguments)))
        b = jax.tree.leaves(pair.plain(*pair.arguments(arguments)))
        for ours, theirs in zip(a, b, strict=True):
            ours, theirs = np.asarray(ours), np.asarray(theirs)
            if trick.check == "exact":
                np.testing.assert_array_equal(ours, theirs, err_msg=label)
            elif trick.check == "close":
                np.testing.assert_allclose(
                    ours, theirs, trick.tolerance, trick.tolerance, err_msg=label
                )
            else:
                check_exponential(ours, f"{label}, tuned")
                check_exponential(theirs, f"{label}, plain")
    if trick.check == "Exp(1)":
        return "mean and variance of Exp(1)"
    how = "exactly" if trick.check == "exact" else f"to {trick.tolerance:g}"
    what = "values and VJPs" if trick.mode == "fwd+bwd" else "values"
    edges = " (and edge scores)" if len(inputs) > 1 else ""
    return f"{what} {how}{edges}"


def check_exponential(draws: np.ndarray, label: str) -> None:
    """Exp(1) has mean 1, variance 1 and fourth central moment 9."""
    n = draws.size
    assert np.all(np.isfinite(draws)) and np.all(draws >= 0), f"{label}: not in [0, inf)"
    mean, variance = draws.mean(), draws.var()
    assert abs(mean - 1) < STANDARD_ERRORS / np.sqrt(n), f"{label}: mean {mean}"
    assert abs(variance - 1) < STANDARD_ERRORS * np.sqrt(8 / n), f"{label}: variance {variance}"


@dataclass
class Result:
    trick: Trick
    shape: tuple
    plain_ms: float
    tuned_ms: float
    ratio: float  # plain over tuned, the median over alternating pairs

    @property
    def verdict(self) -> str:
        if self.trick.reference:
            return "ref"
        return "keep" if self.ratio >= KEEP else "plain"


def run_trick(trick: Trick, pairs: dict, args) -> list[Result]:
    """Checks ``trick`` at its small shape, then times it at each of ``pairs``' shapes."""
    checked = check(trick, pairs[trick.data.small])
    print(f"  checked {trick.name}, {trick.workload} {trick.mode}: {checked}", flush=True)
    results = []
    for shape, pair in pairs.items():
        if shape == trick.data.small and not args.quick:
            continue
        tuned_ms, plain_ms, ratio = alternate(
            pair.tuned, pair.plain, pair.arguments(), args.repeats, args.budget
        )
        results.append(Result(trick, shape, plain_ms, tuned_ms, ratio))
        label = "x".join(map(str, shape))
        print(f"  measured {trick.name}, {trick.workload} {trick.mode} {label}", flush=True)
    return results


def print_results(results: list[Result], markdown: bool) -> None:
    columns = [
        "#",
        "trick",
        "where",
        "workload",
        "shape",
        "dtype",
        "mode",
        "plain",
        "plain ms",
        "tuned ms",
        "plain/tuned",
        "verdict",
    ]
    cells = [
        [
            str(i),
            r.trick.name,
            r.trick.where,
            r.trick.workload,
            "x".join(map(str, r.shape)),
            "float32",
            r.trick.mode,
            r.trick.plain_label,
            f"{r.plain_ms:.2f}",
            f"{r.tuned_ms:.2f}",
            f"{r.ratio:.2f}x",
            r.verdict,
        ]
        for i, r in enumerate(results, 1)
    ]
    print_cells(columns, cells, markdown)


def print_summary(results: list[Result]) -> None:
    """Each trick's verdicts, row by row."""
    verdicts = {}
    for i, r in enumerate(results, 1):
        if not r.trick.reference:
            verdicts.setdefault((r.trick.name, r.trick.where), []).append(f"{r.verdict} (#{i})")
    print()
    print(f"verdicts (keep: tuned at least {KEEP:.2f}x faster than plain):")
    for (name, where), marks in verdicts.items():
        print(f"  {name} ({where}): {', '.join(marks)}")


def main() -> None:
    args = parse_args(__doc__)
    start = time.perf_counter()
    print(header())
    tricks = slice_tricks() + pool_tricks() + random_tricks()
    # Every program is compiled first, in parallel, so that nothing compiles while timing.
    shared, pairs = {}, []
    for trick in tricks:
        shapes = [trick.data.small] + ([] if args.quick else list(trick.data.shapes))
        pairs.append({shape: prepare(trick, shape, shared) for shape in shapes})
    count = compile_all([pair for by_shape in pairs for pair in by_shape.values()])
    print(f"  compiled {count} programs in {time.perf_counter() - start:.0f} s", flush=True)
    results = []
    for trick, by_shape in zip(tricks, pairs, strict=True):
        results += run_trick(trick, by_shape, args)
    print()
    print_results(results, args.markdown)
    print_summary(results)
    print(f"\n{len(results)} rows in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
