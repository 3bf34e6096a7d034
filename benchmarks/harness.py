"""Timing and table plumbing shared by the benchmark scripts.

Each row times an operation and its baseline in the same process, alternating calls so that
drift in the machine's speed hits both alike, and reports medians and their ratio.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import numpy as np


@dataclass
class Case:
    """An operation and its baseline; ``targets`` maps each mode to time ("fwd", "fwd+bwd")
    to the speedup to reach ("" for none).

    With ``key=True`` both functions take ``(x, key)``, the key a traced argument. A ``peer``
    baseline is not JAX: ``baseline(mode, x, cotangent)``, given NumPy arrays, returns a
    callable that runs that mode once.
    """

    op: str
    ours: Callable
    baseline_name: str
    baseline: Callable
    targets: dict[str, str]
    key: bool = False
    peer: bool = False


@dataclass
class Row:
    op: str
    shape: tuple[int, ...]
    dtype: str
    mode: str  # "fwd" or "fwd+bwd"
    ms: float
    baseline: str
    baseline_ms: float
    speedup: float  # baseline time over ours, the median over alternating pairs
    residuals: str
    target: str = ""


def run(description: str, cases: Callable, shapes: list, quick_shapes: list) -> None:
    """Times every case at every float32 shape and prints the table.

    ``cases(n, mask)`` gives the cases for slices of length ``n``, with a random mask of the
    input's shape for the masked rows.
    """
    args = parse_args(description)
    print(header())
    rows = []
    for shape in quick_shapes if args.quick else shapes:
        key_x, key_g, key_m, key = jax.random.split(jax.random.key(0), 4)
        x = jax.random.normal(key_x, shape, jax.numpy.float32)
        mask = jax.random.bernoulli(key_m, 0.9, shape)
        for case in cases(shape[-1], mask):
            extra = (key,) if case.key else ()
            out = jax.eval_shape(case.ours, x, *extra)
            cotangent = jax.random.normal(key_g, out.shape, out.dtype)
            for mode, target in case.targets.items():
                ours = timed(case.ours, mode, x, cotangent, extra)
                if case.peer:
                    baseline = case.baseline(mode, np.asarray(x), np.asarray(cotangent))
                else:
                    baseline = timed(case.baseline, mode, x, cotangent, extra)
                ours_kept = input_sized_residuals(case.ours, x, extra)
                theirs_kept = "-" if case.peer else input_sized_residuals(case.baseline, x, extra)
                residuals = f"{ours_kept} vs {theirs_kept}"
                rows.append(
                    measure(
                        case.op,
                        shape,
                        mode,
                        ours,
                        case.baseline_name,
                        baseline,
                        args,
                        residuals,
                        target,
                    )
                )
                print(f"  measured {case.op} {mode} {shape}", flush=True)
    print()
    print_table(rows, args.markdown)


def measure(
    op: str,
    shape: tuple[int, ...],
    mode: str,
    ours: Callable,
    baseline_name: str,
    baseline: Callable,
    args: argparse.Namespace,
    residuals: str = "-",
    target: str = "",
) -> Row:
    """A float32 row: ``ours`` and ``baseline``, zero-argument callables that each run
    ``mode`` once, timed by :func:`alternate` with the command line's repeats and budget."""
    ms, baseline_ms, speedup = alternate(ours, baseline, (), args.repeats, args.budget)
    return Row(
        op, shape, "float32", mode, ms, baseline_name, baseline_ms, speedup, residuals, target
    )


def normal(shape: tuple[int, ...], seed: int) -> jax.Array:
    """Standard normal float32 entries, drawn by NumPy: nothing to compile."""
    return jax.numpy.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32))


