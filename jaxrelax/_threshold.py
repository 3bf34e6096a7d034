"""The threshold solver shared by the sparse and top-k families.

Each of their relaxations is ``p_i = mass(v_i - tau)`` for a nondecreasing ``mass`` and a
per-slice threshold ``tau`` such that ``sum_i p_i = capacity``: sparsemax's ``[d]_+`` and
entmax's ``[d]_+ ** beta`` with capacity 1, the sigmoid (soft top-k) and a clip to [0, 1]
(sparse top-k) with capacity k. Rather than sorting, the threshold is the root of the
decreasing function ``f(tau) = sum_i mass(v_i - tau) - capacity``, found by secant steps
after a bounded Newton step, inside a bracket ``[lo, hi]`` with ``f(lo) >= 0 >= f(hi)``, each
step one fused reduction over the scores. The secant runs on a monotone map of the mass
(``Mass.secant_scale``) under which it is nearly linear in ``tau``: for the sigmoid, whose
mass is nearly exponential in ``tau`` where the threshold lies in its tail, its log; for
entmax's ``[d]_+ ** beta``, ``beta (mass ** (1 / beta) - 1)``, a ``beta``-norm of the bases:
convex, so that the iterates rise monotonically to the root, and linear wherever the support
is fixed and its scores equal. Where ``f`` is piecewise linear (sparsemax, sparse top-k) a
secant through two points of the root's linear piece lands on it exactly (the idea behind
Michelot's algorithm, 1986). A step that would leave the bracket bisects instead, which
keeps the method safe where ``f`` is not convex. A slice stops when its mass is within
``2 eps max(capacity, 1)`` of the capacity or its bracket within two ulps of ``tau``; the loop
runs until every slice has stopped.

The derivative of ``tau`` is the implicit-function one, so the forward pass can be
differentiated (for second derivatives) without going through the loop.

Reference: Michelot, A finite algorithm for finding the projection of a point onto the
canonical simplex of R^n, 1986.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

MAX_STEPS = 200
_passes: list | None = None  # where counting_passes records, while it is on


@contextlib.contextmanager
def counting_passes():
    """Records the passes over the scores that each solve takes (the benchmarks' and tests'
    measure of the solver): yields a list that receives one int per solve run, the passes its
    slowest slice needed. Compiled programs are cleared on entry and exit, so that those
    traced inside count and those outside do not."""
    global _passes
    jax.clear_caches()
    _passes = []
    try:
        yield _passes
    finally:
        _passes = None
        jax.clear_caches()


class Mass(NamedTuple):
    """A relaxation's mass as a function of ``d = v - tau``.

    ``value(d, param)`` is the mass (NaN where ``d`` is NaN); ``slope(d, param)`` its
    derivative in ``d``; ``param_slope(d, param)``, if the mass has a parameter with a
    gradient, its derivative in that parameter.
    """

    value: Callable
    slope: Callable
    param_slope: Callable | None = None
    # The secant runs on secant_scale(sum mass, param) rather than on the sum itself: a
    # monotone map under which it is nearly linear in tau near the root (the log of the
    # sigmoid's exponential tail; the beta-th root of sum [v - tau]_+ ** beta, linear
    # wherever the support is fixed and its scores equal).
    secant_scale: Callable | None = None


def solve(v, capacity, lo, hi, mass: Mass, axes, param=None, max_slope=jnp.inf, start=None):
    """tau with ``sum mass(v - tau) = capacity`` over ``axes`` (a per-slice array).

    ``lo`` and ``hi`` bracket the root (``f(lo) >= 0 >= f(hi)``), ``start`` (default ``lo``)
    is the first iterate, ``param`` is the mass's parameter (per slice) and ``max_slope`` a
    bound on ``|f'|`` in the bracket (on the slope of ``Mass.secant_scale(sum mass)``
    where there is one), which makes the first step a Newton step that does not pass the
    root (without one it bisects). A slice holding NaN stops at once, with a NaN threshold.
    """
    param = jnp.zeros((), v.dtype) if param is None else param
    slices = capacity.shape
    start = lo if start is None else start
    lo, hi, max_slope, start = (
        jnp.broadcast_to(a, slices).astype(v.dtype) for a in (lo, hi, max_slope, start)
    )
    return _solve(v, param, capacity, lo, hi, max_slope, start, mass, axes)


@functools.partial(jax.custom_jvp, nondiff_argnums=(7, 8))
def _solve(v, param, capacity, lo, hi, max_slope, start, mass, axes):
    """Secant steps through the last two iterates, after a bounded Newton step from
    ``start``; a step leaving the bracket bisects. A slice stops when its mass is within two
    ulps of the capacity (relative to it) or its bracket within two ulps of tau."""
    eps = jnp.finfo(v.dtype).eps
    tolerance = 2 * eps * jnp.maximum(capacity, 1)

    def excess(tau):
        return jnp.sum(mass.value(v - tau, param), axes, keepdims=True) - capacity

    def step(state):
        count, previous, excess_previous, tau, lo, hi, finished = state
        excess_tau = excess(tau)
        lo = jnp.where(excess_tau >= 0, tau, lo)
        hi = jnp.where(excess_tau < 0, tau, hi)
        if mass.secant_scale is not None:
            target = mass.secant_scale(capacity, param)
            residual = mass.secant_scale(excess_tau + capacity, param) - target
            residual_previous = mass.secant_scale(excess_previous + capacity, param) - target
        else:
            residual, residual_previous = excess_tau, excess_previous
        drop = residual_previous - residual
        secant = tau + residual * (tau - previous) / jnp.where(drop != 0, drop, 1)
        inside = (secant > lo) & (secant < hi) & (drop != 0)
        new_tau = jnp.where(inside, secant, _midpoint(lo, hi))
        # A secant step that rounds to nothing moves one ulp towards the root instead.
        stalled = (drop != 0) & (secant == tau)
        toward_root = jnp.nextafter(tau, jnp.where(excess_tau > 0, hi, lo))
        new_tau = jnp.where(stalled, toward_root, new_tau)
        # The first step has no secant: a bounded Newton step (a bisection where it does not
        # move, or leaves the bracket).
        newton = tau + residual / max_slope
        newton = jnp.where((newton > lo) & (newton < hi), newton, _midpoint(lo, hi))
        new_tau = jnp.where(count == 0, newton, new_tau)
        done = (
            finished  # a slice that ended stays ended (the others' passes re-evaluate it)
            | (jnp.abs(excess_tau) <= tolerance)
            | (hi - lo <= 2 * eps * jnp.maximum(jnp.abs(lo), jnp.abs(hi)))
            | jnp.isnan(excess_tau)
            | (excess_tau == -capacity)  # nothing in the slice: stays all zeros
        )
        new_tau = jnp.where(done, tau, new_tau)
        new_tau = jnp.where(jnp.isnan(excess_tau), excess_tau, new_tau)  # NaN poisons its slice
        return count + 1, tau, excess_tau, new_tau, lo, hi, done

    def keep_going(state):
        return (state[0] < MAX_STEPS) & ~jnp.all(state[6])

    init = (0, start, jnp.zeros_like(start) + capacity, start, lo, hi, jnp.zeros(lo.shape, bool))
    count, _, _, tau, *_ = lax.while_loop(keep_going, step, init)
    if _passes is not None:
        jax.debug.callback(lambda count, passes=_passes: passes.append(int(count)), count)
    return tau


def _midpoint(lo, hi):
    """The bisection point of ``[lo, hi]``: the middle, or for a bracket whose ends differ by
    orders of magnitude (a score far below the others) the geometric middle of their sizes
    (0 across 0), so that reaching the root's scale takes a few steps rather than one per
    factor of 2."""
    a, b = jnp.abs(lo), jnp.abs(hi)
    wide = (hi / 2 - lo / 2) > 512 * jnp.maximum(1, jnp.minimum(a, b))  # no overflow at fmax
    sizes = jnp.sqrt(jnp.maximum(a, 1)) * jnp.sqrt(jnp.maximum(b, 1))
    geometric = jnp.where(lo < 0, jnp.where(hi > 0, 0, -sizes), sizes)
    return jnp.where(wide, jnp.clip(geometric, lo, hi), lo / 2 + hi / 2)


@_solve.defjvp
def _solve_jvp(mass, axes, primals, tangents):
    """From ``sum mass(v - tau) = capacity``: ``dtau = (sum mass' dv + sum dmass/dparam dparam
    - dcapacity) / sum mass'``."""
    v, param, capacity, lo, hi, max_slope, start = primals
    d_v, d_param, d_capacity = tangents[:3]
    tau = _solve(v, param, capacity, lo, hi, max_slope, start, mass, axes)
    d = v - tau
    slope = mass.slope(d, param)
    change = jnp.sum(slope * d_v, axes, keepdims=True) - d_capacity
    if mass.param_slope is not None:
        weight = mass.param_slope(d, param)
        change = change + jnp.sum(weight, axes, keepdims=True) * d_param
    total = jnp.sum(slope, axes, keepdims=True)
    return tau, change / jnp.maximum(total, jnp.finfo(v.dtype).tiny)
