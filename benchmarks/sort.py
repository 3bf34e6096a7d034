"""Benchmarks of the orders against ``jnp.sort`` of the same array, the physical reference.

    python benchmarks/sort.py [--quick] [--repeats N] [--budget S] [--markdown]

Columns as in benchmarks/core.py ("speedup" is the baseline's time over ours: 0.4 means 2.5
times the baseline's); every row is float32 at temperature 1. Inputs: "fair" is N(0, 1) * n / 4,
where both operators pool a fair share of entries (at N(0, 1) soft_rank collapses to the mean
rank and soft_sort is the hard sort); "adversarial" is one outlier below a cluster spaced just
under the temperature, where merging adjacent violators takes one round per entry. The
forward+backward baseline is ``jnp.sort``'s own. The last rows time soft_rank at n = 1e6
against n = 1e5 (batch 1): n log n growth is a ratio of about 12. The peer, SoftJAX's
``fast_soft_sort`` method, needs Python >= 3.12: ``benchmarks/sort_softjax.py`` times it
against ``jnp.sort`` in its own environment, and the README puts the two ratios side by side.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from harness import measure, parse_args, print_table, timed

import jaxrelax

SHAPES = [(256, 1024), (16, 16384), (1, 100000)]
QUICK_SHAPES = [(4, 64)]
TARGETS = {"fwd": ">= 0.4", "fwd+bwd": ">= 0.33"}  # within 2.5x / 3x of jnp.sort
ADVERSARIAL_TARGETS = {"fwd": ">= 0.2", "fwd+bwd": ">= 0.17"}  # within 5x / 6x


def fair(shape):
    rng = np.random.default_rng(0)
    return jnp.asarray(rng.standard_normal(shape) * shape[-1] / 4, jnp.float32)


def adversarial(shape):
    n = shape[-1]
    row = np.arange(n) * 0.9
    row[0] = -10.0 * n * n
    return jnp.asarray(np.broadcast_to(row, shape), jnp.float32)


def sort(x):
    return jnp.sort(x, axis=-1)


def main():
    args = parse_args(__doc__.splitlines()[0])
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
        for name, make, targets in (
            ("fair", fair, TARGETS),
            ("adversarial", adversarial, ADVERSARIAL_TARGETS),
        ):
            x = make(shape)
            for op in ("soft_rank", "soft_sort"):
                fn = functools.partial(getattr(jaxrelax, op), temperature=1.0)
                for mode, target in targets.items():
                    ours, theirs = (timed(f, mode, x, cotangent, ()) for f in (fn, sort))
                    rows.append(
                        measure(
                            f"{op} {name}",
                            shape,
                            mode,
                            ours,
                            "jnp.sort",
                            theirs,
                            args,
                            target=target,
                        )
                    )
                    print(f"  measured {op} {name} {mode} {shape}", flush=True)
        x = fair(shape)
        for op, hard, hard_name in (
            ("st_sort", sort, "jnp.sort"),
            ("st_rank", jaxrelax.rank, "rank"),
        ):
            ours = timed(getattr(jaxrelax, op), "fwd", x, cotangent, ())
            theirs = timed(hard, "fwd", x, cotangent, ())
            rows.append(measure(op, shape, "fwd", ours, hard_name, theirs, args, target=">= 0.83"))
            print(f"  measured {op} {shape}", flush=True)
    if not args.quick:
        small, large = (1, 100000), (1, 1000000)
        ours = timed(jaxrelax.soft_rank, "fwd", fair(large), None, ())
        theirs = timed(jaxrelax.soft_rank, "fwd", fair(small), None, ())
        rows.append(
            measure(
                "soft_rank n=1e6",
                large,
                "fwd",
                ours,
                "soft_rank n=1e5",
                theirs,
                args,
                target=">= 1/15",
            )
        )
    print()
    print_table(rows, args.markdown)


if __name__ == "__main__":
    main()
