"""Orders: rank, soft_sort, soft_rank, soft_quantile, st_sort and st_rank.

The soft operators are Blondel et al.'s regularised projections onto the permutahedron,
reduced to a decreasing isotonic fit of the sorted scores (their Proposition 3). The fit is
computed by :func:`_isotonic_fit` in O(n log n) time and O(n) memory, whatever the input
(see its docstring); its Jacobian is the block-average formula, never autodiff of a loop.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from . import _checks, _numerics, _straight_through

REGULARIZATIONS = ("l2", "kl")


# --- the decreasing isotonic fit ---


class _L2:
    """Blocks of ``s - w`` pooled by their mean: statistics ``[sum, count]`` (last axis)."""

    identity = (0.0, 0.0)

    @staticmethod
    def statistics(s, w, real):
        return jnp.stack([jnp.where(real, s - w, 0.0), real.astype(s.dtype)], -1)

    @staticmethod
    def join(a, b):
        return a + b

    @staticmethod
    def accumulate(stats, reverse=False):
        return lax.cumsum(stats, stats.ndim - 2, reverse=reverse)

    @staticmethod
    def value(stats):
        return stats[..., 0] / jnp.maximum(stats[..., 1], 1)  # 0 for no entries (padding)


def _logaddexp(a, b):
    """``log(exp(a) + exp(b))`` for finite or -inf entries, never making a NaN (jnp.logaddexp
    computes -inf - -inf on the way, which jax.debug_nans reports)."""
    top = jnp.maximum(a, b)
    top = jnp.where(top == -jnp.inf, 0, top)
    return top + jnp.log(jnp.exp(a - top) + jnp.exp(b - top))


class _KL:
    """Blocks pooled by ``logsumexp(s) - logsumexp(w)``: statistics ``[lse(s), lse(w)]``."""

    identity = (-np.inf, -np.inf)

    @staticmethod
    def statistics(s, w, real):
        return jnp.stack([jnp.where(real, s, -jnp.inf), jnp.where(real, w, -jnp.inf)], -1)

    @staticmethod
    def join(a, b):
        return _logaddexp(a, b)

    @staticmethod
    def accumulate(stats, reverse=False):
        # lax.cumlogsumexp is a quadratic reduce_window on CPU; the scan is O(n log n).
        return lax.associative_scan(_logaddexp, stats, reverse=reverse, axis=stats.ndim - 2)

    @staticmethod
    def value(stats):
        empty = stats[..., 1] == -jnp.inf  # no entries (padding): 0, and no inf - inf
        return jnp.where(empty, 0, stats[..., 0] - jnp.where(empty, 0, stats[..., 1]))


_KINDS = {"l2": _L2, "kl": _KL}


def _rows_of(table, index):
    """``table[r, p, index[r, p, ...]]``: rows of each pair's table (a flat gather, which XLA
    compiles far faster than ``take_along_axis``)."""
    rows, pairs, width = table.shape[:3]
    flat = table.reshape(-1, *table.shape[3:])
    base = (jnp.arange(rows * pairs, dtype=index.dtype) * width).reshape(rows, pairs)
    base = base.reshape(rows, pairs, *(1,) * (index.ndim - 2))
    return flat.at[base + index].get(mode="promise_in_bounds")


def _bisect(lo, hi, steps, holds):
    """The last index where the monotone ``holds`` is true, given it is at ``lo`` and is not
    at ``hi`` (elementwise arrays): ``steps`` halvings of ``hi - lo``."""

    def halve(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        open_ = hi - lo > 1
        yes = holds(mid)
        return jnp.where(open_ & yes, mid, lo), jnp.where(open_ & ~yes, mid, hi)

    return lax.fori_loop(0, steps, halve, (lo, hi))


def _isotonic_fit(s, w, m, kind):
    """The decreasing isotonic fit of rows ``s`` against ``w`` over their first ``m`` entries.

    Returns ``(v, start)``: ``v`` the fitted block value at each entry (0 past ``m``) and
    ``start`` the position where its block starts (its own position past ``m``).

    For l2 this is the slope sequence of the least concave majorant of the cumulative sums of
    ``s - w`` (Barlow et al., Statistical Inference under Order Restrictions, 1972); kl has the
    same block structure with another block value. It is built bottom up over a complete
    binary tree of the positions: two neighbouring spans, each already fitted (decreasing
    blocks), join by pooling one run of blocks across their boundary (the bridge of their
    majorants), from the left span's block ``a`` to the right span's block ``b``. For a fixed
    ``a``, ``b`` is where the next right block's value first falls below the pooled value (a
    tangent to a concave chain: monotone), and ``a`` is the last left block whose left
    neighbour stays above the pooled value of ``(a, b(a))`` (monotone too): a binary search
    nested in a binary search, per pair of spans. The pooled statistics are sums taken from
    the boundary outwards, as pool-adjacent-violators would form them (no differences of
    large prefix sums). ``log2 n`` levels of O(n) work and O(log^2 n) search steps per pair:
    O(n log n) in all, however many violators there are.
    """
    kind = _KINDS[kind]
    batch, n = s.shape[:-1], s.shape[-1]
    if s.size == 0:
        return jnp.zeros_like(s), jnp.zeros(s.shape, jnp.int32)
    s, w, m = s.reshape(-1, n), w.reshape(-1, n), m.reshape(-1, 1)
    rows, size_n = s.shape[0], 1 << max(0, math.ceil(math.log2(max(n, 1))))
    position = jnp.arange(size_n)
    pad = ((0, 0), (0, size_n - n))
    stats = kind.statistics(jnp.pad(s, pad), jnp.pad(w, pad), position < m)
    identity = jnp.asarray(kind.identity, s.dtype)
    v = jnp.where(position < m, kind.value(stats), 0.0)
    start = end = jnp.broadcast_to(position, (rows, size_n))
    size = 1
    while size < size_n:
        pairs = size_n // (2 * size)
        origin = (jnp.arange(pairs) * 2 * size)[:, None]
        n_left = jnp.clip(m - origin[:, 0], 0, size)
        n_right = jnp.clip(m - origin[:, 0] - size, 0, size)

        def halves(x, size=size, pairs=pairs):
            x = x.reshape(rows, pairs, 2, size, *x.shape[2:])
            return x[:, :, 0], x[:, :, 1]

        left, right = halves(stats)
        v_left, v_right = halves(v)
        # Per left entry: the statistics from its block's start to the boundary, the value
        # of the block before (+inf: none) and the start; row ``size``: no left block.
        block_start = halves(start)[0] - origin
        suffix = kind.accumulate(left, reverse=True)
        before = _rows_of(v_left[..., None], jnp.maximum(block_start - 1, 0)).squeeze(-1)
        before = jnp.where(block_start > 0, before, jnp.inf)
        last_value = _rows_of(v_left[..., None], jnp.maximum(n_left - 1, 0)).squeeze(-1)
        none = jnp.concatenate(
            [
                jnp.broadcast_to(identity, (rows, pairs, 1, identity.size)),
                jnp.where(n_left > 0, last_value, jnp.inf)[..., None, None],
                n_left[..., None, None].astype(s.dtype),
            ],
            -1,
        )
        left_table = jnp.concatenate(
            [
                jnp.concatenate(
                    [
                        _rows_of(suffix, block_start),
                        before[..., None],
                        block_start[..., None].astype(s.dtype),
                    ],
                    -1,
                ),
                none,
            ],
            2,
        )
        # Per right entry (row q + 1): the statistics from the boundary to its block's end,
        # the value of the block after (-inf: none) and the end; row 0: no right entry.
        block_end = halves(end)[1] - origin - size
        prefix = kind.accumulate(right)
        after = _rows_of(v_right[..., None], jnp.minimum(block_end + 1, size - 1)).squeeze(-1)
        after = jnp.where(block_end + 1 < n_right[..., None], after, -jnp.inf)
        right_table = jnp.concatenate(
            [
                jnp.concatenate(
                    [
                        jnp.broadcast_to(identity, (rows, pairs, 1, identity.size)),
                        jnp.full((rows, pairs, 1, 2), -1.0, s.dtype),
                    ],
                    -1,
                ),
                jnp.concatenate(
                    [
                        _rows_of(prefix, block_end),
                        after[..., None],
                        block_end[..., None].astype(s.dtype),
                    ],
                    -1,
                ),
            ],
            2,
        )
        k = identity.size

        def right_run(from_left, size=size, right_table=right_table, n_right=n_right, k=k):
            """The right table's row ending the run pooled with the left statistics."""

            def continues(q):
                row = _rows_of(right_table, q + 1)
                return row[..., k] >= kind.value(kind.join(from_left, row[..., :k]))

            steps = math.ceil(math.log2(size))
            q = _bisect(jnp.full_like(n_right, -1), n_right - 1, steps, continues)[1]
            return _rows_of(right_table, q + 1)

        def left_row(p, size=size, left_table=left_table, n_left=n_left):
            return _rows_of(left_table, jnp.where(p < n_left, p, size))

        def stays(p, left_row=left_row, right_run=right_run, k=k):
            row = left_row(p)
            pooled = kind.value(kind.join(row[..., :k], right_run(row[..., :k])[..., :k]))
            return row[..., k] > pooled

        steps = math.ceil(math.log2(size + 1))
        p = _bisect(jnp.zeros_like(n_left), n_left + 1, steps, stays)[0]
        row = left_row(p)
        run = right_run(row[..., :k])
        pooled = kind.value(kind.join(row[..., :k], run[..., :k]))
        a, last = row[..., k + 1].astype(jnp.int32), run[..., k + 1].astype(jnp.int32)
        offset = jnp.arange(2 * size)
        pooling = (offset >= a[..., None]) & (offset <= size + last[..., None])
        pooling = pooling.reshape(rows, size_n) & (position < m)  # padding stays alone

        def spread(value, size=size):
            return jnp.repeat(value, 2 * size, axis=-1)

        v = jnp.where(pooling, spread(pooled), v)
        start = jnp.where(pooling, spread(origin[:, 0] + a), start)
        end = jnp.where(pooling, spread(origin[:, 0] + size + last), end)
        size *= 2
    return v[:, :n].reshape(*batch, n), start[:, :n].reshape(*batch, n)


