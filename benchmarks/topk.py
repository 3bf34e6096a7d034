"""Benchmarks of the top-k relaxations against what a researcher would otherwise write: the
k-hot of ``lax.top_k``, ``jax.nn.softmax`` on the same input (the cost of a relaxation over
one normalisation), sort-based soft top-k (written here in JAX, or ``softjax.top_k`` when it is
installed), and the bare Gumbel top-k recipe.

    python benchmarks/topk.py [--quick] [--repeats N] [--budget S] [--markdown]

Columns as in benchmarks/core.py; every row is float32 at temperature 1 (the default), and
"k=n/4" means a quarter of the row. The sort-based baselines sort each row, as the reference
implementation of the LML layer does (Amos, Koltun & Kolter, The Limited Multi-Label Projection
Layer, 2019, https://arxiv.org/abs/1906.08707) and softjax does, then read the threshold off the
sorted values: for ``soft_topk`` (the LML projection, ``sigmoid(x - tau)`` summing to k) by
bisection between two sorted values that provably bracket it, to float32 resolution; for
``sparse_topk`` (the Euclidean projection onto the capped simplex ``0 <= y <= 1``,
``sum(y) = k``) exactly, by a binary search over the breakpoints. Both have closed-form
backward passes, so that only the forward algorithm differs. Before timing, the script checks
at 64x128 that every baseline matches ours, values and vector-Jacobian products, to 1e-4.

The Gumbel rows time ``gumbel_topk(..., hard=True)`` against the recipe: Gumbel noise plus the
k-hot of ``lax.top_k`` (forward), and the same with a straight-through ``soft_topk`` of the
perturbed logits, written with ``stop_gradient`` (forward and backward).

softjax's ``top_k`` returns k soft one-hots (SoftSort, a (rows, n, n) matrix); its rows here
sum them into a soft k-hot, at the shapes where that matrix fits in 2 GiB. It is not the same
relaxation, so its rows are not checked against ours.

The full run takes about 30 minutes on 2 CPU cores (an estimate from single rows), most of it
in the sort-based baselines: XLA's CPU sort of 4096x1024 floats alone takes over a second.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from harness import Case, run
from jax import lax

import jaxrelax

BISECTION_STEPS = 24  # the LML bracket is under 25 wide here: 24 halvings reach 1.5e-6
SOFTJAX_BYTES = 2**31  # the largest (rows, n, n) float32 matrix softjax.top_k may build
CHECK_SHAPE = (64, 128)
MASK_KS = (1, 8, 64)  # and n/4, for every row below
RELAXATION_KS = (8,)

try:  # an optional peer (it needs Python >= 3.12)
    import softjax
except ImportError:
    softjax = None


def k_hot(x, k):
    """1 at the k largest entries of each row (the first of tied ones), 0 elsewhere."""
    _, indices = lax.top_k(x, k)
    return jnp.put_along_axis(jnp.zeros_like(x), indices, 1.0, axis=-1, inplace=False)


def _sort_descending(z):
    return -jnp.sort(-z, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sort_lml(z, k):
    """``sigmoid(z - tau)`` with ``sum = k``: tau by bisection between sorted values."""
    n = z.shape[-1]
    descending = _sort_descending(z)
    # f(tau) = sum(sigmoid(z - tau)) decreases; the k+1 largest give f(lo) >= (k+1) sigmoid(log k)
    # = k, and the n-k+1 smallest give f(hi) <= k - 1 + (n-k+1) sigmoid(-log(n-k)) = k.
    lo = descending[..., k : k + 1] - math.log(k)
    hi = descending[..., k - 1 : k] + math.log(n - k)

    def bisect(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) / 2
        above = jnp.sum(jax.nn.sigmoid(z - mid), -1, keepdims=True) > k
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = lax.fori_loop(0, BISECTION_STEPS, bisect, (lo, hi))
    return jax.nn.sigmoid(z - (lo + hi) / 2)


def _sort_lml_fwd(z, k):
    y = sort_lml(z, k)
    return y, y


def _sort_lml_bwd(k, y, g):
    h = y * (1 - y)
    g_hat = jnp.sum(g * h, -1, keepdims=True) / jnp.sum(h, -1, keepdims=True)
    return (h * (g - g_hat),)


sort_lml.defvjp(_sort_lml_fwd, _sort_lml_bwd)


def _binary_search(predicate, n, shape):
    """Per row, the number of i in [0, n) where the monotone ``predicate(i)`` (true, then
    false; i of ``shape``) holds."""
    lo = jnp.zeros(shape, jnp.int32)
    hi = jnp.full(shape, n, jnp.int32)

    def step(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        holds = predicate(jnp.minimum(mid, n - 1)) & (lo < hi)
        return jnp.where(holds, mid + 1, lo), jnp.where(holds | (lo >= hi), hi, mid)

    lo, _ = lax.fori_loop(0, n.bit_length() + 1, step, (lo, hi))
    return lo


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def sort_capped_simplex(z, k):
    """The Euclidean projection of ``z`` onto ``{0 <= y <= 1, sum(y) = k}``: ``clip(z - tau,
    0, 1)``, with tau exact from the sorted values."""
    n = z.shape[-1]
    s = _sort_descending(z)
    top_sums = jnp.concatenate([jnp.zeros_like(s[..., :1]), jnp.cumsum(s, -1)], -1)
    shape = s.shape[:-1] + (1,)

    def take(a, i):
        return jnp.take_along_axis(a, i, -1)

    def count_above(t):  # #{i: s_i > t}, t of ``shape``
        return _binary_search(lambda i: take(s, i) > t, n, shape)

    def f(t):  # sum(clip(z - t, 0, 1)): 1 for z above t + 1, z - t for z in (t, t + 1]
        above, capped = count_above(t), count_above(t + 1)
        middle = take(top_sums, above) - take(top_sums, capped)
        return capped + middle - (above - capped) * t

    # f decreases, so f(s_i) < k exactly when s_i > tau, and f(s_i - 1) < k when s_i - 1 > tau:
    # then the entries at 1 are the top ``capped``, the positive ones the top ``support``.
    support = _binary_search(lambda i: f(take(s, i)) < k, n, shape)
    capped = _binary_search(lambda i: f(take(s, i) - 1) < k, n, shape)
    free = support - capped
    middle = take(top_sums, support) - take(top_sums, capped)
    last = take(s, jnp.minimum(support, n - 1))
    tau = jnp.where(free > 0, (middle - (k - capped)) / jnp.maximum(free, 1), last)
    return jnp.clip(z - tau, 0, 1)


def _sort_capped_simplex_fwd(z, k):
    y = sort_capped_simplex(z, k)
    return y, y


def _sort_capped_simplex_bwd(k, y, g):
    free = ((y > 0) & (y < 1)).astype(y.dtype)
    count = jnp.maximum(jnp.sum(free, -1, keepdims=True), 1)
    return (free * (g - jnp.sum(g * free, -1, keepdims=True) / count),)


sort_capped_simplex.defvjp(_sort_capped_simplex_fwd, _sort_capped_simplex_bwd)


def gumbel_recipe(k):
    """Gumbel noise plus the k-hot of ``lax.top_k``: the forward pass of hard Gumbel top-k."""

    def recipe(x, key):
        return k_hot(x + jax.random.gumbel(key, x.shape, x.dtype), k)

    return recipe


def gumbel_st_recipe(k):
    """The same with the straight-through gradient of ``soft_topk`` of the perturbed logits."""

    def recipe(x, key):
        perturbed = x + jax.random.gumbel(key, x.shape, x.dtype)
        soft = jaxrelax.soft_topk(perturbed, k)
        return k_hot(perturbed, k) - lax.stop_gradient(soft) + soft

    return recipe


def softjax_k_hot(k, rows, n):
    """softjax's k soft one-hots summed into a soft k-hot, or None where its (rows, n, n)
    matrix is too large or its ``top_k`` does not give k soft one-hots."""
    if softjax is None or 4 * rows * n * n > SOFTJAX_BYTES:
        return None

    def soft_k_hot(x):
        _, soft_indices = softjax.top_k(x, k, axis=-1)
        return jnp.sum(soft_indices, -2)

    try:  # its API is still changing
        out = jax.eval_shape(soft_k_hot, jax.ShapeDtypeStruct((rows, n), jnp.float32))
    except Exception as error:
        print(f"  no softjax rows: softjax.top_k(x, {k}, axis=-1) raised {error!r}")
        return None
    if out.shape != (rows, n):
        print(f"  no softjax rows: softjax.top_k gave soft indices that sum to {out.shape}")
        return None
    return soft_k_hot


def ks(n: int, sizes: tuple[int, ...]) -> list[tuple[str, int]]:
    """(label, k) for each of ``sizes`` and n/4 below n, without repeats."""
    out = {}
    for label, k in [(str(k), k) for k in sizes] + [("n/4", n // 4)]:
        if 1 <= k < n and k not in out.values():
            out[label] = k
    return list(out.items())


def ours(name: str, k: int, **options):
    fn = getattr(jaxrelax, name)
    if name == "gumbel_topk":
        return lambda x, key: fn(key, x, k, **options)
    return lambda x: fn(x, k, **options)


def cases(n: int, mask: jax.Array) -> list[Case]:
    near_softmax = {"fwd": ">=0.25x", "fwd+bwd": ">=0.33x"}  # within 4x and 3x of softmax
    versus_sort = {"fwd": ">=10x", "fwd+bwd": ">=10x"}
    rows = [
        Case(
            f"topk_mask k={label}",
            ours("topk_mask", k),
            "top_k k-hot",
            functools.partial(k_hot, k=k),
            {"fwd": ">=3x" if label == "n/4" else ">=1x"},
        )
        for label, k in ks(n, MASK_KS)
    ]
    for label, k in ks(n, RELAXATION_KS):
        peer = softjax_k_hot(k, mask.size // n, n)
        for name, sort_name, sort_fn in [
            ("soft_topk", "sort+bisect LML (JAX)", sort_lml),
            ("sparse_topk", "sort capped simplex (JAX)", sort_capped_simplex),
        ]:
            op = f"{name} k={label}"
            rows += [
                Case(op, ours(name, k), "nn.softmax", jax.nn.softmax, near_softmax),
                Case(op, ours(name, k), sort_name, functools.partial(sort_fn, k=k), versus_sort),
            ]
            if peer is not None:
                rows.append(Case(op, ours(name, k), "softjax.top_k", peer, versus_sort))
        rows += [
            Case(
                f"st_topk k={label}",
                ours("st_topk", k),
                "soft_topk",
                ours("soft_topk", k),
                {"fwd+bwd": ">=0.77x"},  # within 1.3x
            ),
            Case(
                f"gumbel_topk hard k={label}",
                ours("gumbel_topk", k, hard=True),
                "gumbel + top_k k-hot",
                gumbel_recipe(k),
                {"fwd": ">=0.83x"},  # within 1.2x
                key=True,
            ),
            Case(
                f"gumbel_topk hard k={label}",
                ours("gumbel_topk", k, hard=True),
                "recipe + st soft_topk",
                gumbel_st_recipe(k),
                {"fwd+bwd": ">=0.83x"},
                key=True,
            ),
        ]
    return rows


def check_baselines() -> None:
    """Every baseline written here computes what ours does: values and VJPs to 1e-4."""
    key_x, key_g, key = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(key_x, CHECK_SHAPE, jnp.float32)
    cotangent = jax.random.normal(key_g, CHECK_SHAPE, jnp.float32)
    n = CHECK_SHAPE[-1]

    def value_and_vjp(fn, *extra):
        @jax.jit
        def run(x, cotangent, *extra):
            value, vjp = jax.vjp(lambda x: fn(x, *extra), x)
            return value, vjp(cotangent)[0]

        return run(x, cotangent, *extra)

    def close(label, ours, theirs, values=True):
        (a, da), (b, db) = ours, theirs
        if values:
            np.testing.assert_allclose(a, b, atol=1e-4, err_msg=f"{label}: values")
        np.testing.assert_allclose(da, db, atol=1e-4, err_msg=f"{label}: VJP")

    for label, k in ks(n, MASK_KS):
        np.testing.assert_array_equal(ours("topk_mask", k)(x), k_hot(x, k), f"topk_mask k={label}")
    for label, k in ks(n, RELAXATION_KS):
        soft = value_and_vjp(ours("soft_topk", k))
        close(f"soft_topk k={label}", soft, value_and_vjp(functools.partial(sort_lml, k=k)))
        close(
            f"sparse_topk k={label}",
            value_and_vjp(ours("sparse_topk", k)),
            value_and_vjp(functools.partial(sort_capped_simplex, k=k)),
        )
        close(f"st_topk k={label}", value_and_vjp(ours("st_topk", k)), soft, values=False)
        gumbel = ours("gumbel_topk", k, hard=True)
        np.testing.assert_array_equal(gumbel(x, key), gumbel_recipe(k)(x, key), f"gumbel k={label}")
        close(
            f"gumbel_topk k={label}",
            value_and_vjp(gumbel, key),
            value_and_vjp(gumbel_st_recipe(k), key),
        )
    shape = "x".join(map(str, CHECK_SHAPE))
    print(f"baselines agree with ours at {shape}: values and VJPs to 1e-4")


if __name__ == "__main__":
    check_baselines()
    run(
        __doc__,
        cases,
        shapes=[(4096, 1024), (256, 32768), (64, 131072)],
        quick_shapes=[(64, 128)],
    )
