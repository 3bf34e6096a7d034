"""Benchmarks of the deterministic relaxations (hard, soft, straight-through) against the
hand-written jax.nn code a researcher would otherwise use, on this machine's default backend.

    python benchmarks/core.py [--quick] [--repeats N] [--markdown]

"speedup" is the baseline's time over ours (above 1: we are faster); "target" restates the
goal as the speedup to reach. "residuals" counts the input-sized arrays kept for the backward
pass, ours vs the baseline's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from harness import Case, run

import jaxrelax

T = 0.5  # the temperature of every tempered row


def cases(n: int, mask: jax.Array) -> list[Case]:
    def one_hot_argmax(x):
        return jax.nn.one_hot(jnp.argmax(x, -1), n, dtype=x.dtype)

    def nn_softmax(x):
        return jax.nn.softmax(x / T)

    def nn_smooth_max(x):
        return T * jax.nn.logsumexp(x / T, -1)

    def tempered(fn, **options):
        return lambda x: fn(x, temperature=T, **options)

    both = {"fwd": "", "fwd+bwd": ""}
    return [
        Case("hardmax", jaxrelax.hardmax, "one_hot(argmax)", one_hot_argmax, {"fwd": ">=1.5x"}),
        Case("hardmax", jaxrelax.hardmax, "copy", lambda x: x * 1.0, {"fwd": ">=0.4x"}),
        Case(
            "hardmax uniform",
            lambda x: jaxrelax.hardmax(x, ties="uniform"),
            "one_hot(argmax)",
            one_hot_argmax,
            {"fwd": ""},
        ),
        Case(
            "softmax",
            tempered(jaxrelax.softmax),
            "nn.softmax(x/t)",
            nn_softmax,
            {"fwd": ">=0.91x", "fwd+bwd": ">=0.91x"},
        ),
        Case(
            "smooth_max",
            tempered(jaxrelax.smooth_max),
            "t*logsumexp(x/t)",
            nn_smooth_max,
            {"fwd": ">=0.91x", "fwd+bwd": ">=0.91x"},
        ),
        Case(
            "st_hardmax",
            tempered(jaxrelax.st_hardmax),
            "nn.softmax(x/t)",
            nn_softmax,
            {"fwd+bwd": ">=0.83x"},
        ),
        Case(
            "st_hardmax identity",
            tempered(jaxrelax.st_hardmax, backward="identity"),
            "nn.softmax(x/t)",
            nn_softmax,
            {"fwd+bwd": ""},
        ),
        Case(
            "soft_argmax",
            tempered(jaxrelax.soft_argmax),
            "softmax @ arange",
            lambda x: nn_softmax(x) @ jnp.arange(n, dtype=x.dtype),
            both,
        ),
        Case(
            "st_argmax",
            tempered(jaxrelax.st_argmax),
            "argmax",
            lambda x: jnp.argmax(x, -1).astype(x.dtype),
            {"fwd": ""},
        ),
        Case(
            "st_max", tempered(jaxrelax.st_max), "t*logsumexp(x/t)", nn_smooth_max, {"fwd+bwd": ""}
        ),
        Case(
            "softmax masked",
            tempered(jaxrelax.softmax, where=mask),
            "nn.softmax(x/t, where)",
            lambda x: jax.nn.softmax(x / T, where=mask),
            both,
        ),
    ]


if __name__ == "__main__":
    run(
        __doc__,
        cases,
        shapes=[(4096, 1024), (256, 32768), (64, 131072)],
        quick_shapes=[(64, 128), (8, 1024)],
    )
