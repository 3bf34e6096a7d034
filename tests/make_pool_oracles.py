"""Writes ``tests/data/pool_oracles.npz``: PyTorch's max-pool and max-unpool, the oracle for
``tests/test_pool_torch.py``.

For 1-D, 2-D and 3-D pooling, several windows, strides, paddings (the symmetric paddings
PyTorch accepts, at most half the window) and dilations (``DILATED``: PyTorch's ``dilation``,
jaxrelax's ``window_dilation``, with a dilation larger than the window among them), and
kinds of input: normal draws (``random``), small integers in {0, 1, 2} that tie within most
windows (``ties``), and, in 2-D only, small integers mixed with NaN, +inf and -inf, with
windows of -inf alone (``nonfinite``), it runs
``torch.nn.functional.max_pool{1,2,3}d(return_indices=True)`` and ``max_unpool{1,2,3}d`` in
float64 and stores, under ``"{case}/{name}"``, channels-last (batch, *spatial, features):

    x            the input
    window, stride, padding, dilation
                 the pooling's arguments, padding as one (low, high) pair per spatial axis
    values, indices
                 max_pool's outputs (indices: int32, flat within each spatial plane)
    ct, grad     a random cotangent for ``values`` (multiples of 1/64) and the gradient of
                 sum(values * ct) wrt x
    unpooled     max_unpool(values, indices, output_size=x's spatial shape)
    ct2, unpool_grad
                 a random cotangent for ``unpooled`` (multiples of 1/64) and the gradient
                 of sum(unpooled * ct2) wrt values

Integer cases (``INTEGER``, named after their dtype: int8, uint8, int32, int64) hold the
dtype's extremes, which float32 (or, for int64, float64) cannot hold apart, many ties, and a
corner of the dtype's minimum alone; PyTorch pools integers on the CPU (keeping their dtype)
but does not unpool them, so that they store ``x``, the arguments, ``values`` and ``indices``
only.

Before writing, it checks PyTorch's indices against a brute-force reading of the convention
that ``jaxrelax.max_pool`` documents (the first maximum in the window's row-major order; the
last NaN if any; the first real entry if all are -inf), and that PyTorch's channels-last
kernel gives the same indices as its contiguous one; it stops with an error if either
differs. It prints, per case, how many windows hold a tied maximum.

Rerun it by hand (it needs PyTorch, which the test extra does not install) after changing
the cases:

    .venv/bin/python tests/make_pool_oracles.py
"""

import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

OUT = Path(__file__).parent / "data" / "pool_oracles.npz"
BATCH, FEATURES = 2, 3
SPATIAL = {1: (9,), 2: (7, 8), 3: (5, 5, 4)}
# (name, window, stride, symmetric padding) per dimension count.
SETTINGS = {
    1: [
        ("w2_s2", (2,), (2,), (0,)),
        ("w3_s2_p1", (3,), (2,), (1,)),
        ("w3_s1_p1", (3,), (1,), (1,)),
        ("w2_s3", (2,), (3,), (0,)),
    ],
    2: [
        ("w2_s2", (2, 2), (2, 2), (0, 0)),
        ("w3_s2_p1", (3, 3), (2, 2), (1, 1)),
        ("w3_s1_p1", (3, 3), (1, 1), (1, 1)),
        ("w23_s12_p10", (2, 3), (1, 2), (1, 0)),
        ("w2_s3", (2, 2), (3, 3), (0, 0)),
    ],
    3: [
        ("w2_s2", (2, 2, 2), (2, 2, 2), (0, 0, 0)),
        ("w3_s2_p1", (3, 3, 3), (2, 2, 2), (1, 1, 1)),
        ("w3_s1_p1", (3, 3, 3), (1, 1, 1), (1, 1, 1)),
        ("w322_s212_p110", (3, 2, 2), (2, 1, 2), (1, 1, 0)),
        ("w2_s3", (2, 2, 2), (3, 3, 3), (0, 0, 0)),
    ],
}
# (name, window, stride, symmetric padding, dilation) per dimension count: generated after
# SETTINGS, so that the cases of SETTINGS keep their draws.
DILATED = {
    1: [
        ("w2_s1_d3", (2,), (1,), (0,), (3,)),  # a dilation larger than the window
        ("w3_s2_p1_d2", (3,), (2,), (1,), (2,)),
    ],
    2: [
        ("w2_s1_d2", (2, 2), (1, 1), (0, 0), (2, 2)),
        ("w3_s2_p1_d2", (3, 3), (2, 2), (1, 1), (2, 2)),
        ("w23_s21_p11_d31", (2, 3), (2, 1), (1, 1), (3, 1)),
    ],
    3: [
        ("w2_s1_d2", (2, 2, 2), (1, 1, 1), (0, 0, 0), (2, 2, 2)),
        ("w332_s221_p111_d212", (3, 3, 2), (2, 2, 1), (1, 1, 1), (2, 1, 2)),
    ],
}
# (dimension count, setting name, dtype): integer inputs, generated last.
INTEGER = [
    (1, "w2_s1_d3", "int8"),
    (2, "w3_s1_p1", "uint8"),
    (2, "w3_s2_p1_d2", "int32"),
    (3, "w332_s221_p111_d212", "int64"),
]
POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}


