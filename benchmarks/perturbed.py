"""Benchmarks of the perturbed argmax against the cost of its noise and against optax.

    python benchmarks/perturbed.py [--quick] [--repeats N] [--budget S] [--markdown]

Columns as in benchmarks/core.py; every row is float32 with Gumbel noise at sigma = 1.

- "noise draw": ``jax.random.gumbel`` of ``num_samples * size(x)`` numbers, drawn once. Any
  implementation draws the noise at least once; one that keeps no sample-sized array draws it
  twice (forward, and again in the backward pass). Its speedup column is the draw's time over
  ours: at least 0.4x means within 2.5 times the cost of one draw.
- "optax": ``optax.perturbations.make_perturbed_fun`` over ``one_hot(argmax)`` with the same
  number of samples, vmapped over the rows with a key per row (independent noise per row,
  as ours), without its baseline (``use_baseline=False``, the estimator of ours).
- "optax, one key": the same vmapped with one key shared by all rows, as in optax's example:
  then every row sees the same noise, so it draws ``num_samples * n`` numbers, not
  ``num_samples * size(x)``; a cheaper but correlated estimate, shown for reference.
- "perturbed, vmapped": our general ``jaxrelax.perturbed`` over the same ``one_hot(argmax)``,
  vmapped over the rows with a key per row, against optax: the general path for a user's own
  solver.

Before timing, the script checks at 8x16 that optax, fed our noise, gives our values and
gradients. After the timings it prints the peak temporary memory of each compiled forward and
backward pass (XLA's memory analysis of the executable), ours with its default batching and
``perturbed`` with ``batch_size=10``, against optax's, which keeps every sample.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax.perturbations
from harness import Case, forward_backward, print_cells, run

import jaxrelax

SHAPES = [(64, 1024), (4096, 1024)]
QUICK_SHAPES = [(8, 64)]


def num_samples_for(rows: int) -> list[int]:
    return {64: [10, 100], 4096: [10]}.get(rows, [4])


def one_hot_argmax(y):
    return jax.nn.one_hot(jnp.argmax(y, -1), y.shape[-1], dtype=y.dtype)


def optax_rows(num_samples, shared_key=False):
    smoothed = optax.perturbations.make_perturbed_fun(
        one_hot_argmax, num_samples, 1.0, optax.perturbations.Gumbel(), use_baseline=False
    )

    def fn(x, key):
        if shared_key:
            return jax.vmap(smoothed, (None, 0))(key, x)
        return jax.vmap(smoothed)(jax.random.split(key, x.shape[0]), x)

    return fn


def ours_rows(num_samples, batch_size=None):
    smoothed = jaxrelax.perturbed(one_hot_argmax, num_samples=num_samples, batch_size=batch_size)
    return lambda x, key: jax.vmap(smoothed)(jax.random.split(key, x.shape[0]), x)


def noise_draw(num_samples):
    def prepare(mode, x, cotangent):
        del mode, cotangent
        draw = jax.jit(lambda key: jax.random.gumbel(key, (num_samples, *x.shape)))
        key = jax.random.key(1)
        return lambda: draw(key)

    return prepare


def cases(n: int, mask: jax.Array) -> list[Case]:
    del n
    rows = []
    for m in num_samples_for(mask.shape[0]):

        def ours(x, key, m=m):
            return jaxrelax.perturbed_argmax(key, x, num_samples=m)

        both = {"fwd": "", "fwd+bwd": ">=1.5x"}
        rows += [
            Case(
                f"perturbed_argmax M={m}",
                ours,
                "noise draw",
                noise_draw(m),
                {"fwd+bwd": ">=0.4x"},
                key=True,
                peer=True,
            ),  # fmt: skip
            Case(f"perturbed_argmax M={m}", ours, "optax", optax_rows(m), both, key=True),
            Case(
                f"perturbed_argmax M={m}",
                ours,
                "optax, one key",
                optax_rows(m, True),
                {"fwd+bwd": ""},
                key=True,
            ),  # fmt: skip
            Case(
                f"perturbed, vmapped M={m}",
                ours_rows(m),
                "optax",
                optax_rows(m),
                {"fwd+bwd": ""},
                key=True,
            ),  # fmt: skip
        ]
    return rows


def check_against_optax() -> None:
    """optax fed our noise (sample m of row r from fold_in(key_r, m)) gives our values and
    gradients for ``perturbed`` vmapped over rows."""
    x = jax.random.normal(jax.random.key(2), (8, 16))
    cotangent = jax.random.normal(jax.random.key(3), (8, 16))
    key, num_samples = jax.random.key(4), 6

    def optax_with_our_noise(x_row, row_key):
        their_keys = jax.vmap(lambda k: jax.random.key_data(jax.random.split(k, 1)[0]))(
            jax.random.split(row_key, num_samples)
        )

        class OurNoise(optax.perturbations.Gumbel):
            def sample(self, k, sample_shape=(), dtype=float):
                m = jnp.argmax(jnp.all(their_keys == jax.random.key_data(k), -1))
                u = jax.random.uniform(jax.random.fold_in(row_key, m), sample_shape, dtype)
                return -jnp.log(-jnp.log(u + 2.0**-24))  # ours: u on the grid's midpoints

        smoothed = optax.perturbations.make_perturbed_fun(
            one_hot_argmax, num_samples, 1.0, OurNoise(), use_baseline=False
        )
        return smoothed(row_key, x_row)

    def theirs(x, key):
        return jax.vmap(optax_with_our_noise)(x, jax.random.split(key, x.shape[0]))

    for name, fn in [("optax", theirs), ("perturbed, vmapped", ours_rows(num_samples))]:
        got = forward_backward(fn)(x, cotangent, key)
        want = forward_backward(ours_rows(num_samples, batch_size=4))(x, cotangent, key)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6, err_msg=name)
    print("checked: optax fed our noise gives our values and gradients")


def temp_mib(fn, x, key) -> float:
    compiled = forward_backward(fn).lower(x, jnp.ones_like(x), key).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def memory_table(shapes, markdown: bool) -> None:
    columns = ["shape", "M", "perturbed_argmax MiB", "perturbed(batch 10) MiB", "optax MiB"]
    lines = []
    for shape in shapes:
        x = jax.random.normal(jax.random.key(0), shape)
        for m in num_samples_for(shape[0]):
            ours = lambda x, key, m=m: jaxrelax.perturbed_argmax(key, x, num_samples=m)  # noqa: E731
            cells = [
                "x".join(map(str, shape)),
                str(m),
                f"{temp_mib(ours, x, jax.random.key(0)):.1f}",
                f"{temp_mib(ours_rows(m, batch_size=min(10, m)), x, jax.random.key(0)):.1f}",
                f"{temp_mib(optax_rows(m), x, jax.random.key(0)):.1f}",
            ]
            lines.append(cells)
    print("\npeak temporary memory of the compiled forward and backward pass")
    print_cells(columns, lines, markdown)


if __name__ == "__main__":
    check_against_optax()
    run(__doc__, cases, shapes=SHAPES, quick_shapes=QUICK_SHAPES)
    quick = "--quick" in sys.argv
    memory_table(QUICK_SHAPES if quick else SHAPES, "--markdown" in sys.argv)