def _block_sums(values, start):
    """Each entry's block total of ``values`` (rows; blocks given by their ``start``)."""
    if values.size == 0:
        return values
    n = values.shape[-1]
    flat = start + n * jnp.arange(values.size // max(n, 1)).reshape(start.shape[:-1] + (1,))
    flat = flat.reshape(-1)
    totals = jax.ops.segment_sum(
        values.reshape(-1), flat, num_segments=values.size, indices_are_sorted=True
    )
    return totals[flat].reshape(values.shape)


def _block_means(values, real, start):
    count = jnp.maximum(_block_sums(real.astype(values.dtype), start), 1)
    return jnp.where(real, _block_sums(values, start) / count, 0)


def _below_block_logsumexp(x, start, scale=1):
    """``scale * x`` less its block's logsumexp, as ``s - log(sum(exp(s)))`` with ``s = scale *
    (x - max)``, so that large equal entries keep their precision and ``scale * x`` itself need
    not be finite (finite rows, ``scale > 0``)."""
    if x.size == 0:
        return x
    n = x.shape[-1]
    flat = start + n * jnp.arange(x.size // max(n, 1)).reshape(start.shape[:-1] + (1,))
    flat = flat.reshape(-1)
    top = jax.ops.segment_max(
        lax.stop_gradient(x).reshape(-1), flat, num_segments=x.size, indices_are_sorted=True
    )
    shifted = scale * (x - top[flat].reshape(x.shape))
    return shifted - jnp.log(_block_sums(jnp.exp(shifted), start))


# --- the soft orders: one rule per row ---
#
# Both soft operators are a projection ``s - v`` in sorted order, ``v`` the decreasing
# isotonic fit of ``s = a / t`` against ``w = b``: for ranks ``a`` is the sorted scores and
# ``b = rho = (m, ..., 1)``; for sorts ``a = rho`` and ``b`` the sorted scores (the paper's
# Proposition 3). Written with ``a`` and ``t`` apart, ``a / t`` is never formed where it could
# overflow.


def _sorted_rows(z, finite):
    """The finite entries of rows ``z`` sorted decreasingly (0 after them), the permutation,
    and their count ``m``: one two-operand sort."""
    key = jnp.where(finite, -z, jnp.inf)
    position = lax.broadcasted_iota(jnp.int32, z.shape, z.ndim - 1)
    key, order = lax.sort((key, position), dimension=z.ndim - 1, num_keys=1)
    m = _count(finite)[..., None]
    return jnp.where(position < m, -key, 0), order, m


def _blocks(a, b, t, m, kind):
    """The block starts of the fit of ``a / t`` against ``b``. For l2 the blocks are those of
    ``a`` against ``t b`` (the projection is scale-equivariant): whichever of the two cannot
    overflow."""
    a, b, t = (lax.stop_gradient(v) for v in (a, b, t))
    if kind == "l2":
        a, b = jnp.where(t >= 1, a / t, a), jnp.where(t >= 1, b, t * b)
    else:
        a = a / t
    return _isotonic_fit(a, b, m[..., 0], kind)[1]


def _projected(a, b, t, real, start, kind):
    """``a / t - v`` on the blocks: ``b``'s block mean plus ``a``'s offset from its own, over
    ``t`` (l2), or ``a / t`` less its block's logsumexp plus ``b``'s (kl). An entry alone in
    its block gets ``b`` exactly."""
    if kind == "l2":
        out = _block_means(b, real, start) + (a - _block_means(a, real, start)) / t
    else:
        out = _below_block_logsumexp(a, start, 1 / t) + b - _below_block_logsumexp(b, start)
    return jnp.where(real, out, 0)


def _infinities(z, mask):
    """The counts of ``-inf`` and of ``+inf`` entries taking part, per row."""
    return _count(mask & (z == -jnp.inf))[..., None], _count(mask & (z == jnp.inf))[..., None]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _soft_order_rule(x, t, mask, ranks, descending, kind):
    """Soft ranks (``ranks``) or the soft sort of rows ``x`` at per-row temperatures ``t``."""
    return _soft_order_fwd(x, t, mask, ranks, descending, kind)[0]


def _soft_order_fwd(x, t, mask, ranks, descending, kind):
    z = -x if ranks and descending else x
    finite = mask & jnp.isfinite(z)
    data, order, m = _sorted_rows(z, finite)
    position = jnp.arange(x.shape[-1])
    real = position < m
    rho = jnp.where(real, (m - position).astype(x.dtype), 0)
    a, b = (data, rho) if ranks else (rho, data)
    start = _blocks(a, b, t, m, kind)
    projected = _projected(a, b, t, real, start, kind)
    flag = _nan_flag(x, mask)
    low, high = _infinities(z, mask)
    if ranks:
        out = jnp.where(finite, _unsort(projected, order) + low, 0)
        out = jnp.where(mask & (z == -jnp.inf), (low + 1) / 2, out)
        out = jnp.where(mask & (z == jnp.inf), _count(mask)[..., None] - (high - 1) / 2, out)
    else:
        out = _place(projected, mask, m, (low, high), descending)
    first = None if ranks else (high if descending else low)  # where _place puts entry 0
    kept = data if ranks or kind == "kl" else None
    return out + flag, (order, start, m, t, flag, first, kept)


def _soft_order_bwd(ranks, descending, kind, residuals, g):
    order, start, m, t, flag, first, data = residuals
    position = jnp.arange(g.shape[-1])
    real = position < m
    if ranks:
        g_sorted = jnp.take_along_axis(g, order, -1)
    else:  # where _place put each sorted entry
        placed = first + (position if descending else m - 1 - position)
        g_sorted = jnp.take_along_axis(g, jnp.clip(placed, 0, g.shape[-1] - 1), -1)
    g_sorted = jnp.where(real, g_sorted, 0)
    rho = jnp.where(real, (m - position).astype(g.dtype), 0)
    a, b = (data, rho) if ranks else (rho, data)
    # The Jacobian of s - v in (s, w) = (a / t, b) is the identity less the block mean, and
    # the block mean (l2), or less the block's softmax of s, and that of w (kl).
    if kind == "l2":
        g_b = _block_means(g_sorted, real, start)
        g_s = g_sorted - g_b
    else:
        total = _block_sums(g_sorted, start)
        g_s = g_sorted - jnp.exp(_below_block_logsumexp(a, start, 1 / t)) * total
        g_b = jnp.exp(_below_block_logsumexp(b, start)) * total
    # g_s sums to 0 over each block, so a's block mean may be taken off first: no a / t.
    centred = jnp.where(real, (a - _block_means(a, real, start)) / t, 0)
    poison = flag * jnp.sum(g, -1, keepdims=True)  # NaN in a NaN slice, else 0
    g_t = -jnp.sum(jnp.where(real, g_s, 0) * centred, -1, keepdims=True) / t + poison
    g_x = _unsort(jnp.where(real, g_s / t if ranks else g_b, 0), order) + poison
    return (-g_x if ranks and descending else g_x), g_t, None


_soft_order_rule.defvjp(_soft_order_fwd, _soft_order_bwd)
# Compiled once per shape, also when called eagerly (the tree's loops are many small ops).
_soft_order = jax.jit(_soft_order_rule, static_argnums=(3, 4, 5))


# --- the rows of a prepared call ---


def _as_rows(a: _checks.Prepared, temperature=None):
    """The scores as rows (reduced axes last, flattened), the mask, the temperature per row,
    and the map back to ``x``'s layout."""
    x, back = _numerics.rows_last(a.x, a.axes)
    mask = jnp.ones(x.shape, bool)
    if a.where is not None:
        mask = _numerics.rows_last(jnp.broadcast_to(a.where, a.x.shape), a.axes)[0]
    t = None
    if temperature is not None:
        per_slice = tuple(1 if i in a.axes else size for i, size in enumerate(a.x.shape))
        t = _numerics.rows_last(jnp.broadcast_to(temperature, per_slice), a.axes)[0]
    return x, mask, t, back


def _count(mask):
    return jnp.sum(mask, -1, dtype=jnp.int32)


def _unsort(values, order):
    """``out[..., order] = values``: puts sorted rows back in place."""
    if values.size == 0:
        return values
    flat_values, flat_order = (
        values.reshape(-1, values.shape[-1]),
        order.reshape(-1, order.shape[-1]),
    )
    rows = jnp.arange(flat_values.shape[0])[:, None]
    return jnp.zeros_like(flat_values).at[rows, flat_order].set(flat_values).reshape(values.shape)


def _nan_flag(x, mask):
    """0 per row, NaN where an entry taking part is NaN."""
    return _numerics.nan_poison(jnp.where(mask & ~jnp.isinf(x), x, 0), (x.ndim - 1,))


def _place(decreasing, mask, m, infinities, descending):
    """The slice's output from the decreasing sort of its ``m`` finite entries: the
    ``infinities`` (the counts of ``-inf`` and ``+inf`` entries) at the ends, the masked places
    (zeros) last."""
    position = jnp.arange(mask.shape[-1])
    n_low, n_high = infinities
    first, before, after = (n_high, jnp.inf, -jnp.inf) if descending else (n_low, -jnp.inf, jnp.inf)
    inner = position - first
    source = inner if descending else m - 1 - inner
    values = jnp.take_along_axis(decreasing, jnp.clip(source, 0, mask.shape[-1] - 1), -1)
    out = jnp.where(inner < m, values, after)
    out = jnp.where(inner < 0, before, out)
    return jnp.where(position < _count(mask)[..., None], out, 0)


def _hard_sort_rows(x, mask, descending):
    finite = mask & jnp.isfinite(x)
    m = _count(finite)[..., None]
    decreasing = -jnp.sort(jnp.where(finite, -x, jnp.inf), axis=-1)  # no argsort: 1 sort
    return _place(decreasing, mask, m, _infinities(x, mask), descending) + _nan_flag(x, mask)


def _rank_rows(x, mask, descending):
    z = -x if descending else x
    n = x.shape[-1]
    position = jnp.arange(n)
    masked, ordered, order = lax.sort(
        (~mask, jnp.where(mask, z, 0), jnp.broadcast_to(position, x.shape)),
        dimension=x.ndim - 1,
        num_keys=2,
    )
    differs = (ordered[..., 1:] != ordered[..., :-1]) | (masked[..., 1:] != masked[..., :-1])
    new = jnp.concatenate([jnp.ones(x.shape[:-1] + (1,), bool), differs], -1)
    ends = jnp.concatenate([new[..., 1:], jnp.ones(x.shape[:-1] + (1,), bool)], -1)
    first = lax.cummax(jnp.where(new, position, 0), x.ndim - 1)
    last = lax.cummin(jnp.where(ends, position, n - 1), x.ndim - 1, reverse=True)
    ranks = (first + last).astype(x.dtype) / 2 + 1
    ranks = jnp.where(position < _count(mask)[..., None], ranks, 0)
    return _unsort(ranks, order) + _nan_flag(x, mask)


# --- implementations on prepared arguments ---


def soft_rank_impl(a: _checks.Prepared, *, descending, kind):
    x, mask, t, back = _as_rows(a, a.temperature)
    return back(_soft_order(x, t, mask, True, descending, kind))


def soft_sort_impl(a: _checks.Prepared, *, descending, kind):
    x, mask, t, back = _as_rows(a, a.temperature)
    return back(_soft_order(x, t, mask, False, descending, kind))


def rank_impl(a: _checks.Prepared, *, descending):
    x, mask, _, back = _as_rows(a)
    return back(lax.stop_gradient(_rank_rows(x, mask, descending)))


def _straight_through_impl(hard, soft, a: _checks.Prepared, **options):
    def hard_fn(x, temperature, where):
        return hard(a._replace(x=x, temperature=temperature, where=where), **options)

    def soft_fn(x, temperature, where):
        return soft(a._replace(x=x, temperature=temperature, where=where), **options)

    return _straight_through.straight_through_rule(hard_fn, soft_fn, a.x, a.temperature, a.where)


def _hard_sort_impl(a: _checks.Prepared, *, descending, kind):
    del kind
    x, mask, _, back = _as_rows(a)
    return back(_hard_sort_rows(x, mask, descending))


def _rank_of(a: _checks.Prepared, *, descending, kind):
    del kind
    return rank_impl(a, descending=descending)


# --- public functions ---


def _prepare(x, axis, temperature, where, descending, regularization):
    a = _checks.prepare(x, axis, temperature, where)
    descending = _checks.check_flag(descending, "descending")
    kind = _checks.check_choice(regularization, "regularization", REGULARIZATIONS)
    return a, dict(descending=descending, kind=kind)


def soft_rank(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    temperature: ArrayLike = 1.0,
    descending: bool = False,
    regularization: str = "l2",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Soft ranks: the projection of ``x / temperature`` onto the permutahedron.

    .. math::
        r(x) = \arg\min_{\mu \in \mathcal{P}(\rho)} \tfrac12 \|\mu - x / t\|^2,
        \qquad \rho = (n, n - 1, \dots, 1),

    the convex hull of all permutations of ``rho`` (``regularization="l2"``); with ``"kl"``,
    ``log`` of the KL projection of ``exp(x / t)`` onto the permutahedron of ``exp(rho)``.
    Ranks are 1-based and ascending (the largest entry tends to rank ``n``, as in
    ``scipy.stats.rankdata``); ``descending=True`` ranks ``-x``. As ``t -> 0`` the ranks are
    the hard :func:`rank` (for ``"kl"``, tied entries then share the log-mean-exp of their
    ranks); as ``t -> inf`` every entry tends to the mean rank ``(n + 1) / 2``. Every slice's
    ranks sum to ``n (n + 1) / 2``. Computed by sorting once and an isotonic fit, O(n log n).
    The gradient is exact: within each block of entries that share a pooled value, the
    Jacobian of ``r`` in ``x / t`` is the identity less the block average (``"l2"``) or less
    the block's softmax (``"kl"``); ``temperature`` receives a gradient.

    How the temperature scales: sorted neighbours pool where their gap in ``x`` is below
    ``temperature`` (their ranks are 1 apart). In a slice of ``n`` entries neighbours are about
    ``std(x) / n`` apart, so one temperature smooths more as ``n`` grows or ``x`` shrinks. A
    per-slice ``temperature = tau * jnp.std(x, axis, keepdims=True) / n`` keeps one meaning:
    ``soft_rank(x) / n`` then depends on the standardised ``x`` alone (for ``"l2"``), the same at
    ``n = 1000`` as at ``n = 5000``.

    Args:
      x: the scores, any real dtype; integers are promoted to the default float, bfloat16 and
        float16 are computed in float32.
      axis: the axis, or tuple of axes (``None``: all of them), to rank along.
      temperature: the regularisation strength (Blondel et al.'s epsilon, torchsort's
        ``regularization_strength``), a positive scalar or one per slice; it may be traced.
      descending: rank the largest entry 1 instead of ``n``.
      regularization: ``"l2"`` or ``"kl"``.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      The ranks, of ``x``'s shape and float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([2.0, 0.0, 5.0, 1.2])
      >>> print(jaxrelax.soft_rank(x, temperature=0.1))
      [3. 1. 4. 2.]
      >>> print(jaxrelax.soft_rank(x, temperature=2.0))
      [2.475 1.475 3.975 2.075]

    References:
      Blondel, Teboul, Berthet & Djolonga, Fast Differentiable Sorting and Ranking, 2020,
      https://arxiv.org/abs/2002.08871

    Note:
      Masked entries take no part: the ``m`` others get ranks in ``[1, m]``, masked places
      are 0 with zero gradient, an all-masked slice is zeros. ``-inf`` and ``+inf`` entries take
      the lowest and highest ranks exactly (tied infinities share their average rank, with
      zero gradient) and the finite entries are ranked among themselves as if they were
      absent. A NaN in an entry taking part makes its slice NaN, values and gradient. With
      ``"l2"`` any finite ``x`` and temperature work (``x / temperature`` is never formed);
      with ``"kl"``, ``x / temperature`` must be finite in the compute dtype. A traced
      ``temperature <= 0`` cannot be checked and gives NaN or meaningless ranks. Forward mode
      (``jax.jvp``) is not supported: the gradient is a ``custom_vjp``, which keeps the
      permutation, the block starts and the sorted scores; second derivatives work.
    """
    a, options = _prepare(x, axis, temperature, where, descending, regularization)
    return soft_rank_impl(a, **options).astype(a.dtype)


def soft_sort(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    temperature: ArrayLike = 1.0,
    descending: bool = False,
    regularization: str = "l2",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""The soft sort: the projection of ``rho / temperature`` onto the permutahedron of ``x``.

    .. math::
        s(x) = \arg\min_{\mu \in \mathcal{P}(x)} \tfrac12 \|\mu - \rho / t\|^2,
        \qquad \rho = (n, n - 1, \dots, 1),

    reversed to ascending order unless ``descending`` (``"kl"``: the KL projection of
    ``exp(rho / t)`` onto the permutahedron of ``exp(x)``, then ``log``). The result is
    monotone (nondecreasing unless ``descending``) and, for ``"l2"``, keeps the slice's sum.
    As ``t -> 0`` it is ``jnp.sort(x)``; as ``t -> inf`` every entry tends to the mean (for
    ``"kl"``: the log-mean-exp). Sorting once and an isotonic fit, O(n log n). The gradient is
    exact: each output is the average (``"l2"``) or the softmax-weighted average (``"kl"``)
    of the sorted entries in its block, so the Jacobian spreads each output's cotangent over
    its block's entries; ``temperature`` receives a gradient.

    How the temperature scales: sorted neighbours pool where their gap in ``x`` exceeds
    ``1 / temperature``. In a slice of ``n`` entries neighbours are about ``std(x) / n`` apart,
    so one temperature smooths less as ``n`` grows or ``x`` shrinks. A per-slice
    ``temperature = tau * n / jnp.std(x, axis, keepdims=True)`` keeps one meaning:
    ``soft_sort(x) / std(x)`` then depends on the standardised ``x`` alone (``"l2"``), the same at
    ``n = 1000`` as at ``n = 5000``.

    Args:
      x: the values, any real dtype (see :func:`soft_rank`).
      axis: the axis, or tuple of axes (``None``: all of them), to sort along.
      temperature: the regularisation strength, a positive scalar or one per slice.
      descending: sort from the largest down.
      regularization: ``"l2"`` or ``"kl"``.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      The soft-sorted values, of ``x``'s shape and float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([2.0, 0.0, 5.0, 1.2])
      >>> print(jaxrelax.soft_sort(x, temperature=0.1))
      [0.  1.2 2.  5. ]
      >>> print(jaxrelax.soft_sort(x, temperature=2.0))  # one block: the mean 2.05, spread
      [1.3 1.8 2.3 2.8]

    References:
      Blondel, Teboul, Berthet & Djolonga, Fast Differentiable Sorting and Ranking, 2020,
      https://arxiv.org/abs/2002.08871

    Note:
      With ``m`` entries taking part, the first ``m`` places of the slice hold their soft
      sort and the masked places after them are 0 (zero gradient); an all-masked slice is
      zeros. ``-inf`` and ``+inf`` entries take the first and last places exactly (zero
      gradient) and the finite entries are soft-sorted between them as if they were alone.
      A NaN in an entry taking part makes its slice NaN. With ``"l2"`` any finite ``x`` and
      temperature work (``n / temperature`` is never formed); with ``"kl"``,
      ``n / temperature`` must be finite in the compute dtype. Forward mode is not supported
      (a ``custom_vjp``, which keeps the permutation and the block starts, and for ``"kl"``
      the sorted values); second derivatives work.
    """
    a, options = _prepare(x, axis, temperature, where, descending, regularization)
    return soft_sort_impl(a, **options).astype(a.dtype)


def rank(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    descending: bool = False,
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Hard ranks, 1-based, tied entries sharing their average rank.

    ``scipy.stats.rankdata(x, method="average")`` along ``axis``: the smallest entry has rank
    1 and the largest ``n`` (``descending=True``: the largest has rank 1). It is the limit of
    ``soft_rank(x, temperature=t)`` as ``t -> 0``. Piecewise constant: the gradient is 0.

    Args:
      x: the scores, any real dtype (see :func:`soft_rank`).
      axis: the axis, or tuple of axes (``None``: all of them), to rank along.
      descending: rank the largest entry 1.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      The ranks, of ``x``'s shape and float dtype.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> print(jaxrelax.rank(jnp.array([2.0, 0.0, 5.0, 2.0])))
      [2.5 1.  4.  2.5]

    Note:
      Masked places are 0 and the others are ranked among themselves; infinities are ranked
      like any value (tied infinities share their average rank); a NaN in an entry taking
      part makes its slice NaN.
    """
    a = _checks.prepare(x, axis, where=where)
    descending = _checks.check_flag(descending, "descending")
    return rank_impl(a, descending=descending).astype(a.dtype)


def st_sort(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    temperature: ArrayLike = 1.0,
    descending: bool = False,
    regularization: str = "l2",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Straight-through sort: the exact sort forward, the soft sort's gradient backward.

    The forward pass is ``jnp.sort(x, axis)`` (reversed when ``descending``) exactly; the
    backward pass is the vector-Jacobian product of :func:`soft_sort` with the same
    arguments (temperature and regularisation).

    Args:
      x: the values, any real dtype (see :func:`soft_rank`).
      axis: the axis, or tuple of axes (``None``: all of them), to sort along.
      temperature: the soft sort's temperature in the backward pass; it receives a gradient.
      descending: sort from the largest down.
      regularization: ``"l2"`` or ``"kl"``, of the backward pass.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      The sorted values, of ``x``'s shape and float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([2.0, 0.0, 5.0, 1.2])
      >>> print(jaxrelax.st_sort(x, temperature=2.0))
      [0.  1.2 2.  5. ]
      >>> print(jax.grad(lambda x: jaxrelax.st_sort(x, temperature=2.0)[0])(x))
      [0.25 0.25 0.25 0.25]

    References:
      Blondel, Teboul, Berthet & Djolonga, Fast Differentiable Sorting and Ranking, 2020,
      https://arxiv.org/abs/2002.08871

    Note:
      Masks, infinities and NaN as in :func:`soft_sort` (whose layout the forward value
      keeps: the sorted entries taking part first, zeros after). Forward mode is not
      supported; second derivatives differentiate the soft sort's VJP.
    """
    a, options = _prepare(x, axis, temperature, where, descending, regularization)
    return _straight_through_impl(_hard_sort_impl, soft_sort_impl, a, **options).astype(a.dtype)


def st_rank(
    x: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    temperature: ArrayLike = 1.0,
    descending: bool = False,
    regularization: str = "l2",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Straight-through ranks: the exact :func:`rank` forward, the soft ranks' gradient.

    The forward pass is ``rank(x, axis, descending=descending, where=where)`` exactly (ties
    share their average rank); the backward pass is the vector-Jacobian product of
    :func:`soft_rank` with the same arguments.

    Args:
      x: the scores, any real dtype (see :func:`soft_rank`).
      axis: the axis, or tuple of axes (``None``: all of them), to rank along.
      temperature: the soft ranks' temperature in the backward pass; it receives a gradient.
      descending: rank the largest entry 1.
      regularization: ``"l2"`` or ``"kl"``, of the backward pass.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      The ranks, of ``x``'s shape and float dtype.

    Examples:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([2.0, 0.0, 5.0, 1.2])
      >>> print(jaxrelax.st_rank(x, temperature=2.0))
      [3. 1. 4. 2.]
      >>> print(jax.grad(lambda x: jaxrelax.st_rank(x, temperature=2.0)[0])(x))
      [ 0.375 -0.125 -0.125 -0.125]

    References:
      Blondel, Teboul, Berthet & Djolonga, Fast Differentiable Sorting and Ranking, 2020,
      https://arxiv.org/abs/2002.08871

    Note:
      Masks, infinities and NaN as in :func:`soft_rank`. Forward mode is not supported;
      second derivatives differentiate the soft ranks' VJP.
    """
    a, options = _prepare(x, axis, temperature, where, descending, regularization)
    return _straight_through_impl(_rank_of, soft_rank_impl, a, **options).astype(a.dtype)


def soft_quantile(
    x: ArrayLike,
    q: ArrayLike,
    axis: int | tuple[int, ...] | None = -1,
    *,
    temperature: ArrayLike = 1.0,
    regularization: str = "l2",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Soft quantiles: ``jnp.quantile``'s linear interpolation of the ascending soft sort.

    .. math::
        Q(q) = s_{\lfloor h \rfloor} + (h - \lfloor h \rfloor)
        (s_{\lfloor h \rfloor + 1} - s_{\lfloor h \rfloor}), \qquad h = q (m - 1),

    with ``s = soft_sort(x, axis, temperature=temperature)`` (0-based) and ``m`` the number of
    entries taking part. As ``t -> 0`` it is ``jnp.quantile(x, q, axis)``. The gradient is
    the soft sort's, through the interpolation; ``q`` receives one too.

    Args:
      x: the values, any real dtype (see :func:`soft_rank`).
      q: the probability, a scalar or a 1-D array of them, in ``[0, 1]``.
      axis: the axis, or tuple of axes (``None``: all of them), to reduce.
      temperature: the soft sort's regularisation strength, a positive scalar or one per
        slice.
      regularization: ``"l2"`` or ``"kl"``.
      where: optional boolean mask broadcastable to ``x``; masked entries take no part.

    Returns:
      Shaped as ``jnp.quantile(x, q, axis=axis)``: ``q``'s shape, then ``x``'s shape without
      the reduced axes.

    Examples:
      >>> import jax.numpy as jnp
      >>> import jaxrelax
      >>> x = jnp.array([2.0, 0.0, 5.0, 1.2])
      >>> print(jaxrelax.soft_quantile(x, jnp.array([0.5, 1.0]), temperature=0.1))
      [1.6 5. ]

    References:
      Blondel, Teboul, Berthet & Djolonga, Fast Differentiable Sorting and Ranking, 2020,
      https://arxiv.org/abs/2002.08871

    Note:
      An all-masked slice gives 0 with zero gradient. Infinities and NaN as in
      :func:`soft_sort`; a quantile interpolating between an infinite and a finite value is
      that infinity, as in ``jnp.quantile``. A traced ``q`` outside ``[0, 1]`` cannot be
      checked and is clipped.
    """
    a = _checks.prepare(x, axis, temperature, where)
    kind = _checks.check_choice(regularization, "regularization", REGULARIZATIONS)
    q = _check_probability(q, a.x.dtype)
    ascending, mask, _, _ = _as_rows(a._replace(x=soft_sort_impl(a, descending=False, kind=kind)))
    m = _count(mask)
    h = jnp.clip(q, 0, 1).reshape(q.shape + (1,) * m.ndim) * jnp.maximum(m - 1, 0)
    low = jnp.floor(h)
    low_index = low.astype(jnp.int32)
    high_index = jnp.minimum(low_index + 1, jnp.maximum(m - 1, 0))

    def at(index):
        rows = jnp.broadcast_to(ascending, index.shape + ascending.shape[-1:])
        return jnp.take_along_axis(rows, index[..., None], -1)[..., 0]

    below, above = at(low_index), at(high_index)
    fraction = h - low
    finite = jnp.isfinite(below) & jnp.isfinite(above)
    below_, above_ = (jnp.where(finite, v, 0) for v in (below, above))  # no inf - inf
    out = jnp.where(fraction > 0, below_ + fraction * (above_ - below_), below_)
    out = jnp.where(finite, out, jnp.where(jnp.isinf(below) | (fraction == 0), below, above))
    return jnp.where(m > 0, out, 0).astype(a.dtype)


def _check_probability(q, dtype):
    q = _checks.as_real_array(q, "q", booleans=False)
    if q.ndim > 1:
        raise ValueError(f"q must be a scalar or a 1-D array, got shape {q.shape}")
    if not isinstance(q, jax.core.Tracer):
        bad = ~((np.asarray(q) >= 0) & (np.asarray(q) <= 1))
        if bad.any():
            raise ValueError(f"q must be in [0, 1], got {np.asarray(q)[bad].ravel()[0]}")
    return q.astype(dtype)