def nonfinite(shape, rng) -> np.ndarray:
    """Small integers with NaN (10%), +inf (15%) and -inf (35%), and a corner of feature 0
    all -inf (windows whose real entries are all -inf)."""
    x = rng.integers(0, 3, size=shape).astype(np.float64)
    u = rng.random(shape)
    x[u < 0.1] = np.nan
    x[(u >= 0.1) & (u < 0.25)] = np.inf
    x[(u >= 0.25) & (u < 0.6)] = -np.inf
    x[:, :3, :3, 0] = -np.inf
    return x


INPUTS = {
    "random": lambda shape, rng: rng.normal(size=shape),
    "ties": lambda shape, rng: rng.integers(0, 3, size=shape).astype(np.float64),
    "nonfinite": nonfinite,
}


def integers(shape, dtype, rng) -> np.ndarray:
    """The dtype's two largest and two smallest values, and 0 and 1 (ties everywhere, and
    neighbours that float32 rounds together in int32 and float64 in int64), with a corner of
    feature 0 at the minimum alone (windows whose real entries are all the minimum)."""
    info = np.iinfo(dtype)
    choices = np.array([info.min, info.min + 1, 0, 1, info.max - 1, info.max], dtype)
    x = rng.choice(choices, size=shape)
    x[(slice(None), *[slice(0, 3)] * (len(shape) - 2), 0)] = info.min
    return x


def channels_last(t: torch.Tensor) -> np.ndarray:
    """(N, C, *spatial) torch tensor -> (N, *spatial, C) numpy array."""
    return np.moveaxis(t.detach().numpy(), 1, -1).copy()


def channels_first(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, -1, 1)))


def cotangent(shape, rng) -> np.ndarray:
    """Random multiples of 1/64 in [-16, 16): 2048 distinct values, so that a gradient routed
    to the wrong place shows, with short mantissas, so that the file compresses, and sums
    of a few of them are exact."""
    return rng.integers(-(2**10), 2**10, size=shape) / 2**6


def convention_indices(x, window, stride, padding, dilation) -> np.ndarray:
    """The documented convention, by brute force over channels-last ``x``: per window, the
    flat spatial index of its first maximum in row-major window order (strictly greater
    replaces; NaN always replaces); if all its entries are -inf (or an integer dtype's
    minimum), its first real entry. Offset j of a window lies j * dilation from its start."""
    spatial = x.shape[1:-1]
    pooled = [
        (n + 2 * p - (w - 1) * r - 1) // s + 1
        for n, w, s, p, r in zip(spatial, window, stride, padding, dilation, strict=True)
    ]
    out = np.empty((x.shape[0], *pooled, x.shape[-1]), np.int64)
    for b, c in itertools.product(range(x.shape[0]), range(x.shape[-1])):
        for o in itertools.product(*map(range, pooled)):
            best, index = -np.inf, None
            for offset in itertools.product(*map(range, window)):
                pos = [
                    oi * s - p + j * r
                    for oi, s, p, j, r in zip(o, stride, padding, offset, dilation, strict=True)
                ]
                if not all(0 <= q < n for q, n in zip(pos, spatial, strict=True)):
                    continue
                value = x[(b, *pos, c)]
                if index is None or value > best or np.isnan(value):
                    best, index = value, np.ravel_multi_index(pos, spatial)
            out[(b, *o, c)] = index
    return out


def pool_indices(x: np.ndarray, window, stride, padding, dilation):
    """PyTorch's (values, indices) of channels-last ``x``, after checking that its
    channels-last kernel, a different code path, picks the same winners."""
    d = len(window)
    xt = channels_first(x)
    pooled = POOL[d](xt, window, stride, padding, dilation, return_indices=True)
    memory = torch.channels_last if d == 2 else torch.channels_last_3d if d == 3 else None
    if memory is not None:
        xcl = xt.contiguous(memory_format=memory)
        _, indices_cl = POOL[d](xcl, window, stride, padding, dilation, return_indices=True)
        if not torch.equal(pooled[1], indices_cl):
            raise AssertionError(f"torch's channels-last kernel differs on ties: {window}")
    return pooled


def check_convention(result, window, stride, padding, dilation):
    expected = convention_indices(result["x"], window, stride, padding, dilation)
    if not np.array_equal(result["indices"], expected):
        bad = np.argwhere(result["indices"] != expected)[0]
        raise AssertionError(
            f"torch's index differs from the convention at {tuple(bad)} for window {window}, "
            f"dilation {dilation}: torch {result['indices'][tuple(bad)]}, convention "
            f"{expected[tuple(bad)]}"
        )


def arguments(window, stride, padding, dilation) -> dict:
    return {
        "window": np.array(window),
        "stride": np.array(stride),
        "padding": np.array([(p, p) for p in padding]),
        "dilation": np.array(dilation),
    }


