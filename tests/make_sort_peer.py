"""Writes tests/data/softjax_sort.npz: reference soft ranks and soft sorts, with their VJPs,
from SoftJAX (PyPI ``softjax`` 0.1.1, method ``fast_soft_sort``), a peer implementation of
Blondel et al., "Fast Differentiable Sorting and Ranking" (arXiv:2002.08871).

SoftJAX needs Python >= 3.12, so it lives in its own virtual environment, outside the repo:

    PYENV_VERSION=3.12.1 python3.12 -m venv /work/softjax-venv
    /work/softjax-venv/bin/pip install softjax==0.1.1 numpy scipy
    /work/softjax-venv/bin/python tests/make_sort_peer.py

(it pulled jax 0.12.1). Everything is computed in float64 (``jax_enable_x64``).

Stored, for each case ``i`` (keys ``c{i:02d}_<name>``; ``num_cases`` says how many):

- ``x``: the input, float64, shape (rows, n), n from 2 to 50; ``cotangent``: a fixed random
  cotangent of the same shape.
- ``temperature``: the paper's eps (the oracle's ``temperature`` in tests/reference_sort.py),
  ``kind`` ("l2" or "kl"), ``descending`` (bool), ``ties`` (whether ``x`` has repeated values
  within a row).
- ``rank``, ``sort``: SoftJAX's soft ranks (1-based) and soft sort along the last axis;
  ``rank_vjp``, ``sort_vjp``: the VJPs of each at ``x`` for ``cotangent``.
- ``rank_is_paper``: whether ``rank`` is the paper's soft rank (see kl below).
- ``softness_rank``, ``softness_sort``: the SoftJAX softness each was called with.

The calls (``mode="c0"`` is the l2 projection, ``mode="smooth"`` the kl one)::

    softjax.rank(x, axis=-1, softness=eps * (n - 1), mode=..., method="fast_soft_sort",
                 descending=descending, standardize=False)
    softjax.sort(x, axis=-1, softness=eps / (n - 1), mode=..., method="fast_soft_sort",
                 descending=descending, standardize=False)

Mapping (with n = 1 read as n - 1 = 1; verified against tests/reference_sort.py to a few
units in the last place of max|z| + max|w|, the inputs of the projection, in float32 and
float64):

- rank, l2: SoftJAX computes ``(n-1) * P(x / softness, rho / (n-1))`` with
  ``rho = (n, ..., 1)``; the l2 projection is positively homogeneous, so this is
  ``P(x / eps, rho)`` at ``eps = softness / (n - 1)``: the paper's soft rank, 1-based,
  ascending (largest entry -> n) with ``descending=False``, largest -> 1 with ``descending=True``
  (SoftJAX's default is ``descending=True``).
- sort, l2 and kl: SoftJAX computes ``P((0, 1, ..., n-1) / (n-1) / softness, x)``; the
  projection ignores a constant shift of its first argument, so this is ``P(rho / eps, x)``
  (ascending, flipped for ``descending=True``) at ``eps = softness * (n - 1)``.
- rank, kl: SoftJAX computes ``(n-1) * P_kl(x / softness, rho / (n-1))``, which is not
  homogeneous: it equals the paper's ``P_kl(x / eps, rho)`` only for n = 2 (and in the hard
  limit). ``rank_is_paper`` is false for those cases; their ``rank`` is
  ``(n-1) * reference_sort.projection(±x / softness_rank, rho / (n-1), "kl")``.

Ties: SoftJAX sorts with a stable argsort of the negated values, so in the sort's VJP the
lower index of a tie takes the later slot in ascending order (the earlier in descending);
``jnp.sort`` does the opposite in ascending order. Tied cases are marked ``ties``.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np

# softjax is imported, and x64 enabled, in main() only: pytest imports this module for its
# doctests (--doctest-modules) in the project's environment, which lacks softjax and runs
# without x64.

OUT = pathlib.Path(__file__).parent / "data" / "softjax_sort.npz"
MODES = {"l2": "c0", "kl": "smooth"}
ROWS = 3


def peer(x, g, eps, kind, descending):
    import softjax

    n = x.shape[-1]
    scale = max(n - 1, 1)
    common = dict(
        axis=-1,
        mode=MODES[kind],
        method="fast_soft_sort",
        descending=descending,
        standardize=False,
    )

    def rank(a):
        return softjax.rank(a, softness=eps * scale, **common)

    def sort(a):
        return softjax.sort(a, softness=eps / scale, **common)

    out = {}
    for name, fn in [("rank", rank), ("sort", sort)]:
        value, vjp = jax.vjp(fn, jnp.asarray(x))
        out[name] = np.asarray(value)
        out[name + "_vjp"] = np.asarray(vjp(jnp.asarray(g))[0])
    out["softness_rank"] = np.float64(eps * scale)
    out["softness_sort"] = np.float64(eps / scale)
    out["rank_is_paper"] = np.bool_(kind == "l2" or n == 2)
    return out


def main():
    jax.config.update("jax_enable_x64", True)
    import softjax

    rng = np.random.default_rng(20200218)
    cases = []
    for n in [2, 3, 5, 8, 17, 50]:
        for kind in ["l2", "kl"]:
            flip = n % 2 == 0  # each n and kind gets both orders, at one eps each
            for eps, descending in [(0.3, flip), (1.0, not flip)]:
                x = rng.standard_normal((ROWS, n)) * max(n / 4.0, 1.0)  # gaps near 1: partly pooled
                cases.append((x, eps, kind, descending, False))
    for kind in ["l2", "kl"]:  # repeated values within each row
        x = np.round(rng.standard_normal((ROWS, 9)) * 2.0) / 2.0
        x[:, 1] = x[:, 0]
        cases.append((x, 0.3, kind, False, True))
        cases.append((x, 0.01, kind, True, True))

    arrays = {
        "num_cases": np.int64(len(cases)),
        "softjax_version": np.str_(softjax.__version__),
        "jax_version": np.str_(jax.__version__),
    }
    for i, (x, eps, kind, descending, ties) in enumerate(cases):
        g = rng.standard_normal(x.shape)
        fields = {
            "x": x,
            "cotangent": g,
            "temperature": np.float64(eps),
            "kind": np.str_(kind),
            "descending": np.bool_(descending),
            "ties": np.bool_(ties),
        }
        fields.update(peer(x, g, eps, kind, descending))
        arrays.update({f"c{i:02d}_{k}": v for k, v in fields.items()})
    OUT.parent.mkdir(exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(cases)} cases, {OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
