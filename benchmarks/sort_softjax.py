"""Times SoftJAX's permutahedron soft rank and soft sort (``method="fast_soft_sort"``, l2
projection ``mode="c0"``, Blondel et al., arXiv:2002.08871) against ``jnp.sort``, in one
process, on this machine's default backend.

SoftJAX needs Python >= 3.12, so this runs under its own virtual environment (see
tests/make_sort_peer.py for how to create it), not the project's:

    /work/softjax-venv/bin/python benchmarks/sort_softjax.py [--smoke] [--repeats N]
        [--budget S] [--json PATH]

Every row is float32 along the last axis, at shapes (256, 1024), (16, 16384), (1, 100000)
(``--smoke``: (4, 64), (1, 500)), on two inputs: ``N(0, 1)`` and ``N(0, 1) * n / 4`` (gaps
between neighbouring values near 1). Both are at the paper's eps = 1, that is SoftJAX's
``softness = n - 1`` for the rank and ``1 / (n - 1)`` for the sort (the mapping is in
tests/make_sort_peer.py); ``standardize=False``, ascending.

"fwd" times the jitted call; "fwd+bwd" the jitted ``jax.grad`` of ``sum(op(x) * g)`` for a
fixed random cotangent ``g``, so the backward pass of ``jnp.sort`` is timed likewise. Each
entry is the minimum over ``--repeats`` calls (``block_until_ready``) after compiling ahead of
time and one warm-up call; "x sort" is its ratio to ``jnp.sort`` in the same mode, at the same
shape and input, measured in the same run. SoftJAX's PAV runs a vmapped ``lax.while_loop``
whose merges select over the whole (rows, n) carry, so its rank, where many blocks merge, is
quadratic in n: an entry whose warm-up call takes over 2 s is timed with fewer repeats (the
count is shown), and one whose warm-up exceeds ``--cap`` seconds (default 20) is not repeated:
it shows as "> cap s", its warm-up time in the JSON. Once ``--budget`` seconds have passed
(default 170), the remaining entries are skipped and shown as "skipped".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import softjax

SHAPES = [(256, 1024), (16, 16384), (1, 100000)]
SMOKE_SHAPES = [(4, 64), (1, 500)]
INPUTS = {  # name: scale of N(0, 1) for a row of length n
    "N(0,1)": lambda n: 1.0,
    "N(0,1)*n/4": lambda n: n / 4.0,
}
EPS = 1.0  # the paper's temperature


def soft_rank(x):
    n = x.shape[-1]
    return softjax.rank(
        x,
        axis=-1,
        softness=EPS * max(n - 1, 1),
        mode="c0",
        method="fast_soft_sort",
        descending=False,
        standardize=False,
    )


def soft_sort(x):
    n = x.shape[-1]
    return softjax.sort(
        x,
        axis=-1,
        softness=EPS / max(n - 1, 1),
        mode="c0",
        method="fast_soft_sort",
        descending=False,
        standardize=False,
    )


OPS = {
    "jnp.sort": lambda x: jnp.sort(x, axis=-1),
    "softjax rank": soft_rank,
    "softjax sort": soft_sort,
}


def compiled(fn, mode, x, g):
    """The compiled callable of one mode, and its arguments."""
    if mode == "fwd":
        return jax.jit(fn).lower(x).compile(), (x,)
    grad = jax.jit(jax.grad(lambda a, c: jnp.sum(fn(a) * c)))
    return grad.lower(x, g).compile(), (x, g)


def call_s(fn, args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def time_entry(fn, mode, x, g, args, deadline):
    """{"ms", "repeats", "note"}: the minimum over the repeats after a warm-up call."""
    if time.perf_counter() > deadline:
        return {"ms": None, "repeats": 0, "note": "skipped"}
    run, operands = compiled(fn, mode, x, g)
    warm = call_s(run, operands)
    if warm > args.cap:
        return {"ms": 1e3 * warm, "repeats": 1, "note": f"> {args.cap:g} s (warm-up only)"}
    repeats = args.repeats if warm < 2.0 else max(1, min(args.repeats, int(6.0 / warm)))
    times = []
    for _ in range(repeats):
        if times and time.perf_counter() > deadline:
            break
        times.append(call_s(run, operands))
    note = "" if len(times) == args.repeats else f"{len(times)} repeat" + "s" * (len(times) > 1)
    return {"ms": 1e3 * min(times), "repeats": len(times), "note": note}


def fmt_ms(entry):
    if entry["ms"] is None:
        return "skipped"
    if entry["note"].startswith(">"):
        return f"> {entry['ms'] / 1e3:.0f} s"
    return f"{entry['ms']:.3g}" if entry["ms"] < 100 else f"{entry['ms']:.0f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per entry")
    parser.add_argument("--budget", type=float, default=170.0, help="seconds for the run")
    parser.add_argument("--cap", type=float, default=20.0, help="seconds for one call")
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    args = parser.parse_args()
    if args.smoke:
        args.repeats = 2
    deadline = time.perf_counter() + args.budget
    started = time.perf_counter()

    rows = []
    for shape in SMOKE_SHAPES if args.smoke else SHAPES:
        n = shape[-1]
        rng = np.random.default_rng(0)
        g = jnp.asarray(rng.standard_normal(shape, np.float32))
        for input_name, scale in INPUTS.items():
            x = jnp.asarray(rng.standard_normal(shape, np.float32) * np.float32(scale(n)))
            base = {}
            for op, fn in OPS.items():
                row = {"shape": list(shape), "input": input_name, "op": op}
                for mode in ("fwd", "fwd+bwd"):
                    entry = time_entry(fn, mode, x, g, args, deadline)
                    if op == "jnp.sort":
                        base[mode] = entry["ms"]
                    ok = entry["ms"] is not None and base[mode] is not None
                    entry["ratio"] = entry["ms"] / base[mode] if ok else None
                    row[mode] = entry
                rows.append(row)
                print(f"  measured {op} {shape} {input_name}", flush=True)

    lines = [
        "| shape | input | op | fwd ms | fwd x sort | fwd+bwd ms | fwd+bwd x sort | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for mode in ("fwd", "fwd+bwd"):
            entry = row[mode]
            ratio = "-" if entry["ratio"] is None else f"{entry['ratio']:.3g}"
            cells += [fmt_ms(entry), ratio]
        notes = "; ".join(
            f"{mode}: {row[mode]['note']}" for mode in ("fwd", "fwd+bwd") if row[mode]["note"]
        )
        shape = "x".join(map(str, row["shape"]))
        lines.append(
            f"| {shape} | {row['input']} | {row['op']} | " + " | ".join(cells) + f" | {notes} |"
        )
    total = time.perf_counter() - started
    device = jax.devices()[0]
    context = (
        f"jax {jax.__version__}, softjax {softjax.__version__}, {device.platform} "
        f"({device.device_kind}), {os.cpu_count()} CPUs, {platform.machine()}; "
        f"float32, eps = {EPS:g}; min over up to {args.repeats} calls; run took {total:.0f} s"
    )
    print()
    print(context)
    print()
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"context": context, "eps": EPS, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
