"""Float64 oracles for the sort-and-rank family, written from the equations of Blondel,
Teboul, Berthet and Djolonga, "Fast Differentiable Sorting and Ranking" (ICML 2020,
arXiv:2002.08871), one 1-D slice at a time.

The regularised projection onto the permutahedron of ``w`` (the convex hull of the
permutations of ``w``),

    P_l2(z, w) = argmin_{mu in P(w)} |mu - z|^2 / 2,
    P_kl(z, w) = log argmin_{mu in P(exp w)} KL(mu, exp z),

reduces to an isotonic regression (the paper's Proposition 3): with ``s`` the permutation
sorting ``z`` in decreasing order and ``w`` sorted decreasing,
``P(z, w) = z - v[s^-1]``, where ``v`` is the decreasing isotonic fit of ``z[s]`` against
``w`` (pool-adjacent-violators): on each block B of pooled positions, ``v`` is
``mean(z[s][B] - w[B])`` for l2 and ``logsumexp(z[s][B]) - logsumexp(w[B])`` for kl.

With ``rho = (n, n - 1, ..., 1)`` and strength ``eps`` (the library's ``temperature``):
the soft ranks are ``P(x / eps, rho)`` (the largest entry tends to rank n: scipy's
``rankdata`` at eps -> 0), and the soft sort is ``P(rho / eps, x)`` reversed (ascending).
:func:`brute_projection` solves the projection directly, over the convex weights of all
``n!`` permutations, to check the reduction for small ``n``.
"""

import itertools

import numpy as np
from scipy import optimize, special


def _block_value(z, w, kind):
    if kind == "l2":
        return np.mean(z - w)
    return special.logsumexp(z) - special.logsumexp(w)


def isotonic_decreasing(z, w, kind="l2"):
    """The decreasing isotonic fit ``v`` of ``z`` against ``w`` (both in the order of the
    fit), by pool-adjacent-violators: blocks merge while a block's value exceeds its left
    neighbour's."""
    blocks = []  # [start, stop, value]
    for i in range(len(z)):
        blocks.append([i, i + 1, _block_value(z[i : i + 1], w[i : i + 1], kind)])
        while len(blocks) > 1 and blocks[-2][2] <= blocks[-1][2]:
            start, _, _ = blocks[-2]
            stop = blocks[-1][1]
            blocks[-2:] = [[start, stop, _block_value(z[start:stop], w[start:stop], kind)]]
    v = np.empty(len(z))
    for start, stop, value in blocks:
        v[start:stop] = value
    return v


def projection(z, w, kind="l2"):
    """``P(z, w)`` by the isotonic reduction (see the module docstring)."""
    z, w = np.asarray(z, np.float64), np.sort(np.asarray(w, np.float64))[::-1]
    order = np.argsort(-z, kind="stable")
    v = isotonic_decreasing(z[order], w, kind)
    out = np.empty_like(z)
    out[order] = z[order] - v
    return out


def brute_projection(z, w, kind="l2"):
    """``P(z, w)`` by solving for the convex weights of all ``n!`` permutations of ``w``
    (``exp w`` for kl), for small ``n``."""
    z, w = np.asarray(z, np.float64), np.asarray(w, np.float64)
    vertices = np.array(list(itertools.permutations(w if kind == "l2" else np.exp(w))))
    m = len(vertices)

    def objective(weights):
        mu = weights @ vertices
        if kind == "l2":
            return 0.5 * np.sum((mu - z) ** 2)
        mu = np.maximum(mu, 1e-300)
        return np.sum(mu * np.log(mu) - mu * z - mu + np.exp(z))

    result = optimize.minimize(
        objective,
        np.full(m, 1.0 / m),
        method="SLSQP",
        bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda weights: np.sum(weights) - 1.0}],
        options={"ftol": 1e-15, "maxiter": 2000},
    )
    mu = result.x @ vertices
    return mu if kind == "l2" else np.log(mu)


def soft_rank(x, temperature=1.0, kind="l2", descending=False):
    """Soft ranks of a 1-D ``x``, 1-based, ascending unless ``descending``."""
    x = np.asarray(x, np.float64)
    rho = np.arange(len(x), 0, -1, dtype=np.float64)
    sign = -1.0 if descending else 1.0
    return projection(sign * x / temperature, rho, kind)


def soft_sort(x, temperature=1.0, kind="l2", descending=False):
    """The soft sort of a 1-D ``x``, ascending unless ``descending``."""
    x = np.asarray(x, np.float64)
    rho = np.arange(len(x), 0, -1, dtype=np.float64)
    decreasing = projection(rho / temperature, x, kind)
    return decreasing if descending else decreasing[::-1]
