"""Benchmarks of the pooling functions against what a researcher would otherwise write:
``lax.reduce_window`` (XLA's own max- and average-pool, differentiated by ``jax.vjp``), the
direct exp-weighted formulation of the soft pools, and PyTorch's channels-last ``max_pool2d``
and ``max_unpool2d`` when torch is installed.

    python benchmarks/pooling.py [--quick] [--repeats N] [--budget S] [--markdown]

Columns as in benchmarks/core.py; every row is float32 NHWC (channels-last), at temperature 1
for the soft pools, with two windows: "2x2/2" (2x2, stride 2, ``"VALID"``) and "3x3/2 p1"
(3x3, stride 2, one position of padding on each side: overlapping windows). "fwd+bwd" is the
value and the vector-Jacobian product for a random cotangent, in one compiled call. The
baselines:

- ``reduce_window max``: ``lax.reduce_window(x, -inf, lax.max, ...)``, the max-pool of
  ``flax.linen.max_pool``; its backward pass is XLA's select-and-scatter. The
  ``return_indices=True`` rows time it too, though it gives no indices: the cost of the
  indices over the bare max-pool.
- ``vjp(reduce_window) unpool``: max-unpooling by the VJP of that max-pool, the pooled values
  as the cotangent (it needs the input that was pooled, and is compiled with its forward
  pass). With overlapping windows that share a maximum it puts their sum there, where
  ``max_unpool`` (like PyTorch) puts the value once; the two agree otherwise.
- ``avg_pool``: ``lax.reduce_window`` add over the window size, the cheapest pooling there is:
  the cost of a soft pool over the plainest smooth one. It computes another function, so it is
  not checked against ours.
- ``direct soft_pool`` and ``direct lse_pool``: ``avg_pool(x e) / avg_pool(e)`` and
  ``M + t log(sum_pool(e))`` with ``e = exp((x - M) / t)``, differentiated by autodiff, where
  the shift ``M`` is the maximum over the spatial dimensions of each (batch, feature) plane,
  behind ``stop_gradient`` as in ``jax.nn.logsumexp``: what a user would write. (A per-window
  maximum would need a reduce_window max broadcast back over each window, which is not
  expressible for overlapping windows without building the patches.) The global shift
  underflows for windows far below their plane's maximum; at these random-normal inputs it
  does not.
- ``torch max_pool2d`` and ``torch max_unpool2d``: ``torch.nn.functional`` on a channels-last
  tensor (``torch.from_numpy(x).permute(0, 3, 1, 2)``, an NCHW view of the NHWC storage), at
  ``torch.set_num_threads(2)``; the unpool rows take torch's own values and indices. These
  rows are left out when torch is not installed.

Before timing, the script checks at 4x16x15x8 that ours and each JAX baseline except
``avg_pool`` (and torch, when installed) agree, values and VJPs, to 1e-4 (the unpool trick's
values against ours times the number of windows that chose each position).

The full run times 48 rows (36 without torch) at 64x64x64x64 and 16x224x224x32. On 2 CPU
cores it should take about 15 minutes, an estimate scaled from the quick run (about 30
seconds): many 3x3 rows at 16x224x224x32 stop at the 30-second budget.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from harness import (
    forward,
    forward_backward,
    header,
    input_sized_residuals,
    measure,
    normal,
    parse_args,
    print_table,
)
from jax import lax

import jaxrelax

try:  # an optional peer
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(2)
except ImportError:
    torch = None

SHAPES = [(64, 64, 64, 64), (16, 224, 224, 32)]
QUICK_SHAPES = [(8, 32, 32, 16)]
CHECK_SHAPE = (4, 16, 15, 8)
T = 1.0  # the temperature of the soft pools


@dataclass(frozen=True)
class Window:
    label: str
    shape: tuple[int, int]
    strides: tuple[int, int]
    padding: str | tuple[tuple[int, int], ...]

    @property
    def torch_padding(self) -> tuple[int, int]:
        return (0, 0) if self.padding == "VALID" else tuple(lo for lo, _ in self.padding)


WINDOWS = [
    Window("2x2/2", (2, 2), (2, 2), "VALID"),
    Window("3x3/2 p1", (3, 3), (2, 2), ((1, 1), (1, 1))),
]
ROWS = [  # (ours, mode, baseline, target speedup), for every shape and window
    ("max_pool", "fwd", "reduce_window max", ">=0.91x"),  # within 1.1x
    ("max_pool", "fwd+bwd", "reduce_window max", ">=3x"),
    ("max_pool", "fwd+bwd", "torch max_pool2d", ">=1x"),
    ("max_pool indices", "fwd", "reduce_window max", ">=0.25x"),  # within 4x
    ("max_pool indices", "fwd", "torch max_pool2d", ">=1x"),
    ("max_unpool", "fwd", "vjp(reduce_window) unpool", ">=3x"),
    ("max_unpool", "fwd", "torch max_unpool2d", ">=1x"),
    ("soft_pool", "fwd+bwd", "avg_pool", ">=0.33x"),  # within 3x
    ("soft_pool", "fwd+bwd", "direct soft_pool", ">=1.5x"),
    ("lse_pool", "fwd+bwd", "avg_pool", ">=0.33x"),
    ("lse_pool", "fwd+bwd", "direct lse_pool", ">=1.5x"),
    ("st_max_pool", "fwd+bwd", "soft_pool", ">=0.77x"),  # within 1.3x
]


def _reduce_window(x, init, op, w: Window):
    padding = w.padding if isinstance(w.padding, str) else ((0, 0), *w.padding, (0, 0))
    init = np.asarray(init, x.dtype)  # concrete: lax picks the monoid, and its VJP
    return lax.reduce_window(x, init, op, (1, *w.shape, 1), (1, *w.strides, 1), padding)


def reduce_window_max(x, w: Window):
    return _reduce_window(x, -jnp.inf, lax.max, w)


def avg_pool(x, w: Window):
    """The mean over each window, padding counted as zeros."""
    return _reduce_window(x, 0.0, lax.add, w) / math.prod(w.shape)


def vjp_unpool(x, values, w: Window):
    """Max-unpooling by the VJP of the max-pool: ``values`` sent back to each window's
    maximum in ``x`` (summed where windows share it)."""
    _, vjp = jax.vjp(functools.partial(reduce_window_max, w=w), x)
    return vjp(values)[0]


def _exp_shifted(x, t):
    """``exp((x - M) / t)``, M the maximum over each (batch, feature) plane, and M."""
    top = lax.stop_gradient(jnp.max(x, axis=(-3, -2), keepdims=True))
    return jnp.exp((x - top) / t), top


def direct_soft_pool(x, w: Window, t=T):
    e, _ = _exp_shifted(x, t)
    return avg_pool(x * e, w) / avg_pool(e, w)


def direct_lse_pool(x, w: Window, t=T):
    e, top = _exp_shifted(x, t)
    return top + t * jnp.log(_reduce_window(e, 0.0, lax.add, w))


def ours(name: str, w: Window, **options) -> Callable:
    fn = getattr(jaxrelax, name)
    return lambda x: fn(x, w.shape, w.strides, w.padding, **options)


def soft(name: str, w: Window) -> Callable:
    return ours(name, w, temperature=T)


def ours_unpool(spatial) -> Callable:
    return jax.jit(
        lambda values, indices: jaxrelax.max_unpool(values, indices, spatial_shape=spatial)
    )


def torch_input(x: np.ndarray, requires_grad: bool = False):
    """An NCHW view of NHWC storage: a channels-last tensor."""
    t = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2)
    return t.requires_grad_() if requires_grad else t


def torch_calls(x: np.ndarray, cotangent: np.ndarray, w: Window) -> dict[str, Callable]:
    """Zero-argument callables: torch's max-pool forward+backward, its max-pool with indices,
    and its max-unpool of its own values and indices."""
    options = dict(kernel_size=w.shape, stride=w.strides, padding=w.torch_padding)
    leaf, grad_output = torch_input(x, True), torch_input(cotangent)
    plain = torch_input(x)
    with torch.no_grad():
        values, indices = F.max_pool2d(plain, return_indices=True, **options)
    spatial = x.shape[1:3]

    def fwd_bwd():
        out = F.max_pool2d(leaf, **options)
        return out, torch.autograd.grad(out, leaf, grad_output)[0]

    def with_indices():
        with torch.no_grad():
            return F.max_pool2d(plain, return_indices=True, **options)

    def unpool():
        with torch.no_grad():
            return F.max_unpool2d(values, indices, output_size=spatial, **options)

    return {"fwd+bwd": fwd_bwd, "indices": with_indices, "unpool": unpool}


def nhwc(t) -> np.ndarray:
    """A channels-last torch tensor's NHWC storage as a NumPy array."""
    return t.detach().permute(0, 2, 3, 1).numpy()


