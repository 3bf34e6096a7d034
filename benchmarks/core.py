"""Benchmarks of the deterministic relaxations (hard, soft, straight-through) against the
hand-written jax.nn code a researcher would otherwise use, on this machine's default backend.

    python benchmarks/core.py [--quick] [--repeats N] [--markdown]

"speedup" is baseline time over ours (above 1: we are faster); "target" restates the goal as
the speedup to reach. "residuals" counts the input-sized arrays kept for the backward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from harness import (
    Row,
    alternate,
    forward,
    forward_backward,
    header,
    input_sized_residuals,
    parse_args,
    print_table,
)

import jaxrelax

T = 0.5


def cases(n: int):
    """(op, ours, baseline name, baseline, modes, {mode: target})."""
    return [
        ("hardmax", jaxrelax.hardmax, "one_hot(argmax)", lambda x: jax.nn.one_hot(jnp.argmax(x, -1), n, dtype=x.dtype), ["fwd"], {"fwd": ">=1.5x"}),
        ("hardmax", jaxrelax.hardmax, "copy", lambda x: x * 1.0, ["fwd"], {"fwd": ">=0.4x"}),
        ("hardmax uniform", lambda x: jaxrelax.hardmax(x, ties="uniform"), "one_hot(argmax)", lambda x: jax.nn.one_hot(jnp.argmax(x, -1), n, dtype=x.dtype), ["fwd"], {}),
        ("softmax", lambda x: jaxrelax.softmax(x, temperature=T), "nn.softmax(x/t)", lambda x: jax.nn.softmax(x / T), ["fwd", "fwd+bwd"], {"fwd": ">=0.91x", "fwd+bwd": ">=0.91x"}),
        ("smooth_max", lambda x: jaxrelax.smooth_max(x, temperature=T), "t*logsumexp(x/t)", lambda x: T * jax.nn.logsumexp(x / T, -1), ["fwd", "fwd+bwd"], {"fwd": ">=0.91x", "fwd+bwd": ">=0.91x"}),
        ("st_hardmax", lambda x: jaxrelax.st_hardmax(x, temperature=T), "nn.softmax(x/t)", lambda x: jax.nn.softmax(x / T), ["fwd+bwd"], {"fwd+bwd": ">=0.83x"}),
        ("st_hardmax identity", lambda x: jaxrelax.st_hardmax(x, backward="identity"), "nn.softmax(x/t)", lambda x: jax.nn.softmax(x / T), ["fwd+bwd"], {}),
        ("soft_argmax", lambda x: jaxrelax.soft_argmax(x, temperature=T), "softmax @ arange", lambda x: jax.nn.softmax(x / T) @ jnp.arange(n, dtype=x.dtype), ["fwd", "fwd+bwd"], {}),
        ("st_argmax", lambda x: jaxrelax.st_argmax(x, temperature=T), "argmax", lambda x: jnp.argmax(x, -1).astype(x.dtype), ["fwd"], {}),
        ("st_max", lambda x: jaxrelax.st_max(x, temperature=T), "t*logsumexp(x/t)", lambda x: T * jax.nn.logsumexp(x / T, -1), ["fwd+bwd"], {}),
        ("softmax masked", None, "nn.softmax(x/t, where)", None, ["fwd", "fwd+bwd"], {}),
    ]


def main() -> None:
    args = parse_args(__doc__)
    shapes = [(64, 128), (8, 1024)] if args.quick else [(4096, 1024), (256, 32768), (64, 131072)]
    print(header())
    rows = []
    for shape in shapes:
        key_x, key_g, key_m = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(key_x, shape, jnp.float32)
        mask = jax.random.bernoulli(key_m, 0.9, shape)
        for op, ours, base_name, base, modes, targets in cases(shape[-1]):
            if ours is None:  # the masked softmax closes over the mask
                ours = lambda x: jaxrelax.softmax(x, temperature=T, where=mask)  # noqa: E731
                base = lambda x: jax.nn.softmax(x / T, where=mask)  # noqa: E731
            for mode in modes:
                if mode == "fwd":
                    timed = alternate(forward(ours), forward(base), (x,), args.repeats)
                else:
                    cot = jax.random.normal(key_g, jax.eval_shape(ours, x).shape, jnp.float32)
                    timed = alternate(forward_backward(ours), forward_backward(base), (x, cot), args.repeats)
                residuals = f"{input_sized_residuals(ours, x)} vs {input_sized_residuals(base, x)}"
                rows.append(Row(op, shape, "float32", mode, timed[0], base_name, timed[1], residuals, targets.get(mode, "")))
                print(f"  measured {op} {mode} {shape}", flush=True)
    print()
    print_table(rows, args.markdown)


if __name__ == "__main__":
    main()
