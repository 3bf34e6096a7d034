"""Benchmarks of the stochastic relaxations against the plain JAX recipe (and PyTorch's
``F.gumbel_softmax`` when torch is installed, on as many threads as XLA uses), on this
machine's default backend.

    python benchmarks/stochastic.py [--quick] [--repeats N] [--markdown]

Columns as in benchmarks/core.py. The Gumbel-Rao row's baseline is our own straight-through
Gumbel-softmax: the row reports what the Rao-Blackwellised gradient costs over it.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from harness import Case, run, torch_peer

import jaxrelax

T = 0.5  # the temperature of every row

try:  # an optional peer
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
except ImportError:
    torch = None


def recipe_soft(x, key):
    return jax.nn.softmax((x + jax.random.gumbel(key, x.shape, x.dtype)) / T)


def recipe_hard(x, key):
    soft = recipe_soft(x, key)
    hard = jax.nn.one_hot(jnp.argmax(soft, -1), x.shape[-1], dtype=x.dtype)
    return hard - jax.lax.stop_gradient(soft) + soft


def torch_gumbel_softmax(hard):
    return torch_peer(lambda logits: F.gumbel_softmax(logits, tau=T, hard=hard))


def cases(n: int, mask: jax.Array) -> list[Case]:
    del n, mask

    def soft(x, key):
        return jaxrelax.gumbel_softmax(key, x, temperature=T)

    def hard(x, key):
        return jaxrelax.gumbel_softmax(key, x, temperature=T, hard=True)

    def rao(x, key):
        return jaxrelax.gumbel_rao(key, x, temperature=T, num_samples=10)

    target = {"fwd+bwd": ">=0.87x"}  # within 1.15x of the recipe
    rows = [
        Case("gumbel_softmax", soft, "recipe", recipe_soft, {"fwd": "", **target}, key=True),
        Case(
            "gumbel_softmax hard",
            hard,
            "recipe (stop_gradient)",
            recipe_hard,
            {"fwd": "", **target},
            key=True,
        ),
        Case(
            "gumbel_rao K=10",
            rao,
            "gumbel_softmax hard",
            hard,
            {"fwd+bwd": ">=0.1x"},  # under 10x the straight-through estimator
            key=True,
        ),
    ]
    if torch is not None:
        rows += [
            Case(
                "gumbel_softmax",
                soft,
                "torch F.gumbel_softmax",
                torch_gumbel_softmax(False),
                {"fwd+bwd": ">1x"},
                key=True,
                peer=True,
            ),
            Case(
                "gumbel_softmax hard",
                hard,
                "torch F.gumbel_softmax",
                torch_gumbel_softmax(True),
                {"fwd+bwd": ">1x"},
                key=True,
                peer=True,
            ),
        ]
    return rows


if __name__ == "__main__":
    run(__doc__, cases, shapes=[(4096, 1024), (64, 131072)], quick_shapes=[(64, 128)])