def contenders(x: jax.Array, cotangent: jax.Array, w: Window) -> dict:
    """``(name, mode)``: (a zero-argument callable running it once, compiled; the JAX
    function of ``x`` it differentiates, or None) for ours and every baseline, at one input
    and window. ``cotangent`` has the pooled shape."""

    def fwd(fn):
        compiled = forward(fn)
        return lambda: compiled(x)

    def fwd_bwd(fn):
        compiled = forward_backward(fn)
        return (lambda: compiled(x, cotangent)), fn

    max_pool = ours("max_pool", w)
    rw = functools.partial(reduce_window_max, w=w)
    with_indices = fwd(ours("max_pool", w, return_indices=True))
    values, indices = with_indices()
    unpool, trick = ours_unpool(x.shape[1:3]), jax.jit(functools.partial(vjp_unpool, w=w))
    calls = {
        ("max_pool", "fwd"): (fwd(max_pool), None),
        ("max_pool", "fwd+bwd"): fwd_bwd(max_pool),
        ("max_pool indices", "fwd"): (with_indices, None),
        ("max_unpool", "fwd"): (lambda: unpool(values, indices), None),
        ("reduce_window max", "fwd"): (fwd(rw), None),
        ("reduce_window max", "fwd+bwd"): fwd_bwd(rw),
        ("vjp(reduce_window) unpool", "fwd"): (lambda: trick(x, values), None),
        ("avg_pool", "fwd+bwd"): fwd_bwd(functools.partial(avg_pool, w=w)),
        ("direct soft_pool", "fwd+bwd"): fwd_bwd(functools.partial(direct_soft_pool, w=w)),
        ("direct lse_pool", "fwd+bwd"): fwd_bwd(functools.partial(direct_lse_pool, w=w)),
    }
    for name in ("soft_pool", "lse_pool", "st_max_pool"):
        calls[name, "fwd+bwd"] = fwd_bwd(soft(name, w))
    if torch:
        peer = torch_calls(np.asarray(x), np.asarray(cotangent), w)
        calls["torch max_pool2d", "fwd+bwd"] = (peer["fwd+bwd"], None)
        calls["torch max_pool2d", "fwd"] = (peer["indices"], None)
        calls["torch max_unpool2d", "fwd"] = (peer["unpool"], None)
    return calls