def integer_oracle(x: np.ndarray, window, stride, padding, dilation) -> dict:
    """max_pool only: PyTorch does not unpool integers."""
    values, indices = pool_indices(x, window, stride, padding, dilation)
    result = {
        "x": x,
        **arguments(window, stride, padding, dilation),
        "values": channels_last(values),
        "indices": channels_last(indices).astype(np.int32),
    }
    if result["values"].dtype != x.dtype:
        raise AssertionError(f"torch's max_pool returned {result['values'].dtype} for {x.dtype}")
    check_convention(result, window, stride, padding, dilation)
    return result


def oracle(x: np.ndarray, window, stride, padding, dilation, rng) -> dict:
    d = len(window)
    spatial = x.shape[1:-1]
    xt = channels_first(x).requires_grad_(True)
    values, indices = POOL[d](xt, window, stride, padding, dilation, return_indices=True)
    ct = cotangent(values.shape, rng)
    (values * torch.from_numpy(ct)).sum().backward()

    # PyTorch's channels-last kernel is a different code path: it must pick the same winners.
    if not torch.equal(indices, pool_indices(x, window, stride, padding, dilation)[1]):
        raise AssertionError(f"torch's indices differ from one call to the next: {window}")

    # max_unpool has no deterministic mode (torch.use_deterministic_algorithms refuses it):
    # overlapping windows may write one position in any order, but they write one value.
    # It takes the flat indices as they are, and no dilation: its window arguments only size
    # a default output that output_size must lie near, so that it gets the dilated extent.
    v = values.detach().clone().requires_grad_(True)
    extent = [(w - 1) * r + 1 for w, r in zip(window, dilation, strict=True)]
    unpooled = UNPOOL[d](v, indices, extent, stride, padding, output_size=spatial)
    ct2 = cotangent(unpooled.shape, rng)
    (unpooled * torch.from_numpy(ct2)).sum().backward()

    result = {
        "x": x,
        **arguments(window, stride, padding, dilation),
        "values": channels_last(values),
        "indices": channels_last(indices).astype(np.int32),
        "ct": np.moveaxis(ct, 1, -1).copy(),
        "grad": channels_last(xt.grad),
        "unpooled": channels_last(unpooled),
        "ct2": np.moveaxis(ct2, 1, -1).copy(),
        "unpool_grad": channels_last(v.grad),
    }
    check_convention(result, window, stride, padding, dilation)
    return result


def tied_windows(x, window, stride, padding, dilation) -> tuple[int, int]:
    """(windows whose maximum occurs more than once, all windows) of channels-last ``x``."""
    spatial_axes = tuple(range(1, 1 + len(window)))
    pads = [(0, 0)] + [(p, p) for p in padding] + [(0, 0)]
    lowest = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    padded = np.pad(x, pads, constant_values=lowest)
    extent = [(w - 1) * r + 1 for w, r in zip(window, dilation, strict=True)]
    view = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=spatial_axes)
    view = view[(slice(None), *(slice(None, None, s) for s in stride))]
    view = view[(Ellipsis, *(slice(None, None, r) for r in dilation))]
    count = (view == view.max(axis=tuple(range(-len(window), 0)), keepdims=True)).sum(
        axis=tuple(range(-len(window), 0))
    )
    return int((count > 1).sum()), count.size


def main() -> None:
    rng = np.random.default_rng(20240613)
    arrays = {}

    def add(case, result, window, stride, padding, dilation):
        for key, value in result.items():
            arrays[f"{case}/{key}"] = value
        tied, total = tied_windows(result["x"], window, stride, padding, dilation)
        print(f"{case}: {total} windows, {tied} with a tied maximum")

    dilated = {
        d: [(*setting, (1,) * d) for setting in settings] for d, settings in SETTINGS.items()
    }
    for groups in (dilated, DILATED):  # SETTINGS first: their draws come first
        for d, settings in groups.items():
            shape = (BATCH, *SPATIAL[d], FEATURES)
            kinds = ("random", "ties", "nonfinite") if d == 2 else ("random", "ties")
            for setting, kind in itertools.product(settings, kinds):
                name, window, stride, padding, dilation = setting
                x = INPUTS[kind](shape, rng)
                result = oracle(x, window, stride, padding, dilation, rng)
                add(f"{d}d_{name}_{kind}", result, window, stride, padding, dilation)
    everything = {d: SETTINGS[d] + DILATED[d] for d in SETTINGS}
    for d, setting_name, dtype in INTEGER:
        settings = [(*s, (1,) * d) if len(s) == 4 else s for s in everything[d]]
        name, window, stride, padding, dilation = next(s for s in settings if s[0] == setting_name)
        x = integers((BATCH, *SPATIAL[d], FEATURES), np.dtype(dtype), rng)
        result = integer_oracle(x, window, stride, padding, dilation)
        add(f"{d}d_{name}_{dtype}", result, window, stride, padding, dilation)
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, torch {torch.__version__})")


if __name__ == "__main__":
    main()