def timed(fn: Callable, mode: str, x, cotangent, extra: tuple) -> Callable:
    """A zero-argument callable running ``mode`` of ``fn`` once, compiled."""
    if mode == "fwd":
        compiled = forward(fn)
        return lambda: compiled(x, *extra)
    compiled = forward_backward(fn)
    return lambda: compiled(x, cotangent, *extra)


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny shapes and few repeats (a smoke run)"
    )
    parser.add_argument(
        "--repeats", type=int, default=50, help="timed calls of each function per row"
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=30.0,
        help="seconds per row after which timing stops (at least 10 pairs are timed)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    return args


def alternate(
    fn: Callable, baseline: Callable, args: tuple, repeats: int, budget: float = float("inf")
):
    """(our median ms, baseline median ms, median of the per-pair speedups).

    The two are called in alternating pairs, and each pair gives a speedup: its median is
    less sensitive than a ratio of medians to the machine's speed drifting during the run.
    Timing stops after ``repeats`` pairs, or after ``budget`` seconds once 10 pairs are in.
    """
    for f in (fn, baseline):  # compile and warm up
        for _ in range(3):
            jax.block_until_ready(f(*args))
    ours, theirs = [], []
    deadline = time.perf_counter() + budget
    for i in range(repeats):
        if i >= 10 and time.perf_counter() > deadline:
            break
        for f, times in ((fn, ours), (baseline, theirs)):
            start = time.perf_counter()
            jax.block_until_ready(f(*args))
            times.append(1e3 * (time.perf_counter() - start))
    speedups = [b / a for a, b in zip(ours, theirs, strict=True)]
    return statistics.median(ours), statistics.median(theirs), statistics.median(speedups)


def torch_peer(fn: Callable) -> Callable:
    """A ``peer`` baseline from a PyTorch function of one tensor (see :class:`Case`)."""

    def prepare(mode, x, cotangent):
        import torch

        scores = torch.tensor(x, requires_grad=mode == "fwd+bwd")
        grad_output = torch.tensor(cotangent)

        def once():
            out = fn(scores)
            if mode == "fwd":
                return out
            return out, torch.autograd.grad(out, scores, grad_output)[0]

        return once

    return prepare


def forward(fn: Callable) -> Callable:
    return jax.jit(fn)


def forward_backward(fn: Callable) -> Callable:
    """Value and input cotangent for a given output cotangent, in one compiled call; further
    arguments (a key) are passed through undifferentiated."""

    def run(x, cotangent, *extra):
        value, vjp = jax.vjp(lambda x: fn(x, *extra), x)
        return value, vjp(cotangent)[0]

    return jax.jit(run)


def input_sized_residuals(fn: Callable, x, extra: tuple = ()) -> int:
    """Arrays of ``x``'s size that the backward pass of ``fn(x, *extra)`` keeps, counted from
    shapes alone: nothing is run."""
    vjp = jax.eval_shape(lambda x: jax.vjp(lambda x: fn(x, *extra), x)[1], x)
    return sum(int(math.prod(leaf.shape) >= np.size(x)) for leaf in jax.tree_util.tree_leaves(vjp))


def header() -> str:
    device = jax.devices()[0]
    return (
        f"jax {jax.__version__}, backend {jax.default_backend()} ({device.device_kind}), "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}"
    )


def print_table(rows: list[Row], markdown: bool) -> None:
    columns = [
        "op",
        "shape",
        "dtype",
        "mode",
        "ms",
        "baseline",
        "baseline ms",
        "speedup",
        "target",
        "residuals",
    ]
    cells = [
        [
            r.op,
            "x".join(map(str, r.shape)),
            r.dtype,
            r.mode,
            f"{r.ms:.2f}",
            r.baseline,
            f"{r.baseline_ms:.2f}",
            f"{r.speedup:.2f}x",
            r.target,
            r.residuals,
        ]
        for r in rows
    ]
    print_cells(columns, cells, markdown)


def print_cells(columns: list[str], cells: list[list[str]], markdown: bool) -> None:
    """A table of strings, as Markdown or aligned plain text."""
    if markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for c in cells:
            print("| " + " | ".join(c) + " |")
        return
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(columns)]
    print("  ".join(h.ljust(w) for h, w in zip(columns, widths, strict=True)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