@functools.partial(jax.jit, static_argnums=0)
def check_outputs(w: Window, x, cotangent, unpooled_cotangent) -> dict:
    """Values and VJPs of ours and the JAX baselines, in one compiled call (one program
    compiles much faster than many)."""

    def value_and_vjp(fn, primal=x, cotangent=cotangent):
        value, vjp = jax.vjp(fn, primal)
        return value, vjp(cotangent)[0]

    values, indices = jaxrelax.max_pool(x, w.shape, w.strides, w.padding, return_indices=True)
    out = {
        "max_pool": value_and_vjp(ours("max_pool", w)),
        "reduce_window": value_and_vjp(functools.partial(reduce_window_max, w=w)),
        "indices": (values, indices),
        # how many windows chose each position: the trick's multiplicity
        "chosen": vjp_unpool(x, jnp.ones_like(values), w),
    }
    for name, fn in [
        ("max_unpool", lambda v: jaxrelax.max_unpool(v, indices, spatial_shape=x.shape[1:3])),
        ("vjp unpool", lambda v: vjp_unpool(x, v, w)),
    ]:
        out[name] = value_and_vjp(fn, values, unpooled_cotangent)
    for name in ("soft_pool", "lse_pool", "st_max_pool"):
        out[name] = value_and_vjp(soft(name, w))
    out["direct soft_pool"] = value_and_vjp(functools.partial(direct_soft_pool, w=w))
    out["direct lse_pool"] = value_and_vjp(functools.partial(direct_lse_pool, w=w))
    return out


