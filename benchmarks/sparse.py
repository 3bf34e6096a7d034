"""Benchmarks of the sparse relaxations against the sort-based algorithms of the literature
(written here in JAX), against ``jax.nn.softmax`` on the same input, and against the PyTorch
``entmax`` package when it is installed (on as many threads as XLA uses).

    python benchmarks/sparse.py [--quick] [--repeats N] [--budget S] [--markdown]

Columns as in benchmarks/core.py. The sort-based baselines follow Martins & Astudillo (2016,
Algorithm 1) for sparsemax and Peters, Niculae & Martins (2019, Algorithm 2) for 1.5-entmax,
with their closed-form backward passes, so that only the forward algorithm differs.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from harness import Case, run, torch_peer

import jaxrelax

ALPHA = 1.3  # the general alpha-entmax rows

try:  # an optional peer
    import entmax as torch_entmax
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
except ImportError:
    torch_entmax = None


def _sorted_support(z, moments):
    """Descending scores, and ``moments(descending, k)``'s threshold candidates per k."""
    descending = -jnp.sort(-z, axis=-1)
    k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    return descending, k, moments(descending, k)


@jax.custom_vjp
def sort_sparsemax(z):
    def candidates(descending, k):
        return (jnp.cumsum(descending, -1) - 1) / k

    descending, k, tau = _sorted_support(z, candidates)
    support = jnp.sum(descending > tau, -1, keepdims=True)
    tau_star = jnp.take_along_axis(tau, support - 1, -1)
    return jnp.maximum(z - tau_star, 0)


def _sort_sparsemax_fwd(z):
    p = sort_sparsemax(z)
    return p, p


def _sort_sparsemax_bwd(p, g):
    support = (p > 0).astype(p.dtype)
    g_hat = jnp.sum(g * support, -1, keepdims=True) / jnp.sum(support, -1, keepdims=True)
    return (support * (g - g_hat),)


sort_sparsemax.defvjp(_sort_sparsemax_fwd, _sort_sparsemax_bwd)


@jax.custom_vjp
def sort_entmax15(z):
    z = (z - jnp.max(z, -1, keepdims=True)) / 2

    def candidates(descending, k):
        mean = jnp.cumsum(descending, -1) / k
        mean_sq = jnp.cumsum(descending**2, -1) / k
        delta = jnp.maximum((1 - k * (mean_sq - mean**2)) / k, 0)
        return mean - jnp.sqrt(delta)

    descending, _, tau = _sorted_support(z, candidates)
    support = jnp.sum(tau <= descending, -1, keepdims=True)
    tau_star = jnp.take_along_axis(tau, support - 1, -1)
    return jnp.maximum(z - tau_star, 0) ** 2


def _sort_entmax15_fwd(z):
    p = sort_entmax15(z)
    return p, p


def _sort_entmax15_bwd(p, g):
    root = jnp.sqrt(p)
    g_hat = jnp.sum(g * root, -1, keepdims=True) / jnp.sum(root, -1, keepdims=True)
    return (root * (g - g_hat),)


sort_entmax15.defvjp(_sort_entmax15_fwd, _sort_entmax15_bwd)


def cases(n: int, mask: jax.Array) -> list[Case]:
    del n, mask
    both = {"fwd": ">=5x", "fwd+bwd": ">=5x"}
    near_softmax = {"fwd": ">=0.25x", "fwd+bwd": ">=0.25x"}  # within 4x of softmax
    untargeted = {"fwd": "", "fwd+bwd": ""}
    general = functools.partial(jaxrelax.entmax, alpha=ALPHA)
    rows = [
        Case("sparsemax", jaxrelax.sparsemax, "sort (Martins 2016)", sort_sparsemax, both),
        Case("sparsemax", jaxrelax.sparsemax, "nn.softmax", jax.nn.softmax, near_softmax),
        Case("entmax15", jaxrelax.entmax15, "sort (Peters 2019)", sort_entmax15, both),
        Case("entmax15", jaxrelax.entmax15, "nn.softmax", jax.nn.softmax, near_softmax),
        Case(f"entmax a={ALPHA}", general, "nn.softmax", jax.nn.softmax, untargeted),
    ]
    if torch_entmax is not None:
        peers = [
            ("sparsemax", jaxrelax.sparsemax, "torch entmax.sparsemax", torch_entmax.sparsemax),
            ("entmax15", jaxrelax.entmax15, "torch entmax.entmax15", torch_entmax.entmax15),
            (
                f"entmax a={ALPHA}",
                general,
                "torch entmax_bisect",
                functools.partial(torch_entmax.entmax_bisect, alpha=ALPHA),
            ),
        ]
        rows += [
            Case(op, ours, name, torch_peer(fn), {"fwd": ">1x", "fwd+bwd": ">1x"}, peer=True)
            for op, ours, name, fn in peers
        ]
    return rows


if __name__ == "__main__":
    run(
        __doc__,
        cases,
        shapes=[(4096, 1024), (256, 32768), (64, 131072)],
        quick_shapes=[(64, 128)],
    )