def check_baselines() -> None:
    """Every JAX baseline written here, and torch when installed, computes what ours does:
    values and VJPs to 1e-4."""
    x = normal(CHECK_SHAPE, seed=1)
    spatial = CHECK_SHAPE[1:3]

    def close(label, ours, theirs, values=True):
        (a, da), (b, db) = ours, theirs
        if values:
            np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4, err_msg=f"{label}: values")
        np.testing.assert_allclose(da, db, atol=1e-4, rtol=1e-4, err_msg=f"{label}: VJP")

    for w in WINDOWS:
        pooled = jax.eval_shape(ours("max_pool", w), x)
        cotangent = normal(pooled.shape, seed=2)
        out = check_outputs(w, x, cotangent, normal(x.shape, seed=3))
        value, dx = out["max_pool"]
        values, indices = out["indices"]
        close(f"max_pool {w.label} vs reduce_window", out["max_pool"], out["reduce_window"])
        np.testing.assert_array_equal(values, value, f"max_pool indices {w.label}: values")
        plane = np.asarray(x).reshape(x.shape[0], -1, x.shape[-1])
        at = np.take_along_axis(plane, np.asarray(indices).reshape(x.shape[0], -1, x.shape[-1]), 1)
        np.testing.assert_array_equal(
            at.reshape(values.shape), values, f"max_pool indices {w.label}: x at indices"
        )
        # The unpool trick sums the values of windows that share a maximum: ours times the
        # number of windows that chose each position. Its VJP is ours.
        unpooled, d_values = out["max_unpool"]
        close(
            f"max_unpool {w.label} vs vjp(reduce_window)",
            (unpooled * out["chosen"], d_values),
            out["vjp unpool"],
        )
        for name in ("soft_pool", "lse_pool"):
            close(f"{name} {w.label} vs direct", out[name], out[f"direct {name}"])
        np.testing.assert_array_equal(
            out["st_max_pool"][0], value, f"st_max_pool {w.label}: values"
        )
        close(f"st_max_pool {w.label} vs soft_pool", out["st_max_pool"], out["soft_pool"], False)

        if torch:
            options = dict(kernel_size=w.shape, stride=w.strides, padding=w.torch_padding)
            leaf = torch_input(np.asarray(x), True)
            t_values, t_indices = F.max_pool2d(leaf, return_indices=True, **options)
            (t_dx,) = torch.autograd.grad(t_values, leaf, torch_input(np.asarray(cotangent)))
            t_unpooled = F.max_unpool2d(
                t_values.detach(), t_indices, output_size=spatial, **options
            )
            close(f"max_pool {w.label} vs torch", (value, dx), (nhwc(t_values), nhwc(t_dx)))
            np.testing.assert_array_equal(
                indices, nhwc(t_indices), f"max_pool {w.label} vs torch: indices"
            )
            np.testing.assert_allclose(
                unpooled, nhwc(t_unpooled), atol=1e-4, err_msg=f"max_unpool {w.label} vs torch"
            )
    shape = "x".join(map(str, CHECK_SHAPE))
    peers = " and torch" if torch else ""
    print(f"baselines{peers} agree with ours at {shape}: values and VJPs to 1e-4")


def main() -> None:
    args = parse_args(__doc__)
    check_baselines()
    print(header())
    if torch is None:
        print("  no torch rows: torch is not installed")
    rows = []
    for shape in QUICK_SHAPES if args.quick else SHAPES:
        x = normal(shape, seed=0)
        for w in WINDOWS:
            pooled = jax.eval_shape(ours("max_pool", w), x)
            cotangent = normal(pooled.shape, seed=1)
            calls = contenders(x, cotangent, w)
            for op, mode, baseline, target in ROWS:
                if (baseline, mode) not in calls:  # a torch row without torch
                    continue
                ours_call, ours_fn = calls[op, mode]
                baseline_call, baseline_fn = calls[baseline, mode]
                residuals = "-"
                if mode == "fwd+bwd":
                    theirs = "-" if baseline_fn is None else input_sized_residuals(baseline_fn, x)
                    residuals = f"{input_sized_residuals(ours_fn, x)} vs {theirs}"
                label = f"{op} {w.label}"
                rows.append(
                    measure(
                        label,
                        shape,
                        mode,
                        ours_call,
                        baseline,
                        baseline_call,
                        args,
                        residuals,
                        target,
                    )
                )
                print(f"  measured {label} {mode} vs {baseline} {shape}", flush=True)
    print()
    print_table(rows, args.markdown)


if __name__ == "__main__":
    main()
